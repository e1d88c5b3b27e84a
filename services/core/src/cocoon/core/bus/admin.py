"""Provisioning: make the broker's topics match the catalog, idempotently.

Create what is missing, set configs that differ, add partitions where the catalog asks for more.
Partitions are never removed (Kafka cannot) and configs the catalog does not mention are left
alone. Uses kafka-python's admin client (blocking; call it from a thread in async code).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Literal

from kafka.admin import (
    AlterConfigOp,
    ConfigResource,
    ConfigResourceType,
    KafkaAdminClient,
    NewPartitions,
    NewTopic,
)
from kafka.errors import TopicAlreadyExistsError

from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.catalog import (
    TopicSpec,
    concrete_topics,
    dead_letter_spec,
    instantiate,
    topic_config,
)

Action = Literal["created", "altered", "partitions", "kept", "unchanged"]


@dataclass(frozen=True)
class TopicChange:
    """What `apply_topics` did (or, in a dry run, would do) to one topic."""

    topic: str  # physical name
    action: Action
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.action in ("created", "altered", "partitions")


def default_bootstrap() -> str:
    """COCOON_KAFKA_BOOTSTRAP, else the local developer broker."""
    bootstrap = os.environ.get("COCOON_KAFKA_BOOTSTRAP")
    if bootstrap:
        return bootstrap
    from cocoon.core.kafka.broker import default_layout

    return default_layout().bootstrap


def _admin(bootstrap: str, security: KafkaSecurity | None = None) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="cocoon-topics",
        **(security or KafkaSecurity.from_env()).kafka_python(),
    )


def apply_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    *,
    prefix: str = "",
    replication_factor: int | None = None,
    dry_run: bool = False,
    security: KafkaSecurity | None = None,
) -> list[TopicChange]:
    """Bring the topics of `specs` (physical names `prefix + name`) in line with the catalog."""
    templates = [s.name for s in specs if s.template]
    if templates:
        raise ValueError(f"templates are instantiated, not applied: {templates}")
    admin = _admin(bootstrap, security)
    try:
        if replication_factor is None:
            brokers = len(admin.describe_cluster()["brokers"])
            replication_factor = min(3, brokers)
        existing = set(admin.list_topics())
        changes = []
        created = []
        for spec in specs:
            name = prefix + spec.name
            if name in existing:
                changes += _reconcile(admin, spec, name, dry_run)
                continue
            if not dry_run:
                try:
                    admin.create_topics(
                        [
                            NewTopic(
                                name,
                                num_partitions=spec.partitions,
                                replication_factor=replication_factor,
                                topic_configs=topic_config(spec),
                            )
                        ]
                    )
                    created.append(name)
                except TopicAlreadyExistsError:  # created concurrently: reconcile instead
                    changes += _reconcile(admin, spec, name, dry_run)
                    continue
            changes.append(
                TopicChange(
                    name, "created", f"{spec.partitions} partitions, rf {replication_factor}"
                )
            )
        if created:
            _wait_for(admin, created)
        return changes
    finally:
        admin.close()


def _reconcile(
    admin: KafkaAdminClient, spec: TopicSpec, name: str, dry_run: bool
) -> list[TopicChange]:
    changes = []
    wanted = topic_config(spec)
    described = admin.describe_configs(
        # The stubs allow only str values; describing takes the keys alone.
        [ConfigResource(ConfigResourceType.TOPIC, name, configs=dict.fromkeys(wanted))],  # type: ignore[arg-type]
        config_filter="all",
    )["topic"][name]
    differing = {
        key: value for key, value in wanted.items() if described.get(key, {}).get("value") != value
    }
    if differing:
        if not dry_run:
            resource = ConfigResource(
                ConfigResourceType.TOPIC,
                name,
                # An incremental alter takes (op, value) pairs, which the stubs do not allow.
                configs={k: (AlterConfigOp.SET, v) for k, v in differing.items()},  # type: ignore[misc]
            )
            result = admin.alter_configs([resource], incremental=True)["topic"][name]
            if result != "OK":
                raise RuntimeError(f"altering {name} failed: {result}")
        shown = ", ".join(
            f"{k}: {described.get(k, {}).get('value')} -> {v}" for k, v in differing.items()
        )
        changes.append(TopicChange(name, "altered", shown))
    current = len(admin.describe_topics([name])[0]["partitions"])
    if current < spec.partitions:
        if not dry_run:
            admin.create_partitions({name: NewPartitions(total_count=spec.partitions)})
        changes.append(TopicChange(name, "partitions", f"{current} -> {spec.partitions}"))
    elif current > spec.partitions:
        changes.append(
            TopicChange(
                name,
                "kept",
                f"{current} partitions (catalog: {spec.partitions}; "
                "Kafka cannot remove partitions)",
            )
        )
    if not changes:
        changes.append(TopicChange(name, "unchanged"))
    return changes


def _wait_for(admin: KafkaAdminClient, names: list[str], timeout_s: float = 60.0) -> None:
    # A created topic is usable once every partition has a leader in the metadata. On a loaded
    # shared 2-core machine a whole catalog (34 topics) took over 15 s to get its leaders.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = admin.describe_topics(names)
        if all(
            t["error_code"] == 0
            and t["partitions"]
            and all(p["leader_id"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"topics not ready after {timeout_s}s: {names}")


def catalog_topics(catalog: dict[str, TopicSpec]) -> list[TopicSpec]:
    """Everything `cocoon topics apply` provisions: every concrete topic and its DLQ."""
    return concrete_topics(catalog)


def instance_topics(template: TopicSpec, **params: str) -> list[TopicSpec]:
    """A template's concrete topic and its DLQ, e.g. work.w-1 and work.w-1.dlq."""
    topic = instantiate(template, **params)
    return [topic, dead_letter_spec(topic)]


def ensure_instance(
    bootstrap: str,
    template: TopicSpec,
    *,
    prefix: str = "",
    security: KafkaSecurity | None = None,
    **params: str,
) -> list[TopicChange]:
    """Create (or reconcile) one instance of a template topic and its DLQ (as `security`,
    default: this process's settings)."""
    return apply_topics(
        bootstrap, instance_topics(template, **params), prefix=prefix, security=security
    )


def list_topics(bootstrap: str, prefix: str = "") -> dict[str, int]:
    """Topics on the broker whose names start with `prefix`, with their partition counts."""
    admin = _admin(bootstrap)
    try:
        names = sorted(n for n in admin.list_topics() if n.startswith(prefix))
        if not names:
            return {}
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
    finally:
        admin.close()
