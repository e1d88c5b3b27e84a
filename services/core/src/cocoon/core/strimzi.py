"""Strimzi `KafkaTopic` and `KafkaUser` manifests rendered from the topic catalog.

The catalog (`schemas/topics/`) is the single source: the committed manifests under
`deploy/helm/generated/` are this module's output (`cocoon topics strimzi --out DIR`), and a test
fails when they drift from the catalog.

Topics: one `KafkaTopic` per concrete topic and per dead-letter topic. Template topics
(`work.{worker_id}`) are not rendered: they are created at run time by the service the catalog
names (`template.created_by`). `replicas` is left out on purpose: the broker's
`default.replication.factor` decides it, so one rendering serves every environment.

Users: one `KafkaUser` per principal of `cocoon.core.acls` (one per service, and the restricted
ones such as the worker enrolment), with `simple` authorization and exactly the ACLs the local
broker gets from `cocoon topics apply`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cocoon.core.acls import (
    PRINCIPAL_PREFIX,
    Acl,
    load_principals,
    principal_acls,
    principal_name,
)
from cocoon.core.catalog import GroupSpec, TopicSpec, topic_config

API_VERSION = "kafka.strimzi.io/v1beta2"
CLUSTER = "cocoon"  # the Kafka CR's name in deploy/helm (the strimzi.io/cluster label)
TOPICS_FILE = "kafka-topics.yaml"
USERS_FILE = "kafka-users.yaml"
GENERATED_HEADER = (
    "# GENERATED from schemas/topics/ by `cocoon topics strimzi --out deploy/helm/generated`.\n"
    "# Do not edit: change the catalog and render again (tests/deploy checks it is up to date).\n"
)


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


def _acl(acl: Acl) -> dict[str, Any]:
    resource: dict[str, Any] = {"type": acl.resource_type}
    if acl.resource_type != "cluster":  # Strimzi's cluster resource has no name
        resource |= {"name": acl.name, "patternType": acl.pattern}
    return {"resource": resource, "operations": list(acl.operations), "host": "*"}


def render_kafka_users(
    catalog: Mapping[str, TopicSpec],
    *,
    prefix: str = "",
    authentication: str = "tls",
    groups: Mapping[str, GroupSpec] | None = None,
) -> list[dict]:
    """One KafkaUser per principal (cocoon.core.acls) with exactly the ACLs its code needs.
    The restricted principals GPU owners hold (a worker's enrolment, the owner's tools)
    authenticate with SCRAM from outside the cluster, on the listener where the credential the
    attestation service issues a worker later (a SCRAM user) works too."""
    external = {principal_name(r.name) for r in load_principals(catalog=catalog).restricted}
    users = []
    for name, acls in principal_acls(catalog, prefix=prefix, groups=groups).items():
        scram = name in external
        users.append(
            {
                "apiVersion": API_VERSION,
                "kind": "KafkaUser",
                "metadata": {
                    "name": name,
                    "labels": _labels(
                        {"app.kubernetes.io/component": name.removeprefix(PRINCIPAL_PREFIX)}
                    ),
                },
                "spec": {
                    "authentication": {"type": "scram-sha-512" if scram else authentication},
                    "authorization": {"type": "simple", "acls": [_acl(a) for a in acls]},
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
