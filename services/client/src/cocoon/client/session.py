"""One client, one gateway: verify candidates, seal once to several, open the answer.

    session = SealedSession(gateway_url, api_key, load_config(gateway=gateway_url))
    async for chunk in session.stream("chat.completions", body):   # OpenAI-style chunk dicts
        ...
    session.last_receipt                                            # the worker's, verified
    session.last_worker                                             # how that worker was verified

Nothing leaves this process in clear text but the metadata the gateway needs to route and bill
(model, max_tokens, price cap, timeout, the body's size). A worker that fails any check is
never sealed to, and `NoTrustedWorker` says why for each one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import dcap_qvl
import httpx

from cocoon.client.config import ClientConfig
from cocoon.client.errors import GatewayError, NoTrustedWorker, WireError
from cocoon.client.gateway import GatewayApi
from cocoon.client.receipts import ReceiptStore, evidence_record
from cocoon.client.registry import RegistryView
from cocoon.client.request_ids import new_request_id
from cocoon.client.seal import DEFAULT_SUITE, StreamOpener, WorkerKey, hpke_public_key, seal
from cocoon.client.seal import verify_receipt as check_receipt
from cocoon.client.verify import Evidence, WorkerCheck, WorkerVerifier

log = logging.getLogger(__name__)

EXTENSIONS = ("max_coefficient", "timeout")  # Cocoon's, for the gateway; never sealed
DEFAULT_MAX_TOKENS = 1000
EMBEDDING_MAX_TOKENS = 1  # as the gateway's own path holds for an embedding request
MAX_CANDIDATES = 3


def worker_error(error: Any) -> GatewayError:
    """The caller's error for a worker's sealed error chunk, as the gateway answers it on its
    own path: a request the engine refused as invalid (OpenAI's `invalid_request_error`) is the
    caller's to fix, a 400 with the engine's reason that SDKs do not retry; anything else is
    the worker's failure."""
    error = error if isinstance(error, dict) else {}
    message = error.get("message") if isinstance(error.get("message"), str) else "unknown"
    if error.get("type") == "invalid_request_error":
        return GatewayError(
            400,
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": error.get("param") if isinstance(error.get("param"), str) else None,
                    "code": "invalid_request",
                }
            },
        )
    return GatewayError(
        502,
        {
            "error": {
                "message": f"The worker failed: {message}",
                "type": "server_error",
                "param": None,
                "code": "worker_lost",
            }
        },
    )


@dataclass(frozen=True)
class Candidate:
    check: WorkerCheck
    key: WorkerKey
    evidence: dict[str, Any]  # what it was verified from, kept with its receipts (receipts.py)


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "", validate=True)


def engine_chunks(plaintext: bytes) -> list[dict[str, Any]]:
    """The engine's chunks in one opened record: JSON documents, one per line (the worker
    coalesces what the engine produced within a few ms; JSON text never holds a raw newline)."""
    out = []
    for line in plaintext.split(b"\n"):
        if not line:
            continue
        try:
            chunk = json.loads(line)
        except ValueError:
            raise WireError("the worker sent a chunk that is not JSON") from None
        if isinstance(chunk, dict):
            out.append(chunk)
    return out


class SealedSession:
    def __init__(
        self,
        gateway_url: str,
        api_key: str,
        config: ClientConfig,
        *,
        http: httpx.AsyncClient | None = None,
        receipts: ReceiptStore | None = None,
        suite: str = DEFAULT_SUITE,
        max_candidates: int = MAX_CANDIDATES,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.config = config
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(30, connect=10))
        self.api = GatewayApi(self.gateway_url, api_key, self.http)
        self.verifier = WorkerVerifier(config)
        self.receipts = receipts
        self.suite = suite
        self.max_candidates = max_candidates
        self.last_receipt: dict[str, Any] | None = None
        self.last_worker: WorkerCheck | None = None
        self._folded: tuple[list[dict[str, Any]], RegistryView] | None = None

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- verification --------------------------------------------------------------------------
    async def verify_workers(self, model: str) -> list[WorkerCheck]:
        """Every worker the gateway offers for `model`, verified here (accepted or not)."""
        return [check for check, _ in await self._verify_offered(model)]

    async def _verify_offered(self, model: str) -> list[tuple[WorkerCheck, dict[str, Any]]]:
        """(check, the evidence record it was made from) for every offered worker."""
        entries = await self.api.registry()
        registry = self._registry_view(entries)
        out = []
        for offered in await self.api.workers(model):
            out.append(await self._verify(offered, entries, registry, model))
        return out

    def _registry_view(self, entries: list[dict[str, Any]]) -> RegistryView:
        """The registry folded from `entries`, once per list the gateway sent: folding checks
        an Ed25519 signature per entry, and the cached list is the same object until it is
        fetched again."""
        if self._folded is None or self._folded[0] is not entries:
            view = RegistryView.from_entries(entries, self.config.registry_public_key)
            self._folded = (entries, view)
        return self._folded[1]

    async def _verify(
        self,
        offered: dict[str, Any],
        entries: list[dict[str, Any]],
        registry: RegistryView,
        model: str,
    ) -> tuple[WorkerCheck, dict[str, Any]]:
        worker_id = str(offered.get("worker_id", "?"))
        try:
            ev = offered["evidence"]
            evidence = Evidence(worker_id, _b64(ev["claims"]), _b64(ev["tdx_quote"]))
            fmspc = dcap_qvl.parse_quote(evidence.tdx_quote).fmspc().lower()
        except (KeyError, TypeError, ValueError) as exc:
            return WorkerCheck(worker_id, reason=f"format: malformed evidence: {exc!r}"), {}
        collateral = await self.api.collateral(fmspc)
        record = evidence_record(evidence, model, collateral, entries)
        return self.verifier.verify(evidence, collateral, registry, model), record

    async def candidates(self, model: str, api_key: str | None = None) -> list[Candidate]:
        verified = await self._verify_offered(model)
        checks = [check for check, _ in verified]
        accepted = [(c, record) for c, record in verified if c.accepted and c.claims is not None]
        if not checks:
            # Nothing offered: the gateway says whether the model exists at all (404).
            response = await self.api.models(f"/v1/models/{model}", api_key=api_key)
            if response.status_code in (401, 404):
                raise GatewayError(response.status_code, response.json())
        if not accepted:
            raise NoTrustedWorker(model, {c.worker_id: c.reason for c in checks})
        out = []
        for check, record in accepted[: self.max_candidates]:
            claims = check.claims
            assert claims is not None
            public = hpke_public_key(self.suite, claims.hpke_x25519, claims.hpke_mlkem768_x25519)
            key = WorkerKey(check.worker_id, self.suite, public, claims.signing_key)
            out.append(Candidate(check, key, record))
        return out

    # -- one request ---------------------------------------------------------------------------
    async def new_request_id(self, api_key: str | None = None, account: str | None = None) -> str:
        """A request id co-partitioned with the account the request bills (`account`, else the
        key's own), as the gateway requires."""
        own_account, partitions = await self.api.account(api_key)
        return new_request_id(account or own_account, partitions)

    async def stream(
        self,
        endpoint: str,
        body: dict[str, Any],
        *,
        api_key: str | None = None,
        account: str | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Seal `body` (an OpenAI request) and yield the engine's chunks, opened here.
        `account`: the end user's account, when a delegating key acts for one; `request_id`:
        the caller's (a lower-case UUID co-partitioned with the account), else a new one."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise WireError("the request names no model")
        candidates = await self.candidates(model, api_key)
        engine_body = {k: v for k, v in body.items() if k not in EXTENSIONS}
        if endpoint == "embeddings":
            # Nothing is generated: the hold covers the input (its size) and the least it can.
            cap = EMBEDDING_MAX_TOKENS
        else:
            cap = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
            engine_body.pop("max_completion_tokens", None)
            engine_body.update(max_tokens=cap, stream=True, stream_options={"include_usage": True})
        request_id = request_id or await self.new_request_id(api_key, account)
        envelope, request_key = seal(
            json.dumps(engine_body, separators=(",", ":")).encode(),
            request_id,
            model,
            [c.key for c in candidates],
        )
        sealed_at = int(time.time())
        by_worker = {c.key.worker_id: c for c in candidates}
        opener: StreamOpener | None = None
        answered = False
        self.last_receipt = None
        self.last_worker = None
        sending = self.api.send(
            envelope,
            endpoint=endpoint,
            max_tokens=int(cap),
            max_coefficient=body.get("max_coefficient"),
            timeout_s=body.get("timeout"),
            api_key=api_key,
            account=account,
        )
        # Closed with the caller's iterator: an abandoned answer disconnects at once, and the
        # gateway cancels the request on the worker.
        async with contextlib.aclosing(sending) as chunks:
            async for chunk in chunks:
                if chunk.worker_id not in by_worker:
                    raise WireError(
                        f"a chunk from {chunk.worker_id}, which this client never sealed to"
                    )
                if opener is None or (opener.worker_id, opener.attempt) != (
                    chunk.worker_id,
                    chunk.attempt,
                ):
                    if answered:
                        raise WireError("the answer switched workers after it had started")
                    opener = StreamOpener(request_key, request_id, chunk.worker_id, chunk.attempt)
                    self.last_worker = by_worker[chunk.worker_id].check
                opened = opener.open(chunk.seq, chunk.final, chunk.ciphertext)
                for plain in engine_chunks(opened):
                    receipt = plain.pop("cocoon_receipt", None)
                    if receipt is not None:
                        candidate = by_worker[chunk.worker_id]
                        self._keep(receipt, candidate, request_id, chunk, sealed_at)
                    if "error" in plain:
                        raise worker_error(plain["error"])
                    if plain.get("choices") or plain.get("data") or plain.get("usage"):
                        answered = answered or bool(plain.get("choices") or plain.get("data"))
                        yield plain
                if chunk.final:
                    return
        raise WireError("the gateway ended the answer before its final chunk")

    def _keep(
        self, receipt: Any, candidate: Candidate, request_id: str, chunk: Any, sealed_at: int
    ) -> None:
        if not isinstance(receipt, dict):
            raise WireError("malformed receipt")
        checked = check_receipt(
            receipt,
            candidate.key.signing_key,
            request_id=request_id,
            worker_id=chunk.worker_id,
            attempt=chunk.attempt,
        )
        self.last_receipt = checked
        if self.receipts is not None:
            self.receipts.add(
                checked, gateway=self.gateway_url, evidence=candidate.evidence, sealed_at=sealed_at
            )
