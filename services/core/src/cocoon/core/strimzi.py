"""Strimzi `KafkaTopic` and `KafkaUser` manifests rendered from the topic catalog.

The catalog (`schemas/topics/`) is the single source: the committed manifests under
`deploy/helm/generated/` are this module's output (`cocoon topics strimzi --out DIR`), and a test
fails when they drift from the catalog.

Topics: one `KafkaTopic` per concrete topic and per dead-letter topic. Template topics
(`work.{worker_id}`) are not rendered: they are created at run time by the service the catalog
names (`template.created_by`). `replicas` is left out on purpose: the broker's
`default.replication.factor` decides it, so one rendering serves every environment.

Users: one `KafkaUser` per service named in the catalog, with `simple` authorization:

* `Write` on every topic the service produces, `Read` on every topic it consumes
  (Read and Write imply Describe in Kafka's ACL model);
* templates become `prefix` ACLs on their literal head (`work.{worker_id}` -> `work.`), and the
  service that creates their instances also gets `Create`, `DescribeConfigs` and `AlterConfigs`;
* consumers read with consumer groups named after the service (`prefix` ACL on the group), and
  with the groups `schemas/groups.yaml` gives them under another name (`worker-{worker_id}`: a
  `prefix` ACL on its literal head);
* producers may use transactional ids that start with the service name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from cocoon.core.catalog import GroupSpec, TopicSpec, load_groups, topic_config

API_VERSION = "kafka.strimzi.io/v1beta2"
CLUSTER = "cocoon"  # the Kafka CR's name in deploy/helm (the strimzi.io/cluster label)
USER_PREFIX = "cocoon-"  # KafkaUser (and its Secret) is `cocoon-<service>`
TOPICS_FILE = "kafka-topics.yaml"
USERS_FILE = "kafka-users.yaml"
GENERATED_HEADER = (
    "# GENERATED from schemas/topics/ by `cocoon topics strimzi --out deploy/helm/generated`.\n"
    "# Do not edit: change the catalog and render again (tests/deploy checks it is up to date).\n"
)

_TEMPLATE_HEAD = re.compile(r"^[^{]*")
_OPERATIONS_ORDER = ("Read", "Write", "Create", "Describe", "DescribeConfigs", "AlterConfigs")


def resource_name(topic: str) -> str:
    """A Kubernetes object name for a topic (lower-case RFC 1123 subdomain, <= 253 chars)."""
    name = re.sub(r"[^a-z0-9.-]+", "-", topic.lower()).strip(".-")
    if not name or len(name) > 253:
        raise ValueError(f"topic {topic!r} gives no valid Kubernetes name")
    return name


def _labels(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        "strimzi.io/cluster": CLUSTER,
        "app.kubernetes.io/part-of": "cocoon",
        "app.kubernetes.io/managed-by": "cocoon-catalog",
        **(extra or {}),
    }


def render_kafka_topics(catalog: Mapping[str, TopicSpec], *, prefix: str = "") -> list[dict]:
    """One KafkaTopic per concrete catalog topic and DLQ, sorted by topic name."""
    topics = []
    for spec in sorted(catalog.values(), key=lambda s: s.name):
        if spec.template:
            continue
        name = prefix + spec.name
        labels = {"cocoon.io/dead-letter": "true"} if spec.dead_letter_of else {}
        topics.append(
            {
                "apiVersion": API_VERSION,
                "kind": "KafkaTopic",
                "metadata": {"name": resource_name(name), "labels": _labels(labels)},
                "spec": {
                    "topicName": name,
                    "partitions": spec.partitions,
                    "config": dict(sorted(topic_config(spec).items())),
                },
            }
        )
    return topics


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
    catalog: Mapping[str, TopicSpec], service: str, *, prefix: str = ""
) -> dict[tuple[str, str], set[str]]:
    """(pattern type, topic or prefix) -> operations the catalog gives `service`."""
    perms: dict[tuple[str, str], set[str]] = {}
    for spec in catalog.values():
        if spec.template:
            key = ("prefix", prefix + template_prefix(spec))
        else:
            key = ("literal", prefix + spec.name)
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
    """The group-name prefixes `service` reads with: its own name, and its declared groups."""
    prefixes = [service]
    for group in sorted(groups, key=lambda g: g.name):
        head = _TEMPLATE_HEAD.match(group.name)
        assert head is not None
        if group.service == service and not head.group(0).startswith(service):
            prefixes.append(head.group(0))
    return prefixes


def _ordered(operations: Iterable[str]) -> list[str]:
    return sorted(operations, key=_OPERATIONS_ORDER.index)


def _acl(kind: str, name: str, pattern: str, operations: Iterable[str]) -> dict[str, Any]:
    return {
        "resource": {"type": kind, "name": name, "patternType": pattern},
        "operations": _ordered(operations),
        "host": "*",
    }


def render_kafka_users(
    catalog: Mapping[str, TopicSpec],
    *,
    prefix: str = "",
    authentication: str = "tls",
    groups: Mapping[str, GroupSpec] | None = None,
) -> list[dict]:
    """One KafkaUser per service of the catalog with exactly the ACLs its topics need."""
    groups = groups if groups is not None else load_groups(catalog=dict(catalog))
    users = []
    for service in catalog_services(catalog):
        perms = topic_permissions(catalog, service, prefix=prefix)
        if not perms:
            continue
        produces = any("Write" in ops for ops in perms.values())
        consumes = any("Read" in ops for ops in perms.values())
        acls = [
            _acl("topic", name, pattern, ops)
            for (pattern, name), ops in sorted(perms.items(), key=lambda item: item[0][1])
        ]
        if consumes:
            for group in group_prefixes(groups.values(), service):
                acls.append(_acl("group", prefix + group, "prefix", ["Read"]))
        if produces:
            acls.append(_acl("transactionalId", prefix + service, "prefix", ["Write", "Describe"]))
        users.append(
            {
                "apiVersion": API_VERSION,
                "kind": "KafkaUser",
                "metadata": {
                    "name": USER_PREFIX + service,
                    "labels": _labels({"app.kubernetes.io/component": service}),
                },
                "spec": {
                    "authentication": {"type": authentication},
                    "authorization": {"type": "simple", "acls": acls},
                },
            }
        )
    return users


def to_yaml(documents: list[dict]) -> str:
    """A multi-document YAML stream with the generated-file header."""
    import yaml

    body = "---\n".join(
        yaml.safe_dump(doc, sort_keys=False, default_flow_style=False) for doc in documents
    )
    return GENERATED_HEADER + "---\n" + body


def render_files(catalog: Mapping[str, TopicSpec], *, prefix: str = "") -> dict[str, str]:
    """File name -> contents of everything `cocoon topics strimzi` writes."""
    return {
        TOPICS_FILE: to_yaml(render_kafka_topics(catalog, prefix=prefix)),
        USERS_FILE: to_yaml(render_kafka_users(catalog, prefix=prefix)),
    }
