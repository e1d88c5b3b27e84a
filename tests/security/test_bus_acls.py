"""The secured bus refuses what a principal was not granted (real broker, real ACLs).

The ACLs are the catalog's (cocoon.core.acls), applied by `cocoon.core.bus.principals` as
`cocoon topics apply` and `cocoon up` do, for this module's own topic prefix.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from kafka.errors import KafkaError as AdminError

from cocoon.core.acls import principal_acls, principal_name
from cocoon.core.bus.admin import apply_topics, catalog_topics, ensure_instance
from cocoon.core.bus.principals import provision
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.catalog import default_catalog
from cocoon.core.contracts import Topic, TopicTemplate
from cocoon.core.kafka.broker import broker_answers

WORKER = "w-acl-test"
SERVICES = ("attestation", "billing", "gateway", "scheduler", "telegram", "worker-proxy")
ENROLMENT = principal_name("worker-enrolment")
# Aborts a client that waits for metadata of a topic it may not see.
CLIENT_TIMEOUT_MS = 8_000


class Bus:
    def __init__(self, bootstrap: str, prefix: str, admin: KafkaSecurity, users: dict[str, Path]):
        self.bootstrap, self.prefix, self.admin, self.users = bootstrap, prefix, admin, users

    def security(self, principal: str, password: str | None = None) -> KafkaSecurity:
        password = password or self.users[principal].read_text().strip()
        return KafkaSecurity("SASL_SSL", self.admin.cafile, username=principal, password=password)


@pytest.fixture(scope="module")
def bus(kafka_admin, tmp_path_factory) -> Bus:
    prefix = f"acl{uuid.uuid4().hex[:6]}."
    apply_topics(kafka_admin.bootstrap, catalog_topics(default_catalog()), prefix=prefix)
    ensure_instance(
        kafka_admin.bootstrap,
        default_catalog()[TopicTemplate.WORK],
        prefix=prefix,
        worker_id=WORKER,
    )
    users = provision(
        kafka_admin.bootstrap, prefix=prefix, users_dir=tmp_path_factory.mktemp("kafka-users")
    )
    return Bus(kafka_admin.bootstrap, prefix, kafka_admin.admin, users)


DENIED = "TopicAuthorizationFailedError"


async def write(bus: Bus, security: KafkaSecurity, topic: str) -> str:
    """ "ok", or the name of the error the broker answered a produce to `topic` with."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bus.bootstrap, request_timeout_ms=CLIENT_TIMEOUT_MS, **security.aiokafka()
    )
    await producer.start()
    try:
        await asyncio.wait_for(
            producer.send_and_wait(bus.prefix + topic, b"acl-probe", key=b"probe"),
            CLIENT_TIMEOUT_MS / 1000,
        )
        return "ok"
    except (KafkaError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        await producer.stop()


async def read(bus: Bus, security: KafkaSecurity, topic: str) -> str:
    """ "ok" when a fetch from `topic` returns its records, else the error the broker answered.

    Read implies Describe in Kafka's ACL model: a topic the principal may not even describe
    is refused at the metadata request, before any fetch (the producer's metadata wait raises
    at once, where a consumer would keep retrying)."""
    describer = AIOKafkaProducer(bootstrap_servers=bus.bootstrap, **security.aiokafka())
    await describer.start()
    try:
        await describer.partitions_for(bus.prefix + topic)
    except KafkaError as exc:
        return type(exc).__name__
    finally:
        await describer.stop()
    await _admin_write(bus, topic)  # something to fetch
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bus.bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=CLIENT_TIMEOUT_MS,
        **security.aiokafka(),
    )
    await consumer.start()
    partition = TopicPartition(bus.prefix + topic, 0)
    try:
        consumer.assign([partition])
        consumer.seek(partition, 0)
        deadline = asyncio.get_running_loop().time() + CLIENT_TIMEOUT_MS / 1000
        while asyncio.get_running_loop().time() < deadline:
            if (await consumer.getmany(timeout_ms=500)).get(partition):
                return "ok"
        return "no records"
    except KafkaError as exc:
        return type(exc).__name__
    finally:
        await consumer.stop()


async def _admin_write(bus: Bus, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bus.bootstrap, **bus.admin.aiokafka())
    await producer.start()
    try:
        await producer.send_and_wait(bus.prefix + topic, b"probe", key=b"probe", partition=0)
    finally:
        await producer.stop()


def _granted(principal: str, operation: str) -> set[str]:
    """Concrete catalog topics on which `principal` has `operation` (literal ACLs)."""
    return {
        acl.name
        for acl in principal_acls()[principal]
        if acl.resource_type == "topic" and acl.pattern == "literal" and operation in acl.operations
    }


def _untouched(principal: str) -> str:
    """A concrete catalog topic the principal has no ACL on at all."""
    named = {a.name for a in principal_acls()[principal] if a.resource_type == "topic"}
    return sorted(t for t in CONCRETE if t not in named)[0]


CONCRETE = sorted(s.name for s in default_catalog().values() if not s.template)
SERVICE_PRINCIPALS = sorted(principal_name(s) for s in SERVICES)


def test_every_service_of_the_catalog_has_a_principal():
    assert set(SERVICE_PRINCIPALS) | {ENROLMENT} <= set(principal_acls())


async def test_an_anonymous_or_unauthenticated_client_is_refused(bus):
    plaintext = KafkaSecurity()
    tls_only = KafkaSecurity("SSL", bus.admin.cafile)
    wrong = bus.security(principal_name("gateway"), password="not-the-password")
    for security in (plaintext, tls_only, wrong):
        assert not await asyncio.to_thread(broker_answers, bus.bootstrap, security, 3.0), security
    assert await asyncio.to_thread(
        broker_answers, bus.bootstrap, bus.security(principal_name("gateway")), 10.0
    )


@pytest.mark.parametrize("principal", SERVICE_PRINCIPALS)
async def test_a_service_reads_and_writes_only_what_the_catalog_grants(bus, principal):
    security = bus.security(principal)
    outside = _untouched(principal)
    if readable := sorted(_granted(principal, "Read")):
        assert await read(bus, security, readable[0]) == "ok", readable[0]
    if writable := sorted(_granted(principal, "Write")):
        assert await write(bus, security, writable[0]) == "ok", writable[0]
    assert readable or writable, f"{principal} has no topic at all"
    assert await read(bus, security, outside) == DENIED, outside
    assert await write(bus, security, outside) == DENIED, outside


ENROLMENT_REFUSED = sorted(
    {f"work.{WORKER}", f"work.{WORKER}.dlq"}
    | {t for t in CONCRETE if t.startswith(("billing.", "inference.", "usage.", "worker."))}
)


async def test_the_enrolment_principal_writes_evidence_and_reads_verdicts(bus):
    security = bus.security(ENROLMENT)
    assert await write(bus, security, Topic.ATTESTATION_EVIDENCE) == "ok"
    assert await read(bus, security, Topic.ATTESTATION_VERDICTS) == "ok"
    assert await write(bus, security, Topic.ATTESTATION_VERDICTS) == DENIED


@pytest.mark.parametrize("topic", ENROLMENT_REFUSED)
async def test_the_enrolment_principal_reads_no_work_billing_or_inference_topic(bus, topic):
    assert await read(bus, bus.security(ENROLMENT), topic) == DENIED


def _as(monkeypatch, security: KafkaSecurity) -> None:
    """This process's bus clients (the topic admin included) connect as `security`."""
    for name, value in security.env().items():
        monkeypatch.setenv(name, value)


def test_only_the_worker_proxy_creates_work_topics(bus, monkeypatch):
    template = default_catalog()[TopicTemplate.WORK]
    _as(monkeypatch, bus.security(principal_name("gateway")))
    with pytest.raises(AdminError, match=r"TopicAuthorizationFailed|ClusterAuthorization"):
        ensure_instance(bus.bootstrap, template, prefix=bus.prefix, worker_id="w-acl-gw")
    _as(monkeypatch, bus.security(principal_name("worker-proxy")))
    changes = ensure_instance(bus.bootstrap, template, prefix=bus.prefix, worker_id="w-acl-new")
    assert [c.action for c in changes] == ["created", "created"]
    # and again at the next start: reconciled, not refused
    changes = ensure_instance(bus.bootstrap, template, prefix=bus.prefix, worker_id="w-acl-new")
    assert {c.action for c in changes} == {"unchanged"}
