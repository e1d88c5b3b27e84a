"""A worker's host holds only the enrolment principal; the worker's own credential comes with trust.

Real broker, real ACLs. The attestation service runs in-process as `cocoon-attestation` (its
catalog ACLs, Alter on the cluster among them) with `issue_worker_credentials`. The first test
plays the enclave itself (keys made here, evidence quoted by the simulated TDX, published with
the enrolment principal) and probes what each credential may do; the second runs the
worker-proxy with the enrolment principal only and watches it get to work and be cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from support.bus_probe import DENIED, Bus, admin_write, read, write

from cocoon.attestation.claims import Claims, Freshness
from cocoon.attestation.registry_topic import publish_registry
from cocoon.attestation.service import AttestationService, Settings
from cocoon.attestation.simtdx import DEFAULT_MEASUREMENTS, SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.core.acls import principal_name, worker_principal
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics, catalog_topics, ensure_instance
from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.bus.principals import delete_principal, provision
from cocoon.core.bus.security import ENV, KafkaSecurity
from cocoon.core.catalog import default_catalog
from cocoon.core.codec import models
from cocoon.core.contracts import Topic, TopicTemplate, work_topic
from cocoon.core.crypto import WorkerKeys
from cocoon.worker_proxy.credential import CredentialBox
from cocoon.worker_proxy.service import Settings as WorkerSettings
from cocoon.worker_proxy.service import WorkerProxy

MODEL = "smollm2-135m-instruct"
IMAGE = DEFAULT_MEASUREMENTS.image_hash().hex()
ENROLMENT = principal_name("worker-enrolment")
ATTESTATION = principal_name("attestation")
WAIT_S = 30.0
# How long a revoked worker may keep fetching with a connection it already had open.
REVOCATION_BOUND_S = 10.0


@pytest.fixture(scope="module")
def bus(kafka_admin, tmp_path_factory) -> Bus:
    prefix = f"cred{uuid.uuid4().hex[:6]}."
    apply_topics(kafka_admin.bootstrap, catalog_topics(default_catalog()), prefix=prefix)
    users = provision(
        kafka_admin.bootstrap, prefix=prefix, users_dir=tmp_path_factory.mktemp("kafka-users")
    )
    return Bus(kafka_admin.bootstrap, prefix, kafka_admin.admin, users)


@contextlib.contextmanager
def connecting_as(security: KafkaSecurity) -> Iterator[None]:
    """Clients built inside read `security` from the environment (a service's own principal);
    the test's own clients go back to the admin afterwards."""
    saved = {name: os.environ.get(name) for name in ENV.values()}
    os.environ.update(security.env())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.asynccontextmanager
async def attestation(bus: Bus, tmp_path: Path) -> AsyncIterator[AttestationService]:
    """The attestation service as `cocoon-attestation`, issuing workers' credentials, trusting
    the simulated TDX root and a registry that allows the simulated image and MODEL."""

    def allow(registry: Any) -> None:
        registry.add_image(IMAGE)
        registry.add_model(MODEL, hashlib.sha256(MODEL.encode()).hexdigest())

    await publish_registry(bus.bootstrap, allow, prefix=bus.prefix)
    key_file = tmp_path / "attestation-key.pem"
    ServiceKey.load(key_file, create=True)
    settings = Settings(
        kafka_bootstrap=bus.bootstrap,
        topic_prefix=bus.prefix,
        dev_simtdx=True,
        service_key_file=key_file,
        create_service_key=False,
        evidence_group=f"attestation-{uuid.uuid4().hex[:8]}",
        issue_worker_credentials=True,
        credential_sweep_seconds=1.0,
    )
    with connecting_as(bus.security(ATTESTATION)):
        service = AttestationService(settings)
        await service.start()
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    try:
        yield service
    finally:
        stopping.set()
        await asyncio.wait_for(task, 15)
        await service.close()


class Enclave:
    """A worker as its TD sees itself: its private keys, evidence quoted by the simulated TDX."""

    def __init__(self, payout_address: str | None = None) -> None:
        self.id = f"w-{uuid.uuid4().hex[:8]}"
        self.keys = WorkerKeys.generate()
        self.payout_address = payout_address

    def evidence(self) -> models.Evidence:
        k = self.keys.public
        claims = Claims(
            k.signing_key,
            k.hpke_x25519,
            k.hpke_mlkem768_x25519,
            MODEL,
            Freshness(timestamp=int(time.time())),
            self.payout_address,
        )
        return models.Evidence(
            evidence_id=f"ev-{uuid.uuid4().hex[:12]}",
            worker_id=self.id,
            claims=claims.encode(),
            tdx_quote=SimTdx.load_or_create().quote(claims.report_data()),
            nonce=None,
            collected_at=datetime.now(UTC),
        )


class Credentials:
    """attestation.credentials as a worker's host reads it: with the enrolment principal."""

    def __init__(self, bus: Bus, *enclaves: Enclave) -> None:
        enrolment = bus.security(ENROLMENT)
        self.boxes = {e.id: CredentialBox(e.id, e.keys, enrolment) for e in enclaves}
        self.last: dict[str, dict[str, Any] | None] = {}
        self.reader = BroadcastReader(
            bus.bootstrap,
            [Topic.ATTESTATION_CREDENTIALS],
            self._on_record,
            from_beginning=True,
            prefix=bus.prefix,
            security=enrolment,
        )

    def _on_record(self, record: BroadcastRecord) -> None:
        if record.key in self.boxes:
            self.last[record.key] = record.value
            self.boxes[record.key].on_record(record.key, record.value)

    async def until(self, worker_id: str, *, present: bool) -> KafkaSecurity | None:
        deadline = time.monotonic() + WAIT_S
        while (self.boxes[worker_id].current is not None) != present:
            assert time.monotonic() < deadline, f"credential of {worker_id} present={present}?"
            await asyncio.sleep(0.05)  # the reader runs in its own task
        return self.boxes[worker_id].current


async def _poll(reader: BroadcastReader, stop: asyncio.Event) -> None:
    await reader.run(stop)


async def test_only_a_trusted_worker_gets_its_own_credential_and_loses_it_on_revocation(
    bus: Bus, tmp_path: Path
) -> None:
    enrolment = bus.security(ENROLMENT)
    a, b = Enclave(payout_address="0:" + "a1" * 32), Enclave()
    for enclave in (a, b):  # the topics exist (as the admin made them): only ACLs decide
        ensure_instance(
            bus.bootstrap,
            default_catalog()[TopicTemplate.WORK],
            prefix=bus.prefix,
            worker_id=enclave.id,
        )
    work_a = work_topic(a.id)

    # The host's enrolment principal: evidence out, verdicts and sealed credentials in; no
    # work topic, no heartbeats, no outcomes.
    assert await read(bus, enrolment, work_a) == DENIED
    assert await write(bus, enrolment, Topic.WORKER_HEARTBEATS) == DENIED
    assert await write(bus, enrolment, Topic.INFERENCE_OUTCOMES) == DENIED
    assert await write(bus, enrolment, Topic.ATTESTATION_CREDENTIALS) == DENIED

    credentials = Credentials(bus, a, b)
    await credentials.reader.start()
    stop = asyncio.Event()
    following = asyncio.create_task(_poll(credentials.reader, stop))
    try:
        async with (
            attestation(bus, tmp_path),
            BusProducer(bus.bootstrap, prefix=bus.prefix, security=enrolment) as host,
        ):
            for enclave in (a, b):
                await host.send(Topic.ATTESTATION_EVIDENCE, enclave.evidence())
            as_a = await credentials.until(a.id, present=True)
            as_b = await credentials.until(b.id, present=True)
            assert as_a is not None and as_b is not None
            assert as_a.username == worker_principal(a.id) and as_a.username != as_b.username
            # Sealed to A's attested key: the host (or B) cannot open it.
            sealed = credentials.last[a.id]
            assert sealed is not None and as_a.password.encode() not in sealed["sealed_password"]
            stranger = CredentialBox(a.id, WorkerKeys.generate(), enrolment)
            stranger_view = {**sealed, "signing_key": stranger.keys.public.signing_key}
            assert not stranger.on_record(a.id, stranger_view) and stranger.current is None

            # After TRUSTED: A works with its own credential (and creates its own topics).
            ensure_instance(
                bus.bootstrap,
                default_catalog()[TopicTemplate.WORK],
                prefix=bus.prefix,
                security=as_a,
                worker_id=a.id,
            )
            assert await read(bus, as_a, work_a) == "ok"
            for topic in (
                Topic.WORKER_HEARTBEATS,
                Topic.INFERENCE_OUTCOMES,
                Topic.INFERENCE_RESPONSES,
                Topic.USAGE_RECEIPTS,
            ):
                assert await write(bus, as_a, topic) == "ok", topic
            # ... and nothing else: not another worker's work, not money, not trust.
            assert await read(bus, as_b, work_a) == DENIED
            assert await read(bus, as_a, work_topic(b.id)) == DENIED
            assert await read(bus, as_a, Topic.WORKER_HEARTBEATS) == DENIED
            assert await read(bus, as_a, Topic.BILLING_LEDGER) == DENIED
            for topic in (Topic.BILLING_LEDGER, Topic.ATTESTATION_VERDICTS, work_topic(b.id)):
                assert await write(bus, as_a, topic) == DENIED, topic

            # Revocation (the registry bans A's payout address) with a fetch loop of A open.
            consumer = AIOKafkaConsumer(
                bootstrap_servers=bus.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **as_a.aiokafka(),
            )
            await consumer.start()
            partition = TopicPartition(bus.prefix + work_a, 0)
            consumer.assign([partition])
            try:
                assert await consumer.getmany(partition, timeout_ms=5_000)
                await publish_registry(
                    bus.bootstrap, lambda r: r.ban_address(a.payout_address), prefix=bus.prefix
                )
                banned = time.monotonic()
                refused = await _refused(bus, consumer, partition, work_a)
                cut_off_s = time.monotonic() - banned
            finally:
                await consumer.stop()
            print(f"revoked worker's open fetch refused {cut_off_s:.2f} s after the ban: {refused}")
            assert refused == DENIED and cut_off_s < REVOCATION_BOUND_S
            await credentials.until(a.id, present=False)  # the record is a tombstone
            # A new connection with the deleted user does not authenticate.
            assert await read(bus, as_a, work_a) != "ok"
            assert await write(bus, as_a, Topic.WORKER_HEARTBEATS) != "ok"
            # Withdrawing again (another replica, a retry) finds nothing and is no error.
            assert delete_principal(bus.bootstrap, as_a.username) == 0
            # B, still trusted, is untouched.
            assert await write(bus, as_b, Topic.WORKER_HEARTBEATS) == "ok"
    finally:
        stop.set()
        await following
        await credentials.reader.stop()


async def _refused(
    bus: Bus, consumer: AIOKafkaConsumer, partition: TopicPartition, topic: str
) -> str:
    """Keep fetching (new records arrive all along) until the broker refuses; the error name."""
    deadline = time.monotonic() + REVOCATION_BOUND_S * 2
    while time.monotonic() < deadline:
        await admin_write(bus, topic)
        try:
            await consumer.getmany(partition, timeout_ms=200)
        except KafkaError as exc:
            return type(exc).__name__
    return "never refused"


async def test_the_worker_proxy_with_the_enrolment_principal_works_only_while_trusted(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COCOON_TOPIC_PREFIX", bus.prefix)  # the worker-proxy's clients read it
    address = "0:" + "c3" * 32
    settings = WorkerSettings(
        kafka_bootstrap=bus.bootstrap,
        worker_id=f"w-{uuid.uuid4().hex[:8]}",
        model=MODEL,
        engine_url="http://127.0.0.1:9/v1",  # no work is sent: the engine is never asked
        heartbeat_seconds=0.5,
        payout_address=address,
        await_credential=True,
    )
    with connecting_as(bus.security(ENROLMENT)):
        worker = WorkerProxy(settings)
    async with attestation(bus, tmp_path):
        await worker.start()
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(stopping))
        try:
            # Heartbeats can only be written with the credential the attestation service issued.
            await _until(lambda: worker.producer is not None, "a work session")
            assert worker.credential is not None and worker.credential.current is not None
            assert worker.credential.current.username == worker_principal(settings.worker_id)
            deadline = time.monotonic() + WAIT_S
            while not any(
                b["state"] == "READY"
                for b in await _heartbeats(bus, settings.worker_id, seconds=2.0)
            ):
                assert time.monotonic() < deadline, "no READY heartbeat"

            await publish_registry(
                bus.bootstrap, lambda r: r.ban_address(address), prefix=bus.prefix
            )
            # Its fetches are refused as soon as the ACLs go; the tombstone follows.
            await _until(
                lambda: worker.producer is None and worker.credential.current is None,
                "the work session to end and the credential to be withdrawn",
            )
            cut_off = time.time()
            await asyncio.sleep(2.0)
            assert not task.done()  # cut off, not crashed: it waits for a new credential
            assert worker.producer is None
            assert await _heartbeats(bus, settings.worker_id, seconds=time.time() - cut_off) == []
        finally:
            stopping.set()
            await asyncio.wait_for(task, 30)
            await worker.close()


async def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        await asyncio.sleep(0.05)


async def _heartbeats(bus: Bus, worker_id: str, *, seconds: float) -> list[Any]:
    """The worker's heartbeats written in the last `seconds` (read as the admin)."""
    found: list[Any] = []

    def collect(record: BroadcastRecord) -> None:
        if record.value is not None and record.value["worker_id"] == worker_id:
            found.append(record.value)

    since = int((time.time() - seconds) * 1000)
    reader = BroadcastReader(
        bus.bootstrap,
        [Topic.WORKER_HEARTBEATS],
        collect,
        from_beginning=False,
        since_ms=since,
        prefix=bus.prefix,
    )
    await reader.start()
    try:
        await reader.catch_up(10.0)
    finally:
        await reader.stop()
    return found
