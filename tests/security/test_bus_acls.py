"""The secured bus refuses what a principal was not granted (real broker, real ACLs).

The ACLs are the catalog's (cocoon.core.acls), applied by `cocoon.core.bus.principals` as
`cocoon topics apply` and `cocoon up` do, for this module's own topic prefix.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import KafkaError as AdminError
from support.bus_probe import DENIED, Bus, read, write

from cocoon.core.acls import Acl, principal_acls, principal_name
from cocoon.core.bus.admin import apply_topics, catalog_topics, ensure_instance
from cocoon.core.bus.principals import apply_acls, provision, prune
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.catalog import default_catalog
from cocoon.core.contracts import Topic, TopicTemplate
from cocoon.core.kafka.broker import broker_answers

WORKER = "w-acl-test"
SERVICES = ("attestation", "billing", "gateway", "scheduler", "telegram", "worker-proxy")
ENROLMENT = principal_name("worker-enrolment")
OWNER = principal_name("worker-owner")


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


# What a GPU owner's tools may read: its worker's verdict, heartbeats and earnings.
OWNER_READS = [
    Topic.ATTESTATION_VERDICTS,
    Topic.WORKER_HEARTBEATS,
    Topic.BILLING_EARNINGS,
    Topic.SCHEDULER_STANDINGS,
]
# Accounts' money, receipts (they name the paying account) and the work itself.
ACCOUNT_TOPICS = [Topic.BILLING_LEDGER, Topic.BILLING_BALANCES, Topic.USAGE_RECEIPTS]
OWNER_REFUSED = sorted(
    {*ACCOUNT_TOPICS, f"work.{WORKER}", Topic.INFERENCE_REQUESTS, Topic.BILLING_GRANTS}
)


async def test_a_gpu_owners_tools_read_the_workers_view_and_write_nothing(bus):
    security = bus.security(OWNER)
    for topic in OWNER_READS:
        assert await read(bus, security, topic) == "ok", topic
    for topic in OWNER_READS:
        assert await write(bus, security, topic) == DENIED, topic


@pytest.mark.parametrize("topic", OWNER_REFUSED)
async def test_a_gpu_owners_tools_read_no_account_or_work(bus, topic):
    assert await read(bus, bus.security(OWNER), topic) == DENIED


@pytest.mark.parametrize("topic", ACCOUNT_TOPICS)
async def test_the_worker_proxy_principal_reads_no_account(bus, topic):
    assert await read(bus, bus.security(principal_name("worker-proxy")), topic) == DENIED


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


def _held(bus: Bus, principal: str) -> set[tuple[str, str, str]]:
    """(resource name, pattern, operation) of every binding `principal` holds."""
    admin = KafkaAdminClient(bootstrap_servers=bus.bootstrap, **bus.admin.kafka_python())
    try:
        held, _ = admin.describe_acls(
            ACLFilter(
                principal=f"User:{principal}",
                host="*",
                operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(
                    ResourceType.ANY, None, ACLResourcePatternType.ANY
                ),
            )
        )
    finally:
        admin.close()
    return {
        (b.resource_pattern.resource_name, b.resource_pattern.pattern_type.name, b.operation.name)
        for b in held
    }


def test_apply_removes_the_acls_the_catalog_no_longer_gives(bus):
    gateway = principal_name("gateway")
    other_prefix = f"other{uuid.uuid4().hex[:6]}."
    stale = {
        gateway: [
            Acl("topic", bus.prefix + Topic.BILLING_LEDGER, "literal", ("Write",)),
            Acl("group", "scheduler", "prefix", ("Read",)),
        ]
    }
    elsewhere = {
        gateway: [Acl("topic", other_prefix + Topic.BILLING_LEDGER, "literal", ("Write",))]
    }
    apply_acls(bus.bootstrap, stale)
    apply_acls(bus.bootstrap, elsewhere)
    assert (bus.prefix + Topic.BILLING_LEDGER, "LITERAL", "WRITE") in _held(bus, gateway)

    removed = prune(bus.bootstrap, prefix=bus.prefix)

    names = {(b.resource_pattern.resource_name, b.operation.name) for b in removed}
    assert names == {(bus.prefix + Topic.BILLING_LEDGER, "WRITE"), ("scheduler", "READ")}
    held = _held(bus, gateway)
    assert (bus.prefix + Topic.BILLING_LEDGER, "LITERAL", "WRITE") not in held
    assert ("scheduler", "PREFIXED", "READ") not in held
    # Another environment's topics are its own apply's business; the catalog's grants stay.
    assert (other_prefix + Topic.BILLING_LEDGER, "LITERAL", "WRITE") in held
    assert (bus.prefix + Topic.BILLING_LEDGER, "LITERAL", "READ") in held
    assert prune(bus.bootstrap, prefix=bus.prefix) == []
