"""The billing service on the real broker, fed and read the way the other services do it.

Each network gets its own topic prefix, consumer group and transactional id; verdicts are signed
by a test attestation key the service pins; receipts are signed with real worker keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.billing.service import Billing, Settings, build
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.catalog import dead_letter_spec, load_catalog
from cocoon.core.codec import models
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.crypto.receipts import UsageReceipt, sign_receipt
from cocoon.core.verdicts import key_id, verdict_message
from cocoon.core.worker_records import sign_record

CATALOG = load_catalog()
TOPICS = [
    "inference.requests",
    "usage.receipts",
    "inference.outcomes",
    "inference.assignments",
    "attestation.verdicts",
    "attestation.registry",
    "billing.reservations",
    "billing.grants",
    "billing.topups",
    "billing.refunds",
    "billing.ledger",
    "billing.balances",
    "billing.earnings",
    "billing.snapshots",
]
MODEL = "m"


def now_ms_dt(offset_s: float = 0.0) -> datetime:
    now = datetime.now(UTC) + timedelta(seconds=offset_s)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Attestor:
    """Stands in for the attestation service: its key signs verdicts as cocoon.core defines."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.public = self.key.public_key().public_bytes_raw()

    def verdict(
        self,
        worker_id: str,
        keys: WorkerKeys,
        status: str = "TRUSTED",
        payout_address: str | None = None,
    ) -> models.Verdict:
        unsigned = models.Verdict(
            verdict_id=f"v-{worker_id}-{uuid.uuid4().hex[:6]}",
            worker_id=worker_id,
            status=status,
            models=[MODEL],
            signing_key=keys.public.signing_key,
            hpke_public_key=keys.public.hpke_mlkem768_x25519,
            hpke_suite="mlkem768-x25519",
            hpke_x25519=keys.public.hpke_x25519,
            registry_version=1,
            issued_at=now_ms_dt(-60),
            expires_at=now_ms_dt(3600),
            attestor_key_id=key_id(self.public),
            signature=b"\x00" * 64,
            payout_address=payout_address,
        )
        return unsigned.model_copy(update={"signature": self.key.sign(verdict_message(unsigned))})


def request(
    request_id: str,
    account: str,
    *,
    max_tokens: int = 100,
    prompt_bytes: int = 400,
    deadline_s: float = 60.0,
    **grant: Any,
) -> models.InferenceRequest:
    """`grant`: grant_id, grant_ask_requests, grant_return_id (admission grants)."""
    return models.InferenceRequest(
        request_id=request_id,
        account_id=account,
        model=MODEL,
        max_tokens=max_tokens,
        prompt_bytes=prompt_bytes,
        max_coefficient=1000,
        stream=True,
        channel="HTTP",
        gateway_id="gw-test",
        created_at=now_ms_dt(),
        deadline_at=now_ms_dt(deadline_s),
        **grant,
    )


def receipt(
    keys: WorkerKeys,
    request_id: str,
    worker_id: str,
    *,
    prompt: int = 300,
    cached: int = 100,
    completion: int = 50,
    attempt: int = 1,
    completed: bool = True,
) -> dict[str, Any]:
    now = int(time.time() * 1000)
    body = UsageReceipt(
        receipt_id=f"{request_id}:{attempt}",
        request_id=request_id,
        attempt=attempt,
        worker_id=worker_id,
        model=MODEL,
        prompt_tokens=prompt,
        cached_prompt_tokens=cached,
        completion_tokens=completion,
        reasoning_tokens=0,
        coefficient=1000,
        completed=completed,
        started_at=now - 500,
        finished_at=now,
    )
    return sign_receipt(keys, body).to_record()


def outcome(
    keys: WorkerKeys, request_id: str, worker_id: str, status: str = "FAILED", attempt: int = 1
) -> models.Outcome:
    """The worker-proxy's outcome, signed by `keys` as the worker signs it."""
    unsigned = models.Outcome(
        request_id=request_id,
        attempt=attempt,
        worker_id=worker_id,
        model=MODEL,
        status=status,
        error_code="engine_error",
        reported_by="worker-proxy",
        duration_ms=10,
        completion_tokens=0,
        finished_at=now_ms_dt(),
    )
    return sign_record(keys, unsigned)


def assignment(request_id: str, worker_id: str, attempt: int) -> models.Assignment:
    """The scheduler's placement of `request_id` (again, when `attempt` > 1)."""
    return models.Assignment(
        assignment_id=f"{request_id}:{attempt}",
        request_id=request_id,
        attempt=attempt,
        worker_id=worker_id,
        model=MODEL,
        work_topic=f"work.{worker_id}",
        verdict_id=f"v-{worker_id}",
        coefficient=1000,
        gateway_id="gw-test",
        lease_expires_at=now_ms_dt(30),
        assigned_at=now_ms_dt(),
    )


@dataclass
class Seen:
    """What billing published, read back (read_committed) from the broker."""

    reservations: dict[str, list[dict]] = field(default_factory=dict)
    grants: list[dict] = field(default_factory=list)
    refunds: list[dict] = field(default_factory=list)
    balances: dict[str, dict] = field(default_factory=dict)
    ledger: list[dict] = field(default_factory=list)
    earnings: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)

    def on_record(self, record: BroadcastRecord) -> None:
        if record.value is None or record.key is None:
            return
        if record.topic == "billing.reservations":
            self.reservations.setdefault(record.key, []).append(record.value)
        elif record.topic == "billing.grants":
            self.grants.append(record.value)
        elif record.topic == "billing.refunds":
            self.refunds.append(record.value)
        elif record.topic == "billing.balances":
            self.balances[record.key] = record.value
        elif record.topic == "billing.earnings":
            self.earnings.append(record.value)
        elif record.topic.endswith(".dlq"):
            self.dead_letters.append(record.value)
        else:
            self.ledger.append(record.value)

    def causes(self, kind_prefix: str) -> list[str]:
        return sorted({r["cause_id"] for r in self.ledger if r["cause_id"].startswith(kind_prefix)})


@dataclass
class Net:
    bootstrap: str
    prefix: str
    producer: BusProducer
    attestor: Attestor
    seen: Seen
    settings: Settings
    billing: Billing | None = None

    async def send(self, topic: str, value: Any) -> None:
        await self.producer.send(topic, value)

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (result := predicate()):
            assert time.monotonic() < deadline, f"timed out; seen {self.seen}"
            await asyncio.sleep(0.02)
        return result

    def balance(self, account: str) -> tuple[int, int] | None:
        row = self.seen.balances.get(account)
        return None if row is None else (row["available_nanoton"], row["held_nanoton"])


async def _provision(bootstrap: str, prefix: str) -> None:
    specs = [CATALOG[t] for t in TOPICS]
    await asyncio.to_thread(
        apply_topics, bootstrap, specs + [dead_letter_spec(s) for s in specs], prefix=prefix
    )


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Billing]:
    """One billing instance, started (replayed, granted, caught up) and running."""
    service = build(settings)
    stopping = asyncio.Event()
    await service.start()
    task = asyncio.create_task(service.run(stopping))
    try:
        yield service
    finally:
        stopping.set()
        await asyncio.wait_for(task, 15)
        await service.close()
    assert task.exception() is None


@contextlib.asynccontextmanager
async def network(
    bootstrap: str,
    unique_name: Callable[[str], str],
    *,
    grants: str = "",
    outcome_grace_s: float = 0.3,
    hold_grace_s: float = 0.0,
) -> AsyncIterator[Net]:
    """Topics, an attestor, a producer and a reader of billing's outputs (no service yet)."""
    prefix = unique_name("bill") + "."
    await _provision(bootstrap, prefix)
    attestor = Attestor()
    settings = Settings(
        kafka_bootstrap=bootstrap,
        attestation_public_key=attestor.public.hex(),
        topic_prefix=prefix,
        consumer_group=unique_name("billing"),
        transactional_id=unique_name("billing-tx"),
        price_per_token_nanoton=100,
        worker_fee_per_token_nanoton=80,
        cached_bps=5000,
        dev_grants=grants,
        outcome_grace_seconds=outcome_grace_s,
        hold_grace_seconds=hold_grace_s,
        tick_seconds=0.05,
    )
    seen = Seen()
    reader = BroadcastReader(
        bootstrap,
        [
            "billing.reservations",
            "billing.grants",
            "billing.refunds",
            "billing.balances",
            "billing.ledger",
            "billing.earnings",
            "usage.receipts.dlq",
            "inference.requests.dlq",
            "billing.topups.dlq",
            "inference.outcomes.dlq",
        ],
        seen.on_record,
        from_beginning=True,
        prefix=prefix,
    )
    await reader.start()
    reading = asyncio.create_task(reader.run())
    try:
        async with BusProducer(bootstrap, client_id="test", prefix=prefix) as producer:
            yield Net(bootstrap, prefix, producer, attestor, seen, settings)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await reader.stop()
