"""Who may do what on the bus: one Kafka principal per service, its ACLs derived from the catalog.

The topic files say who produces and consumes each topic, `schemas/groups.yaml` which groups a
service joins, and `schemas/principals.yaml` the rest (transactional ids, restricted principals
such as a worker's enrolment). From these:

* `Write` on every topic a principal produces (dead-letter topics included: a DLQ's producers
  are its topic's consumers), `Read` on every topic it consumes; Read and Write imply Describe;
* a template topic (`work.{worker_id}`) becomes a `prefix` ACL on its literal head (`work.`);
  the service that creates its instances also gets `Create`, `DescribeConfigs`, `AlterConfigs`;
* `Read` on the consumer groups it joins: a prefix ACL on each declared group's literal head
  (`scheduler`; `worker-{worker_id}` -> `worker-`);
* `Write` and `Describe` on its transactional-id prefix, when it writes in transactions;
* `IdempotentWrite` on the cluster when it produces (the producers are idempotent), and the
  cluster operations `principals.yaml` names (the attestation service's, to issue workers'
  credentials).

A trusted worker's own principal (`worker_acls`) is not in that table: the attestation service
creates it per worker at run time, with literal ACLs on that worker's work topic and group only.

`cocoon.core.bus.principals` applies these to a broker; `cocoon.core.strimzi` renders them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from cocoon.core.catalog import DLQ_SUFFIX, GroupSpec, TopicSpec, default_catalog, load_groups
from cocoon.core.paths import schemas_dir

PRINCIPAL_PREFIX = "cocoon-"  # principal (and KafkaUser) `cocoon-<service>`
# The restricted principal a worker's host holds (schemas/principals.yaml).
WORKER_ENROLMENT = "worker-enrolment"
ResourceType = Literal["topic", "group", "transactionalId", "cluster"]
PatternType = Literal["literal", "prefix"]
CLUSTER_RESOURCE = "kafka-cluster"  # Kafka's one name for the cluster resource
OPERATIONS_ORDER = (
    "Read",
    "Write",
    "Create",
    "Describe",
    "DescribeConfigs",
    "AlterConfigs",
    "Alter",
    "IdempotentWrite",
)
_TEMPLATE_HEAD = re.compile(r"^[^{]*")


@dataclass(frozen=True, order=True)
class Acl:
    """Allow `operations` on one resource (a name, or every name with a prefix)."""

    resource_type: ResourceType
    name: str
    pattern: PatternType
    operations: tuple[str, ...]


class TransactionalIds(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    prefix: str


class RestrictedPrincipal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    service: str
    topics: tuple[str, ...]
    description: str
    read_only: bool = False  # reads the topics the service reads among them, writes none


class ClusterGrant(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    operations: tuple[Literal["Alter", "Describe"], ...]
    why: str


class WorkerPrincipal(BaseModel):
    """The credential issued to one trusted worker: `name`, `reads`, `group` are templates
    over `{worker_id}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    service: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    group: str


class PrincipalsSpec(BaseModel):
    """`schemas/principals.yaml`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    transactional_ids: tuple[TransactionalIds, ...] = ()
    cluster: tuple[ClusterGrant, ...] = ()
    restricted: tuple[RestrictedPrincipal, ...] = ()
    worker: WorkerPrincipal | None = None


def load_principals(
    path: Path | str | None = None, catalog: Mapping[str, TopicSpec] | None = None
) -> PrincipalsSpec:
    """The principals file, checked against the catalog."""
    file = Path(path) if path else schemas_dir() / "principals.yaml"
    catalog = catalog if catalog is not None else default_catalog()
    spec = PrincipalsSpec(**yaml.safe_load(file.read_text()))
    services = set(catalog_services(catalog))
    for ids in spec.transactional_ids:
        if ids.service not in services:
            raise ValueError(f"{file}: transactional ids for unknown service {ids.service}")
    for grant in spec.cluster:
        if grant.service not in services:
            raise ValueError(f"{file}: cluster operations for unknown service {grant.service}")
    for restricted in spec.restricted:
        if restricted.service not in services or restricted.name in services:
            raise ValueError(f"{file}: {restricted.name} must restrict a service of the catalog")
        for topic in restricted.topics:
            role = catalog.get(topic)
            if role is None or restricted.service not in (*role.producers, *role.consumers):
                raise ValueError(
                    f"{file}: {restricted.name} is given {topic}, which {restricted.service} "
                    "neither produces nor consumes"
                )
    if spec.worker is not None:
        _check_worker(file, spec.worker, catalog)
    return spec


def _check_worker(file: Path, worker: WorkerPrincipal, catalog: Mapping[str, TopicSpec]) -> None:
    if "{worker_id}" not in worker.name or "." not in worker.name:
        # A dot cannot occur in a worker id, so no worker's principal can be a service's.
        raise ValueError(f"{file}: worker principal {worker.name} needs a '.' and {{worker_id}}")
    for topics, role_of in ((worker.reads, "consumers"), (worker.writes, "producers")):
        for topic in topics:
            spec = catalog.get(topic)
            if spec is None or worker.service not in getattr(spec, role_of):
                raise ValueError(f"{file}: {worker.service} is not among {topic}'s {role_of}")


def principal_name(holder: str) -> str:
    """The Kafka principal (SCRAM user, certificate CN, KafkaUser) of a service or holder."""
    return PRINCIPAL_PREFIX + holder


def worker_principal(worker_id: str, principals: PrincipalsSpec | None = None) -> str:
    """The principal the attestation service issues to a trusted worker (`cocoon-worker.<id>`)."""
    spec = (principals or load_principals()).worker
    if spec is None:
        raise ValueError("schemas/principals.yaml declares no worker principal")
    return principal_name(spec.name.format(worker_id=worker_id))


def worker_acls(
    worker_id: str,
    *,
    prefix: str = "",
    catalog: Mapping[str, TopicSpec] | None = None,
    principals: PrincipalsSpec | None = None,
) -> list[Acl]:
    """One trusted worker's ACLs: Read on its own work topic (literal, so worker `a` gets
    nothing of `work.ab`), Write on its dead letters, Create and the config operations on both
    (it creates them), Read on its own group, Write on the shared topics a worker writes."""
    catalog = catalog if catalog is not None else default_catalog()
    spec = (principals or load_principals(catalog=catalog)).worker
    if spec is None:
        raise ValueError("schemas/principals.yaml declares no worker principal")
    acls: list[Acl] = []
    for name in spec.reads:
        topic = catalog[name]
        own = prefix + name.format(worker_id=worker_id)
        ops: tuple[str, ...] = ("Read",)
        dlq_ops: tuple[str, ...] = ("Write",)
        if topic.template_info is not None and topic.template_info.created_by == spec.service:
            ops += ("Create", "DescribeConfigs", "AlterConfigs")
            dlq_ops += ("Create", "DescribeConfigs", "AlterConfigs")
        acls.append(Acl("topic", own, "literal", _ordered(ops)))
        if topic.dead_letter:
            acls.append(Acl("topic", own + DLQ_SUFFIX, "literal", _ordered(dlq_ops)))
    acls += [Acl("topic", prefix + name, "literal", ("Write",)) for name in spec.writes]
    acls.append(Acl("group", spec.group.format(worker_id=worker_id), "literal", ("Read",)))
    acls.append(Acl("cluster", CLUSTER_RESOURCE, "literal", ("IdempotentWrite",)))
    return sorted(acls)


def template_prefix(spec: TopicSpec) -> str:
    """The literal head of a template topic name: `work.{worker_id}` -> `work.`."""
    head = _TEMPLATE_HEAD.match(spec.name)
    assert head is not None
    if not head.group(0):
        raise ValueError(f"template {spec.name} has no literal prefix for an ACL")
    return head.group(0)


def catalog_services(catalog: Mapping[str, TopicSpec]) -> list[str]:
    """Every producer and consumer the catalog names (services and `operator`), sorted."""
    names: set[str] = set()
    for spec in catalog.values():
        names.update(spec.producers, spec.consumers)
        if spec.template_info is not None:
            names.add(spec.template_info.created_by)
    return sorted(names)


def topic_permissions(
    catalog: Mapping[str, TopicSpec],
    service: str,
    *,
    prefix: str = "",
    only: Iterable[str] | None = None,
) -> dict[tuple[PatternType, str], set[str]]:
    """(pattern type, topic or prefix) -> operations the catalog gives `service` (on the
    topics `only` names, when given)."""
    allowed = None if only is None else set(only)
    perms: dict[tuple[PatternType, str], set[str]] = {}
    for spec in catalog.values():
        if allowed is not None and spec.name not in allowed:
            continue
        key: tuple[PatternType, str] = (
            ("prefix", prefix + template_prefix(spec))
            if spec.template
            else ("literal", prefix + spec.name)
        )
        ops: set[str] = set()
        if service in spec.producers:
            ops.add("Write")
        if service in spec.consumers:
            ops.add("Read")
        if spec.template_info is not None and spec.template_info.created_by == service:
            ops.update(("Create", "DescribeConfigs", "AlterConfigs"))
        if ops:
            perms.setdefault(key, set()).update(ops)
    return perms


def group_prefixes(groups: Iterable[GroupSpec], service: str) -> list[str]:
    """The group-name prefixes `service` joins: each declared group's literal head (a prefix
    also lets a test or a second deployment run `billing-<suffix>` beside `billing`)."""
    heads = set()
    for group in groups:
        head = _TEMPLATE_HEAD.match(group.name)
        assert head is not None
        if group.service == service:
            heads.add(head.group(0))
    return sorted(heads)


def _ordered(operations: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(operations), key=OPERATIONS_ORDER.index))


def principal_acls(
    catalog: Mapping[str, TopicSpec] | None = None,
    *,
    prefix: str = "",
    groups: Mapping[str, GroupSpec] | None = None,
    principals: PrincipalsSpec | None = None,
) -> dict[str, list[Acl]]:
    """Principal name -> its ACLs, for every service of the catalog and restricted principal.

    `prefix` is the topic prefix of an environment (COCOON_TOPIC_PREFIX); it applies to topic
    names only, as the services apply it (group and transactional ids are not prefixed)."""
    catalog = catalog if catalog is not None else default_catalog()
    groups = groups if groups is not None else load_groups(catalog=dict(catalog))
    principals = principals if principals is not None else load_principals(catalog=catalog)
    transactional = {t.service: t.prefix for t in principals.transactional_ids}
    result: dict[str, list[Acl]] = {}
    for service in catalog_services(catalog):
        perms = topic_permissions(catalog, service, prefix=prefix)
        if not perms:
            continue
        acls = _topic_acls(perms)
        acls += [
            Acl("group", name, "prefix", ("Read",))
            for name in group_prefixes(groups.values(), service)
        ]
        if service in transactional:
            acls.append(
                Acl("transactionalId", transactional[service], "prefix", ("Write", "Describe"))
            )
        acls += _cluster_acls(principals, service, perms)
        result[principal_name(service)] = acls
    for restricted in principals.restricted:
        perms = topic_permissions(
            catalog, restricted.service, prefix=prefix, only=restricted.topics
        )
        if restricted.read_only:
            perms = {key: {"Read"} for key, ops in perms.items() if "Read" in ops}
        result[principal_name(restricted.name)] = _topic_acls(perms) + _producer_acls(perms)
    return result


def _topic_acls(perms: Mapping[tuple[PatternType, str], set[str]]) -> list[Acl]:
    return [
        Acl("topic", name, pattern, _ordered(ops))
        for (pattern, name), ops in sorted(perms.items(), key=lambda item: item[0][1])
    ]


def _producer_acls(perms: Mapping[tuple[PatternType, str], set[str]]) -> list[Acl]:
    if not any("Write" in ops for ops in perms.values()):
        return []
    return [Acl("cluster", CLUSTER_RESOURCE, "literal", ("IdempotentWrite",))]


def _cluster_acls(
    principals: PrincipalsSpec, service: str, perms: Mapping[tuple[PatternType, str], set[str]]
) -> list[Acl]:
    """IdempotentWrite for a producer, plus the cluster operations principals.yaml grants."""
    granted = (grant.operations for grant in principals.cluster if grant.service == service)
    ops: set[str] = {op for operations in granted for op in operations}
    if any("Write" in topic_ops for topic_ops in perms.values()):
        ops.add("IdempotentWrite")
    return [Acl("cluster", CLUSTER_RESOURCE, "literal", _ordered(ops))] if ops else []
