"""The client-sealed path: the gateway relays ciphertext it cannot open (docs/sealed-requests.md).

The client verified the workers itself, sealed the body once and wrapped its key to several of
them. The gateway authenticates and admits the request exactly as on its own path (the metadata
is the same: model, max_tokens, prompt size, price cap), publishes it with the candidates so the
scheduler places it on one of them only, sends that worker its wrapped key and the sealed body,
and relays the sealed chunks back untouched. A re-placement after a lease expiry sends the next
candidate its own wrapped key: the client resends nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from cocoon.core.codec.timestamps import now_millis
from cocoon.core.contracts import Topic
from cocoon.gateway.api.client_sealed import ClientSealed, RelayedChunk
from cocoon.gateway.api.errors import NoWorkerAvailable, WorkerLost
from cocoon.gateway.attested import AttestedState
from cocoon.gateway.pipeline import KafkaBackend, _InFlight
from cocoon.gateway.statement import LedgerStatements

log = logging.getLogger(__name__)


class RelayBackend(KafkaBackend):
    """The Kafka pipeline, plus relaying client-sealed requests."""

    def candidates(self, model: str, offered: list[str]) -> tuple[str, ...]:
        """The offered workers this gateway also sees as attested and alive for `model`."""
        live = {w.worker_id for w in self.workers.live_workers(model)}
        return tuple(w for w in offered if w in live)

    async def relay(self, account_id: str, sealed: ClientSealed) -> AsyncIterator[RelayedChunk]:
        request = sealed.request
        self.check_model(request)
        candidates = self.candidates(request.model, list(sealed.recipients))
        if not candidates:
            raise NoWorkerAvailable(request.model)
        state = _InFlight(request)
        self._inflight[request.request_id] = state
        finished = False
        try:
            state.deadline_ms = await self._publish_request(account_id, request, candidates)
            deadline = time.monotonic() + request.timeout
            while True:
                topic, value = await self._next_event(state, deadline)
                if topic == Topic.BILLING_RESERVATIONS:
                    self._on_reservation(value)
                elif topic == Topic.INFERENCE_ASSIGNMENTS:
                    await self._assign(state, sealed, value)
                elif topic == Topic.INFERENCE_OUTCOMES:
                    self._on_outcome(state, value)
                elif topic == Topic.INFERENCE_RESPONSES:
                    if value["attempt"] != state.attempt or value["worker_id"] != state.worker_id:
                        continue  # a superseded attempt
                    yield RelayedChunk(
                        value["worker_id"],
                        value["attempt"],
                        value["seq"],
                        bool(value["final"]),
                        bytes(value["ciphertext"]),
                        value.get("error_code"),
                    )
                    if value["final"]:
                        finished = True
                        return
        finally:
            self._inflight.pop(request.request_id, None)
            if not finished and state.work_topic is not None:
                with contextlib.suppress(Exception):
                    await self._send_cancel(state)

    async def _assign(self, state: _InFlight, sealed: ClientSealed, assignment: dict) -> None:
        if assignment["attempt"] <= state.attempt:
            return
        worker_id = assignment["worker_id"]
        wrapped = sealed.recipients.get(worker_id)
        if wrapped is None:
            # The scheduler placed it where the client sealed nothing: nothing can run there.
            raise WorkerLost(f"placed on {worker_id}, which is not one of the request's candidates")
        if state.work_topic is not None and state.worker_id != worker_id:
            with contextlib.suppress(Exception):
                await self._send_cancel(state)
        state.attempt = assignment["attempt"]
        state.worker_id = worker_id
        state.work_topic = assignment["work_topic"]
        request = sealed.request
        await self.producer.send(
            state.work_topic,
            {
                "request_id": request.request_id,
                "assignment_id": assignment["assignment_id"],
                "attempt": state.attempt,
                "model": request.model,
                "action": "RUN",
                "sealed_request": wrapped.wrapped_key,
                "hpke_enc": wrapped.enc,
                "hpke_suite": sealed.suite,
                "sealed_body": sealed.ciphertext,
                "max_tokens": request.max_tokens,
                "coefficient": assignment["coefficient"],
                "gateway_id": self.gateway_id,
                "deadline_at": state.deadline_ms,
                "sent_at": now_millis(),
            },
            record="cocoon.inference.WorkItem",
        )


class ClientSurface:
    """The `SealedSurface` the HTTP routes use: evidence from the attested state, candidates
    from the gateway's own view of live, trusted workers, relaying through the pipeline."""

    def __init__(
        self,
        backend: RelayBackend,
        attested: AttestedState,
        statements: LedgerStatements,
        *,
        registry_public_key: str | None = None,
    ) -> None:
        self.backend = backend
        self.attested = attested
        self.statements = statements
        self.registry_public_key = registry_public_key

    def workers(self, model: str) -> list[dict[str, Any]]:
        out = []
        for worker in self.backend.workers.live_workers(model):
            evidence = self.attested.evidence.get(worker.worker_id)
            if evidence is not None:
                out.append(
                    {
                        "worker_id": worker.worker_id,
                        "hpke_suite": worker.hpke_suite,
                        "evidence": evidence,
                    }
                )
        return sorted(out, key=lambda w: w["worker_id"])

    def registry(self) -> list[dict[str, Any]]:
        return [self.attested.registry[k] for k in sorted(self.attested.registry)]

    def collateral(self, fmspc: str) -> dict[str, Any] | None:
        return self.attested.collateral.get(fmspc.lower())

    def relay(self, account_id: str, sealed: ClientSealed) -> AsyncIterator[RelayedChunk]:
        return self.backend.relay(account_id, sealed)

    async def charges(self, account_id: str, since_ms: int) -> list[dict[str, Any]]:
        return await self.statements.charges(account_id, since_ms)
