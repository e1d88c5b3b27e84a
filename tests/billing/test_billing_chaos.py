"""Exact money on the real broker while billing is SIGKILLed, fenced and fed duplicates.

The test plays gateway and workers against billing running as its own process
(`python -m cocoon.core.runtime billing`):

* ~2,400 inference requests in pipelined batches (sends with wait=False), from seven clients,
  one of them with funds for only five holds;
* two clients' money-bearing requests mostly admitted the way a gateway does with admission
  grants: the test asks billing for grants, carves each hold out of one itself, and sends the
  request with its receipts at once, without waiting for billing (so receipts often reach billing
  before their request); a grant that cannot fund a request is handed back on the next one, and
  grants run out of time and are closed by billing while it is being killed;
* per request one fate, drawn from a seeded RNG: a signed receipt (completed or not), a forged
  receipt followed by the genuine one, a receipt beyond the hold, a forged one, a coefficient
  above the client's cap, an outcome and no receipt, or nothing at all (the deadline releases);
  plus receipts for requests that never existed, requests for unknown accounts, requests and
  receipts sent twice at once, second receipts for charged requests, and a late replay of
  requests, receipts and outcomes long after they were settled;
* meanwhile the service is SIGKILLed at random moments (seeded) and restarted each time, and a
  second instance with the same transactional id joins (a consumer-group rebalance that fences
  the first, which must die), runs alone, and is fenced in turn when the first comes back.

TON is on: the service pays each worker's earnings above a threshold to the payout address of
its registry entry, on the pytvm-backed TON node double, while it is being killed and fenced.

Expected money is computed here, independently, from the prices and the token counts of the
receipts that must be accepted (exact fractions, rounded down once). At the end the committed
`billing.ledger`, replayed into the domain ledger, must equal it to the nanoTON, with no hold
open, every entry balanced (audit), every client at grants minus charges, every worker at fees
minus confirmed payouts, every payout on chain exactly once (each worker's address holds what
the ledger says it was paid), and every record once.

COCOON_CHAOS_SEED picks another run; a failure prints the seed and each instance's log tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from billing_service_support import MODEL, Attestor, _provision
from ton_support import TON, deployed_wallet
from typer.testing import CliRunner

from cocoon.attestation.registry_topic import publish_registry
from cocoon.billing.audit import audit
from cocoon.billing.cli import app
from cocoon.billing.ledger import Entry, Ledger
from cocoon.billing.stream import entry_from_record, order_entries
from cocoon.billing.stream_replay import read_ledger
from cocoon.billing.ton.api import TonApi
from cocoon.billing.ton.payouts import PayoutStore
from cocoon.billing.ton.wallet import PayoutWallet
from cocoon.core.bus import BusProducer
from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.bus.security import aiokafka_security
from cocoon.core.codec import models
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.crypto.receipts import UsageReceipt, sign_receipt
from cocoon.core.request_ids import co_partitioned_id
from cocoon.core.worker_records import sign_record
from cocoon.network.ton_chain import TonNode

SEED = int(os.environ.get("COCOON_CHAOS_SEED", "20261124"))
SNAPSHOT_EVERY = 250  # ledger entries between snapshots

# Small prices with uneven multipliers, so rounding happens on almost every receipt.
PRICE, FEE = 7, 5
PROMPT_BPS, CACHED_BPS, COMPLETION_BPS, REASONING_BPS = 10_000, 5_000, 15_000, 12_000
MAX_BPS = max(PROMPT_BPS, CACHED_BPS, COMPLETION_BPS, REASONING_BPS)
WORKER_COEFFICIENT = {"w-0": 1000, "w-1": 750, "w-2": 1000}
PAYOUT_ADDRESS = {w: f"0:{n + 1:02x}" + "e0" * 31 for n, w in enumerate(WORKER_COEFFICIENT)}
PAYOUT_THRESHOLD = 20_000  # nanoTON; a worker earns ~100,000 in a run: paid several times

BATCHES, BATCH_SIZE = 8, 300  # 2,400 requests with a receipt or a fate, plus extras
RICH = [f"c{i}" for i in range(6)]
RICH_GRANT = 10_000_000_000
POOR, POOR_REQUESTS, POOR_FUNDED = "poor", 8, 5
POOR_MAX_TOKENS, POOR_PROMPT = 20, 40
POOR_HOLD = -(-(POOR_MAX_TOKENS + POOR_PROMPT) * MAX_BPS * PRICE // 10_000)  # cap 1000 = 1.0x
POOR_GRANT = POOR_FUNDED * POOR_HOLD + POOR_HOLD // 2

GRANTED_CLIENTS = RICH[:2]  # their money-bearing requests are admitted against grants
GRANT_ASK_REQUESTS = 60  # holds' worth per ask: several grants per client in a run
GRANT_USABLE_S = 12.0
GRANT_MARGIN_MS = 2_000  # the test's gateway stops using a grant this long before its end

LONG_DEADLINE_S = 600.0  # money-bearing requests: their receipts always find the hold open
SHORT_DEADLINE_S = 6.0  # money-neutral requests: released by outcome or by the deadline
# Paid if the receipt could be sent well before the hold expires (a kill then often leaves it in
# the backlog past the expiry: it must still capture); else no receipt is sent and it expires.
TIGHT_DEADLINE_S = 3.0
TIGHT_MARGIN_MS = 1500
HOLD_GRACE_S = 1.0
OUTCOME_GRACE_S = 0.3

KILLS = 6  # SIGKILLs of the main instance, at random moments
PAID_KINDS = ("paid", "partial", "forged_then_paid")  # long deadlines: always charged
CHARGED_KINDS = (*PAID_KINDS, "tight_paid")
KINDS = {  # fate -> weight
    "paid": 46,
    "tight": 8,
    "partial": 10,
    "forged_then_paid": 6,
    "beyond_hold": 6,
    "forged": 6,
    "above_cap": 4,
    "outcome_only": 8,
    "abandoned": 8,
}


# ---- expected money, computed independently of cocoon.billing.pricing -----------------------


def expected_cost(prompt: int, cached: int, completion: int, reasoning: int, coefficient: int):
    """(charge, fee): adjusted tokens summed exactly, each amount rounded down once."""
    adjusted = (
        Fraction((prompt - cached) * PROMPT_BPS, 10_000)
        + Fraction(cached * CACHED_BPS, 10_000)
        + Fraction((completion - reasoning) * COMPLETION_BPS, 10_000)
        + Fraction(reasoning * REASONING_BPS, 10_000)
    ) * Fraction(coefficient, 1000)
    return int(adjusted * PRICE), int(adjusted * FEE)  # int() of a positive Fraction = floor


def expected_hold(max_tokens: int, prompt_bytes: int) -> int:
    exact = Fraction((max_tokens + prompt_bytes) * MAX_BPS * PRICE, 10_000)
    return -(-exact.numerator // exact.denominator)


# ---- billing as a process ---------------------------------------------------------------


def _dt(offset_s: float) -> datetime:
    now = datetime.now(UTC) + timedelta(seconds=offset_s)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class BillingProcess:
    """One billing instance name; every (re)start is a new OS process with its own log."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name, self.env, self.logs = name, env, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.spawned_at = 0.0
        self.log_path: Path | None = None

    def spawn(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        self.spawned_at = time.monotonic()
        self.log_path = self.logs / f"{self.name}-{self.starts}.log"
        env = {**self.env, "COCOON_INSTANCE_ID": f"{self.name}-{self.starts}"}
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cocoon.core.runtime", "billing"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def ready(self) -> bool:
        return "billing ready" in self.log()

    async def until_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            assert self.alive(), f"{self.name} exited {self.proc.returncode}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.tail()}"
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    async def exited(self, timeout_s: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"{self.name} still running:\n{self.tail()}"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> int | None:
        """SIGTERM (graceful: finish the batch, commit, leave the group); the exit code."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.exited(30)
        except AssertionError:
            self.kill()
            raise

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Chaos:
    """SIGKILLs the main instance at seeded random moments and restarts it at once."""

    def __init__(self, main: BillingProcess, rng: random.Random) -> None:
        self.main, self.rng = main, rng
        self.kills = 0
        self.kill_ages: list[tuple[float, str]] = []  # seconds after spawn, phase
        self.allowed = asyncio.Event()  # cleared while the test fences instances itself
        self.receipts_sent = asyncio.Event()  # a batch's receipts were just sent
        self.traffic_done = False
        self.allowed.set()
        self.unexpected: list[str] = []

    async def run(self, total: int) -> None:
        in_start_up = False
        while self.kills < total:
            await self.allowed.wait()
            if in_start_up:
                # Do not let kills starve progress: after one that landed in start-up (ledger
                # replay, grants, group join), the next comes some time after ready.
                with contextlib.suppress(AssertionError):
                    await self.main.until_ready(90)
                at = time.monotonic() + self.rng.uniform(0.5, 9.0)
            elif not self.traffic_done and self.rng.random() < 0.5:
                # Right after a batch's receipts were sent: they wait in the backlog, past
                # the expiry of the tight holds, while billing restarts.
                self.receipts_sent.clear()
                await self.receipts_sent.wait()
                at = time.monotonic() + self.rng.uniform(0.0, 1.5)
            else:
                at = self.main.spawned_at + self.rng.uniform(0.5, 9.0)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await self.allowed.wait()
            if not self.main.alive():
                self.unexpected.append(
                    f"exit {self.main.proc.returncode} before a kill:\n{self.main.tail()}"
                )
                return
            in_start_up = not self.main.ready()
            self.kill_ages.append(
                (
                    round(time.monotonic() - self.main.spawned_at, 1),
                    "start-up" if in_start_up else "running",
                )
            )
            self.main.kill()
            self.kills += 1
            self.main.spawn()


# ---- what billing committed, read back from the broker ----------------------------------


@dataclass
class Observed:
    reservations: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    record_ids: Counter = field(default_factory=Counter)
    entries: dict[str, tuple[int, Entry]] = field(default_factory=dict)
    # An entry's records are spread over partitions (one per account), so a charge may be read
    # before the hold it closes when both were in one transaction: keep both sides.
    held: set[str] = field(default_factory=set)
    settled: set[str] = field(default_factory=set)
    granted: set[str] = field(default_factory=set)
    returned: set[str] = field(default_factory=set)
    balances: dict[str, dict] = field(default_factory=dict)
    on_grant: Any = None  # the test's gateway, told of every billing.grants record

    def on_record(self, record: BroadcastRecord) -> None:
        if record.value is None:
            return
        if record.topic == "billing.grants":
            if self.on_grant is not None:
                self.on_grant(record.value)
        elif record.topic == "billing.reservations":
            self.reservations[record.value["request_id"]].append(record.value)
        elif record.topic == "billing.balances":
            self.balances[record.value["account_id"]] = record.value
        elif record.topic == "billing.ledger":
            self.record_ids[record.value["entry_id"]] += 1
            seq, entry = entry_from_record(record.value)
            if entry.entry_id in self.entries:
                return
            self.entries[entry.entry_id] = (seq, entry)
            rid = entry.meta.get("request_id")
            if entry.kind == "hold":
                self.held.add(rid)
            elif entry.kind in ("charge", "release"):
                self.settled.add(rid)
            elif entry.kind == "grant":
                self.granted.add(entry.meta["grant_id"])
            elif entry.kind == "grant_closed":
                self.returned.add(entry.meta["grant_id"])

    @property
    def open_holds(self) -> set[str]:
        return self.held - self.settled

    @property
    def open_grants(self) -> set[str]:
        return self.granted - self.returned

    def has(self, entry_id: str) -> bool:
        return entry_id in self.entries

    def about(self, request_id: str) -> list[tuple[int, Entry]]:
        return [(n, e) for n, e in self.entries.values() if e.meta.get("request_id") == request_id]


# ---- the traffic -----------------------------------------------------------------------


@dataclass
class Req:
    rid: str
    client: str
    kind: str
    max_tokens: int
    prompt_bytes: int
    deadline_s: float
    sends: int = 1  # sends before it could have been settled (each answered once)
    charge: tuple[int, int, str] | None = None  # (charge, fee, worker) expected
    receipt: dict | None = None  # the receipt that charges it
    grant_id: str | None = None  # admitted by the test's gateway against this grant
    grant_ask_requests: int = 0
    grant_return_id: str | None = None
    _record: models.InferenceRequest | None = None

    def record(self) -> models.InferenceRequest:
        """The request as the gateway published it (a replay is the same record)."""
        if self._record is None:
            self._record = self._build()
        return self._record

    def _build(self) -> models.InferenceRequest:
        return models.InferenceRequest(
            request_id=self.rid,
            account_id=self.client,
            model=MODEL,
            max_tokens=self.max_tokens,
            prompt_bytes=self.prompt_bytes,
            max_coefficient=1000,
            stream=True,
            channel="HTTP",
            gateway_id="gw-chaos",
            created_at=_dt(0),
            deadline_at=_dt(self.deadline_s),
            grant_id=self.grant_id,
            grant_ask_requests=self.grant_ask_requests,
            grant_return_id=self.grant_return_id,
        )


class GrantingGateway:
    """The gateway's side of admission grants, played by the test (one grant per client)."""

    def __init__(self) -> None:
        self.grants: dict[str, dict] = {}  # client -> {"id", "remaining", "until_ms"}
        self.known: set[str] = set()  # every grant id adopted (a replayed GRANTED is not new)
        self.asked: set[str] = set()
        self.admitted = 0
        self.handed_back = 0

    def on_grant(self, value: dict) -> None:
        if value["gateway_id"] != "gw-chaos":
            return
        client = value["account_id"]
        if value["status"] == "GRANTED" and value["grant_id"] not in self.known:
            self.known.add(value["grant_id"])
            self.grants[client] = {
                "id": value["grant_id"],
                "remaining": value["amount_nanoton"],
                "until_ms": value["usable_until"].timestamp() * 1000,
            }
            self.asked.discard(client)
        elif value["status"] == "REFUSED":
            self.asked.discard(client)

    def admit(self, req: Req) -> None:
        """Fund `req` from the client's grant, or send it to billing (asking for a grant and
        handing back one that has too little left or too little time)."""
        grant = self.grants.get(req.client)
        hold = expected_hold(req.max_tokens, req.prompt_bytes)
        if grant is not None:
            usable = grant["until_ms"] - GRANT_MARGIN_MS > time.time() * 1000
            if usable and grant["remaining"] >= hold:
                grant["remaining"] -= hold
                req.grant_id = grant["id"]
                self.admitted += 1
                return
            req.grant_return_id = grant["id"]
            self.handed_back += 1
            del self.grants[req.client]
        if req.client not in self.asked:
            req.grant_ask_requests = GRANT_ASK_REQUESTS
            self.asked.add(req.client)


class Traffic:
    def __init__(self, rng: random.Random, workers: dict[str, WorkerKeys], forger: WorkerKeys):
        self.rng, self.workers, self.forger = rng, workers, forger
        self.requests: dict[str, Req] = {}
        self.unknown_account: list[str] = []
        # (request id, receipt id) -> the reason billing must record, for receipts whose fate
        # does not depend on timing.
        self.must_reject: dict[tuple[str, str], str] = {}
        self.late_receipts: list[dict] = []
        self.sent = Counter()

    def signed(
        self,
        rid: str,
        worker: str,
        *,
        receipt_id: str,
        usage: tuple[int, int, int, int],
        coefficient: int | None = None,
        completed: bool = True,
        keys: WorkerKeys | None = None,
    ) -> dict[str, Any]:
        prompt, cached, completion, reasoning = usage
        now = int(time.time() * 1000)
        body = UsageReceipt(
            receipt_id=receipt_id,
            request_id=rid,
            attempt=1,
            worker_id=worker,
            model=MODEL,
            prompt_tokens=prompt,
            cached_prompt_tokens=cached,
            completion_tokens=completion,
            reasoning_tokens=reasoning,
            coefficient=WORKER_COEFFICIENT[worker] if coefficient is None else coefficient,
            completed=completed,
            started_at=now - 300,
            finished_at=now,
        )
        return sign_receipt(keys or self.workers[worker], body).to_record()

    def usage(self, req: Req, *, partial: bool = False) -> tuple[int, int, int, int]:
        r = self.rng
        prompt = r.randint(1, req.prompt_bytes)
        cached = r.randint(0, prompt)
        completion = r.randint(0, req.max_tokens // 3 if partial else req.max_tokens)
        reasoning = r.randint(0, completion)
        return prompt, cached, completion, reasoning

    def new_batch(self, b: int) -> list[Req]:
        r = self.rng
        kinds, weights = zip(*KINDS.items(), strict=True)
        batch = []
        for i in range(BATCH_SIZE):
            kind = r.choices(kinds, weights)[0]
            money = kind in PAID_KINDS
            stem = f"r{b}-{i:03d}-{r.getrandbits(32):08x}"
            client = r.choice(RICH)
            req = Req(
                rid=co_partitioned_id(stem, client),  # as the gateway mints them
                client=client,
                kind=kind,
                max_tokens=r.randint(5, 60),
                prompt_bytes=r.randint(10, 150),
                deadline_s=(
                    LONG_DEADLINE_S
                    if money
                    else TIGHT_DEADLINE_S
                    if kind == "tight"
                    else SHORT_DEADLINE_S
                ),
            )
            if r.random() < 0.08:
                req.sends = 2  # sent twice at once: both answered HELD, one hold
            batch.append(req)
        if b == 0:  # the poor client: five holds fit, three are refused with the exact shortfall
            for i in range(POOR_REQUESTS):
                batch.append(
                    Req(
                        co_partitioned_id(f"poor-{i}", POOR),
                        POOR,
                        "paid" if i < POOR_FUNDED else "refused",
                        POOR_MAX_TOKENS,
                        POOR_PROMPT,
                        LONG_DEADLINE_S,
                    )
                )
        for req in batch:
            self.requests[req.rid] = req
        return batch

    def receipts_for(self, req: Req) -> list[dict]:
        """The receipts (in order, same partition) a batch sends for `req`."""
        r = self.rng
        worker = r.choice(sorted(self.workers))
        out: list[dict] = []
        if req.kind == "refused":  # no hold: the receipt names an unknown request
            rec = self.signed(req.rid, worker, receipt_id=f"{req.rid}:1", usage=self.usage(req))
            self.must_reject[(req.rid, f"{req.rid}:1")] = "unknown_request"
            return [rec]
        if req.kind in ("forged", "forged_then_paid"):
            fake = self.signed(
                req.rid, worker, receipt_id=f"{req.rid}:forged", usage=self.usage(req)
            )
            fake = {**fake, **self._forge(fake)}
            out.append(fake)
            self.must_reject[(req.rid, f"{req.rid}:forged")] = "bad_signature"
            if r.random() < 0.3:
                self.late_receipts.append(fake)
        if req.kind in CHARGED_KINDS:
            partial = req.kind == "partial"
            usage = self.usage(req, partial=partial)
            rec = self.signed(
                req.rid, worker, receipt_id=f"{req.rid}:1", usage=usage, completed=not partial
            )
            charge, fee = expected_cost(*usage, WORKER_COEFFICIENT[worker])
            req.charge, req.receipt = (charge, fee, worker), rec
            out.append(rec)
            if r.random() < 0.1:
                out.append(rec)  # a retried produce: the same receipt twice
            if r.random() < 0.05:  # another attempt's receipt for the charged request
                second = self.signed(
                    req.rid, worker, receipt_id=f"{req.rid}:2", usage=self.usage(req)
                )
                out.append(second)
                self.must_reject[(req.rid, f"{req.rid}:2")] = "second_receipt_for_request"
                self.late_receipts.append(second)
            if r.random() < 0.08:
                self.late_receipts.append(rec)
        elif req.kind == "beyond_hold":
            prompt, cached, _, _ = self.usage(req)
            beyond = (prompt, cached, req.max_tokens + r.randint(1, 5), 0)
            out.append(self.signed(req.rid, worker, receipt_id=f"{req.rid}:1", usage=beyond))
        elif req.kind == "above_cap":
            out.append(
                self.signed(
                    req.rid,
                    worker,
                    receipt_id=f"{req.rid}:1",
                    usage=self.usage(req),
                    coefficient=1500,
                )
            )
        return out

    def drop(self, req: Req) -> None:
        """Send nothing for `req` after all: forget the receipts made for it."""
        req.kind, req.charge, req.receipt = "tight_dropped", None, None
        self.must_reject = {k: v for k, v in self.must_reject.items() if k[0] != req.rid}
        self.late_receipts = [r for r in self.late_receipts if r["request_id"] != req.rid]

    def _forge(self, genuine: dict) -> dict:
        """The same receipt signed by a key no verdict names (anyone can produce one)."""
        fields = {
            k: genuine[k]
            for k in UsageReceipt.__dataclass_fields__  # every signed field
        }
        return sign_receipt(self.forger, UsageReceipt(**fields)).to_record()

    def unknown_receipts(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            rid = f"ghost-{self.rng.getrandbits(48):012x}"
            worker = self.rng.choice(sorted(self.workers))
            usage = (10, 0, 5, 0)
            out.append(self.signed(rid, worker, receipt_id=f"{rid}:1", usage=usage))
            self.must_reject[(rid, f"{rid}:1")] = "unknown_request"
        return out


def outcome(keys: WorkerKeys, rid: str, worker: str, status: str) -> models.Outcome:
    """The worker's outcome, signed by its attested key as the worker-proxy signs it."""
    unsigned = models.Outcome(
        request_id=rid,
        attempt=1,
        worker_id=worker,
        model=MODEL,
        status=status,
        error_code=None if status == "SUCCEEDED" else "engine_error",
        reported_by="worker-proxy",
        duration_ms=10,
        completion_tokens=0,
        finished_at=_dt(0),
    )
    return sign_record(keys, unsigned)


# ---- helpers ---------------------------------------------------------------------------


async def until(predicate, timeout_s: float, what: str, chaos: Chaos | None = None, why=None):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if chaos is not None and chaos.unexpected:
            raise AssertionError("\n".join(chaos.unexpected))
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {why() if why else ''}"
        await asyncio.sleep(0.05)


async def send_all(producer: BusProducer, sends: list[tuple[str, Any]]) -> None:
    futures = [await producer.send(topic, value, wait=False) for topic, value in sends]
    await asyncio.gather(*futures)


async def lag(bootstrap: str, prefix: str, group: str) -> int:
    """Input records the group has not committed yet (committed offsets vs log end)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **aiokafka_security())
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", **aiokafka_security()
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(prefix + t, p)
            for t in ("inference.requests", "usage.receipts", "inference.outcomes")
            for p in range(12)
        ]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items())


def worker_env(
    bootstrap: str, prefix: str, key_file: Path, tag: str, ton: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COCOON_", "OTEL_"))}
    env.update(ton)
    grants = ",".join([f"{c}={RICH_GRANT}" for c in RICH] + [f"{POOR}={POOR_GRANT}"])
    env.update(
        PYTHONUNBUFFERED="1",
        COCOON_KAFKA_BOOTSTRAP=bootstrap,
        COCOON_TOPIC_PREFIX=prefix,
        COCOON_DEV_GRANTS=grants,
        COCOON_ATTESTATION_PUBLIC_KEY_FILE=str(key_file),
        COCOON_CONSUMER_GROUP=f"billing-{tag}",
        COCOON_TRANSACTIONAL_ID=f"billing-tx-{tag}",
        COCOON_GRPC_HEALTH_PORT="0",
        COCOON_METRICS_PORT="0",
        COCOON_LOG_LEVEL="INFO",
        COCOON_TICK_SECONDS="0.1",
        COCOON_HOLD_GRACE_SECONDS=str(HOLD_GRACE_S),
        COCOON_OUTCOME_GRACE_SECONDS=str(OUTCOME_GRACE_S),
        COCOON_PRICE_PER_TOKEN_NANOTON=str(PRICE),
        COCOON_WORKER_FEE_PER_TOKEN_NANOTON=str(FEE),
        COCOON_PROMPT_BPS=str(PROMPT_BPS),
        COCOON_CACHED_BPS=str(CACHED_BPS),
        COCOON_COMPLETION_BPS=str(COMPLETION_BPS),
        COCOON_REASONING_BPS=str(REASONING_BPS),
        COCOON_SHUTDOWN_GRACE_SECONDS="10",
        COCOON_GRANT_USABLE_SECONDS=str(GRANT_USABLE_S),
        # Small, so most restarts restore a snapshot and replay only the ledger after it.
        COCOON_SNAPSHOT_EVERY_ENTRIES=str(SNAPSHOT_EVERY),
    )
    return env


# ---- the test --------------------------------------------------------------------------


@pytest.fixture
def node():
    with TonNode(block_interval=0.05) as n:
        yield n


def ton_env(node: TonNode, tmp_path: Path) -> dict[str, str]:
    """TON on, against the node double: a deployed deposit wallet and a funded payout wallet."""
    seed = os.urandom(32)
    payout_wallet = PayoutWallet(seed, testnet=True)
    node.fund(payout_wallet.address, 1000 * TON)
    secret = tmp_path / "payout-wallet.hex"
    secret.write_text(seed.hex())
    return {
        "COCOON_TON_NETWORK": "testnet",
        "COCOON_TON_API_URL": node.url,
        "COCOON_TON_DEPOSIT_ADDRESS": deployed_wallet(node, TON, testnet=True).address,
        "COCOON_TON_WALLET_SECRET_FILE": str(secret),
        "COCOON_TON_CONFIRMATIONS": "1",
        "COCOON_TON_PAYOUT_THRESHOLD": str(PAYOUT_THRESHOLD),
        "COCOON_TON_POLL_SECONDS": "0.2",
        # Shared by both instances, as one volume would be: the store knows what is in flight.
        "COCOON_PAYOUT_STORE": str(tmp_path / "payouts.sqlite"),
    }


def paid_out(entries: list[Entry]) -> Counter:
    paid = Counter()
    for e in entries:
        if e.kind == "payout_confirmed":
            paid[e.meta["worker_id"]] += e.meta["amount"]
    return paid


@pytest.mark.timeout(480)
async def test_exact_money_through_sigkills_fencing_rebalance_and_replays(
    kafka_bootstrap, kafka_credentials, unique_name, tmp_path, node
):
    started = time.monotonic()
    rng = random.Random(SEED)
    print(f"COCOON_CHAOS_SEED={SEED}")
    prefix = unique_name("chaos") + "."
    await _provision(kafka_bootstrap, prefix)
    attestor = Attestor()
    key_file = tmp_path / "attestation.pub"
    key_file.write_text(attestor.public.hex())
    env = worker_env(
        kafka_bootstrap, prefix, key_file, uuid.uuid4().hex[:8], ton_env(node, tmp_path)
    )
    if kafka_credentials is not None:  # billing runs as its own principal, with its ACLs
        env.update(kafka_credentials.env("billing", prefix))
    await publish_registry(
        kafka_bootstrap,
        lambda r: [
            r.set_worker(w, coefficient=c, payout_address=PAYOUT_ADDRESS[w])
            for w, c in WORKER_COEFFICIENT.items()
        ],
        prefix=prefix,
        updated_by="chaos",
    )
    main = BillingProcess("main", env, tmp_path)
    second = BillingProcess("second", env, tmp_path)  # same group, same transactional id
    chaos = Chaos(main, random.Random(rng.getrandbits(64)))
    workers = {w: WorkerKeys.generate() for w in WORKER_COEFFICIENT}
    traffic = Traffic(random.Random(rng.getrandbits(64)), workers, WorkerKeys.generate())
    gateway = GrantingGateway()
    seen = Observed(on_grant=gateway.on_grant)
    reader = BroadcastReader(
        kafka_bootstrap,
        ["billing.reservations", "billing.grants", "billing.ledger", "billing.balances"],
        seen.on_record,
        from_beginning=True,
        prefix=prefix,
        client_id="chaos-reader",
    )
    await reader.start()
    reading = asyncio.create_task(reader.run())
    chaos_task: asyncio.Task | None = None
    fenced: dict[str, int] = {}
    fenced_logs: dict[str, str] = {}
    marks: list[tuple[str, float]] = []

    def mark(what: str) -> None:
        marks.append((what, round(time.monotonic() - started, 1)))

    try:
        async with BusProducer(kafka_bootstrap, client_id="chaos", prefix=prefix) as producer:
            await send_all(
                producer,
                [("attestation.verdicts", attestor.verdict(w, k)) for w, k in workers.items()],
            )
            main.spawn()
            await main.until_ready()
            chaos_task = asyncio.create_task(chaos.run(KILLS))

            async def batch(b: int) -> None:
                reqs = traffic.new_batch(b)
                sends: list[tuple[str, Any]] = []
                early: list[tuple[str, Any]] = []
                for req in reqs:
                    if req.kind in PAID_KINDS and req.client in GRANTED_CLIENTS:
                        gateway.admit(req)
                    sends += [("inference.requests", req.record())] * req.sends
                    if req.grant_id is not None:
                        # Admitted by the gateway: placed and served at once, so its receipts
                        # race the request to billing.
                        early += [("usage.receipts", rec) for rec in traffic.receipts_for(req)]
                for _ in range(4):  # unknown accounts: refused, never held
                    ghost = co_partitioned_id(f"nobody-{rng.getrandbits(32):08x}", "nobody")
                    traffic.unknown_account.append(ghost)
                    sends.append(
                        ("inference.requests", Req(ghost, "nobody", "x", 5, 5, 600).record())
                    )
                await send_all(producer, sends + early)
                # Other receipts only once the request is held (without a grant, a worker gets
                # nothing before): wait for every answer the money-bearing requests must get.
                money = [
                    q
                    for q in reqs
                    if (q.kind in PAID_KINDS and q.grant_id is None) or q.kind == "refused"
                ]
                await until(
                    lambda: all(len(seen.reservations.get(q.rid, ())) >= q.sends for q in money),
                    120,
                    f"reservations of batch {b}",
                    chaos,
                )
                sends = []
                tight = []
                for req in reqs:
                    if req.kind == "tight":
                        tight.append(req)
                        continue
                    if req.grant_id is not None:
                        continue  # its receipts went with it
                    sends += [("usage.receipts", rec) for rec in traffic.receipts_for(req)]
                    worker = rng.choice(sorted(workers))
                    if req.kind in ("beyond_hold", "forged", "above_cap", "outcome_only"):
                        sends.append(
                            (
                                "inference.outcomes",
                                outcome(workers[worker], req.rid, worker, "FAILED"),
                            )
                        )
                sends += [("usage.receipts", rec) for rec in traffic.unknown_receipts(8)]
                # Tight holds last decided, first sent: a receipt is sent (and stamped) only
                # well before the hold's expiry, else none is (the hold then expires).
                first = []
                for req in tight:
                    req.kind = "tight_paid"
                    receipts = traffic.receipts_for(req)
                    held = any(a["status"] == "HELD" for a in seen.reservations.get(req.rid, ()))
                    expires_ms = req.record().deadline_at.timestamp() * 1000 + HOLD_GRACE_S * 1000
                    if held and time.time() * 1000 < expires_ms - TIGHT_MARGIN_MS:
                        first += [("usage.receipts", rec) for rec in receipts]
                    else:
                        traffic.drop(req)
                sends = first + sends
                await send_all(producer, sends)  # one producer: per key, in this order
                chaos.receipts_sent.set()

            for b in range(BATCHES):
                if b == 3:
                    # Rebalance + fencing: a second instance with the same transactional id
                    # joins the group. Its init_transactions fences the main instance, which
                    # must fail on its next transaction and exit; the second then owns every
                    # partition.
                    chaos.allowed.clear()
                    await until(main.ready, 90, "main ready before the rebalance", chaos)
                    second.spawn()
                    await batch(b)
                    fenced["main"] = await main.exited(60)
                    fenced_logs["main"] = main.log()
                    await second.until_ready()
                elif b == 4:
                    # The main instance comes back while the second still runs: it fences the
                    # second (another rebalance), which must die the same way.
                    main.spawn()
                    await main.until_ready()
                    await batch(b)
                    fenced["second"] = await second.exited(60)
                    fenced_logs["second"] = second.log()
                    chaos.allowed.set()
                else:
                    await batch(b)
                mark(f"batch {b}")
            chaos.traffic_done = True
            chaos.receipts_sent.set()
            await asyncio.wait_for(chaos_task, 120)
            mark("kills done")
            assert not chaos.unexpected, chaos.unexpected
            assert main.alive(), main.tail()

            # Every expected charge, and every hold closed (outcomes + deadlines).
            paid = [q for q in traffic.requests.values() if q.charge]

            def missing() -> list:
                return [
                    (
                        q.rid,
                        q.kind,
                        [
                            (e.kind, e.meta.get("reason"), e.at_ms, e.meta.get("expires_at_ms"))
                            for _, e in seen.about(q.rid)
                        ],
                    )
                    for q in paid
                    if not seen.has(f"charge:{q.rid}")
                ][:10]

            await until(
                lambda: all(seen.has(f"charge:{q.rid}") for q in paid), 90, "charges", why=missing
            )
            await until(
                lambda: not seen.open_holds and not seen.open_grants,
                60,
                "every hold and grant closed",
                why=lambda: f"holds {sorted(seen.open_holds)[:5]} grants {seen.open_grants}",
            )

            def payouts_settled() -> bool:
                # Nothing in flight and nobody left above the threshold: no payout can start.
                now = Ledger.replay(order_entries(seen.entries.values()))
                return now.balance("payouts:pending") == 0 and all(
                    now.balance(f"worker:{w}") < PAYOUT_THRESHOLD for w in WORKER_COEFFICIENT
                )

            def payouts_state() -> str:
                now = Ledger.replay(order_entries(seen.entries.values()))
                store = PayoutStore(Path(env["COCOON_PAYOUT_STORE"]))
                try:
                    rows = [(p.payout_id, p.status, p.batch_id) for p in store.payouts()]
                    batches = [(b.batch_id, b.status, b.sends) for b in store.batches()]
                finally:
                    store.close()
                balances = {
                    a: n for a, n in now.balances().items() if "payout" in a or "worker" in a
                }
                return f"{balances}; payouts {rows}; batches {batches}; node time {node.now()}"

            await until(payouts_settled, 90, "payouts settled", why=payouts_state)
            mark("settled")

            # Much later: the same requests, receipts and outcomes again, long settled.
            late: list[tuple[str, Any]] = []
            settled = sorted(q for q, r in traffic.requests.items() if r.kind != "refused")
            for req in traffic.rng.sample(settled, 300):
                late.append(("inference.requests", traffic.requests[req].record()))
            late += [("usage.receipts", rec) for rec in traffic.late_receipts]
            for req in traffic.rng.sample(paid, 200):
                late.append(
                    (
                        "inference.outcomes",
                        outcome(workers[req.charge[2]], req.rid, req.charge[2], "SUCCEEDED"),
                    )
                )
            entries_before = len(seen.entries)
            reservations_before = sum(map(len, seen.reservations.values()))
            await send_all(producer, late)
            # The late records are consumed and committed, and they changed nothing.
            deadline = time.monotonic() + 60
            while (pending := await lag(kafka_bootstrap, prefix, env["COCOON_CONSUMER_GROUP"])) > 0:
                assert time.monotonic() < deadline, f"billing did not catch up: lag {pending}"
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.5)  # the reader sees what was committed with those offsets
            added = list(seen.entries)[entries_before:]
            assert added == [], f"late replays added {len(added)} entries: {added[:5]}"
            answers = sum(map(len, seen.reservations.values())) - reservations_before
            assert answers == 0, f"late replays were answered {answers} times"
            mark("late replays")

            # A last SIGKILL after catching up, then the state a restart rebuilds.
            main.kill()
            main.spawn()
            await main.until_ready()
            assert await main.stop() == 0, main.tail()
    except BaseException:
        for proc in (main, second):
            print(f"--- {proc.name} (start {proc.starts}) ---\n{proc.tail(60)}")
        print(f"COCOON_CHAOS_SEED={SEED}")
        raise
    finally:
        if chaos_task is not None and not chaos_task.done():
            chaos_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chaos_task
        for proc in (main, second):
            if proc.alive():
                proc.kill()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await reader.stop()

    # ---- the proof -------------------------------------------------------------------
    # Both instances were fenced by the other (exit 1: a failed transaction, not a kill).
    assert fenced == {"main": 1, "second": 1}
    for name, text in fenced_logs.items():
        assert "ProducerFenced" in text, f"{name} did not die of fencing:\n{text[-3000:]}"
    assert chaos.kills == KILLS
    # Restarts restored snapshots (written in the transactions the kills interrupted or not).
    restored = [
        int(found.group(1))
        for log in sorted(tmp_path.glob("*.log"))
        for found in re.finditer(r"snapshot of \S+: (\d+) entries", log.read_text(errors="replace"))
    ]
    assert len(restored) >= 2 and max(restored) > 0, restored

    entries = await read_ledger(kafka_bootstrap, prefix=prefix)
    ledger = Ledger.replay(entries)
    # Grants funded many requests, and were closed both by time and by the gateway.
    # (Whether a handed-back grant is closed as returned or as expired depends on which billing
    # reads first; each grant is closed exactly once either way, which the audit checks.)
    print(f"granted requests {gateway.admitted}, grants handed back {gateway.handed_back}")
    assert gateway.admitted >= 100 and gateway.handed_back >= 1, vars(gateway)
    closed = Counter(e.meta["reason"] for e in entries if e.kind == "grant_closed")
    assert closed["expired"] >= 1 and sum(closed.values()) >= 2, closed
    # Every committed record exactly once: no transaction was applied twice across kills.
    assert [rid for rid, n in seen.record_ids.items() if n > 1] == []
    assert [e.entry_id for e in entries] == [
        e.entry_id for e in order_entries(seen.entries.values())
    ]
    assert audit(ledger, require_no_open_holds=True) == []

    requests = traffic.requests
    paid = {q.rid: q for q in requests.values() if q.charge}
    charges = {e.meta["request_id"]: e for e in entries if e.kind == "charge"}
    assert sorted(charges) == sorted(paid)
    for rid, entry in charges.items():
        want_charge, want_fee, want_worker = paid[rid].charge
        m = entry.meta
        assert (m["charge"], m["worker_fee"], m["commission"], m["worker_id"]) == (
            want_charge,
            want_fee,
            want_charge - want_fee,
            want_worker,
        ), rid
        assert m["receipt_id"] == f"{rid}:1"
        assert m["completed"] == (paid[rid].kind != "partial")
        hold = expected_hold(paid[rid].max_tokens, paid[rid].prompt_bytes)
        assert m["released"] == hold - want_charge

    total_charge = sum(q.charge[0] for q in paid.values())
    total_fee = sum(q.charge[1] for q in paid.values())
    by_client = Counter()
    for q in paid.values():
        by_client[q.client] += q.charge[0]
    by_worker = Counter()
    for q in paid.values():
        by_worker[q.charge[2]] += q.charge[1]
    grants = {**dict.fromkeys(RICH, RICH_GRANT), POOR: POOR_GRANT}
    for client, grant in grants.items():
        assert ledger.balance(f"client:{client}") == grant - by_client[client], client
        assert ledger.balance(f"holds:{client}") == 0, client
    # Payouts: each worker's chain address holds exactly what the ledger says it was paid (never
    # twice through the kills and the fencing), and every payout started was confirmed.
    payouts = paid_out(entries)
    assert all(payouts[w] >= PAYOUT_THRESHOLD for w in WORKER_COEFFICIENT), (payouts, by_worker)
    api = TonApi(node.url)
    try:
        for worker, address in PAYOUT_ADDRESS.items():
            # What arrived, not the balance: an uninitialised account pays storage fees.
            txs = await api.iter_transactions_since(address, 0)
            received = [tx.in_msg.value for tx in txs if tx.in_msg is not None]
            assert sum(received) == payouts[worker], (worker, received)
            assert len(received) == len([e for e in entries if e.kind == "payout_confirmed"
                                         and e.meta["worker_id"] == worker])  # fmt: skip
    finally:
        await api.aclose()
    started_payouts = [e for e in entries if e.kind == "payout"]
    assert sum(e.meta["amount"] for e in started_payouts) == sum(payouts.values())
    assert not [e for e in entries if e.kind == "payout_reversed"]
    for worker in WORKER_COEFFICIENT:
        assert ledger.balance(f"worker:{worker}") == by_worker[worker] - payouts[worker], worker
    assert ledger.balance("network:commission") == total_charge - total_fee
    assert ledger.balance("ton:deposits") == -sum(grants.values())
    expected = {
        **{f"client:{c}": g - by_client[c] for c, g in grants.items()},
        **{f"worker:{w}": n - payouts[w] for w, n in by_worker.items() if n - payouts[w]},
        "network:commission": total_charge - total_fee,
        "ton:deposits": -sum(grants.values()),
        "ton:payouts": sum(payouts.values()),
    }
    assert {a: n for a, n in ledger.balances().items() if n} == expected  # nothing else moved

    # billing.balances (the compacted view) agrees with the ledger, to the nanoTON.
    for client in grants:
        row = seen.balances[client]
        assert (row["available_nanoton"], row["held_nanoton"]) == (expected[f"client:{client}"], 0)
    for worker, n in by_worker.items():
        assert seen.balances[f"worker:{worker}"]["available_nanoton"] == n - payouts[worker]

    # Every decision billing had to take the same way whatever the timing was taken once.
    rejected = Counter(
        (e.meta["request_id"], e.meta["receipt_id"], e.meta["reason"])
        for e in entries
        if e.kind == "receipt_rejected"
    )
    for (rid, receipt_id), reason in traffic.must_reject.items():
        assert rejected[(rid, receipt_id, reason)] == 1, (rid, receipt_id, reason)
    # The receipts that charge were never also rejected (not even their duplicates), and any
    # other rejection is of a receipt this test sent to be refused or of a money-neutral fate.
    charging = {(rid, f"{rid}:1") for rid in paid}
    assert [k for k in rejected if k[:2] in charging] == []
    neutral = {"beyond_hold", "forged", "above_cap"}
    for rid, receipt_id, reason in rejected:
        assert (rid, receipt_id) in traffic.must_reject or requests[rid].kind in neutral, (
            rid,
            receipt_id,
            reason,
        )
    for q in requests.values():
        answers = seen.reservations.get(q.rid, [])
        if q.grant_id is not None:  # admitted by the gateway: no answer, a hold from the grant
            assert answers == [], q.rid
            (hold,) = [e for _, e in seen.about(q.rid) if e.kind == "hold"]
            assert (hold.meta["grant_id"], hold.postings) == (q.grant_id, ()), q.rid
            assert hold.meta["amount"] == expected_hold(q.max_tokens, q.prompt_bytes)
        elif q.kind in PAID_KINDS:
            assert [a["status"] for a in answers] == ["HELD"] * q.sends, q.rid
            assert {a["amount_nanoton"] for a in answers} == {
                expected_hold(q.max_tokens, q.prompt_bytes)
            }
        elif q.kind == "refused":
            assert [(a["status"], a["reject_reason"]) for a in answers] == [
                ("REJECTED", "INSUFFICIENT_FUNDS")
            ]
            assert (answers[0]["amount_nanoton"], answers[0]["available_nanoton"]) == (
                POOR_HOLD,
                POOR_HOLD // 2,
            )
        else:  # a short deadline may pass while billing is down: then it is never held
            assert len(answers) <= q.sends and all(a["status"] == "HELD" for a in answers)
    for ghost in traffic.unknown_account:
        assert [a["reject_reason"] for a in seen.reservations[ghost]] == ["UNKNOWN_ACCOUNT"]

    # `cocoon billing` replays the same topic and shows the same numbers.
    where = ["--bootstrap", kafka_bootstrap, "--prefix", prefix]
    shown = await asyncio.to_thread(CliRunner().invoke, app, ["balance", POOR, *where])
    assert shown.exit_code == 0, shown.output
    assert f"available  {expected[f'client:{POOR}']} nanoTON" in shown.output
    assert "held       0 nanoTON" in shown.output

    holds = {e.meta["request_id"]: e.meta["expires_at_ms"] for e in entries if e.kind == "hold"}
    after_expiry = sum(1 for rid, e in charges.items() if e.at_ms > holds[rid])
    tight_paid = sum(1 for q in paid.values() if q.kind == "tight_paid")
    elapsed = time.monotonic() - started
    print(
        f"chaos: {len(requests)} requests ({len(paid)} charged, {total_charge} nanoTON; "
        f"{tight_paid} on tight holds, {after_expiry} read after their hold's expiry time), "
        f"{len(entries)} ledger entries, {len(started_payouts)} payouts "
        f"({sum(payouts.values())} nanoTON), {chaos.kills} SIGKILLs at "
        f"{chaos.kill_ages} s after spawn, main started {main.starts}x, "
        f"second {second.starts}x, {elapsed:.0f} s; timeline {marks}"
    )
