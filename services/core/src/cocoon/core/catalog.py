"""The topic catalog: one YAML per topic in `schemas/topics/`, the single source for provisioning.

Each file names a topic, its key, partitions, retention and other Kafka configs, who produces and
consumes it, and the Avro record (and versions) its values carry. Every topic has a dead-letter
topic `<name>.dlq`; those are derived here, not written out. A name with `{parameter}` in it is a
template (per-worker work topics): `instantiate` makes a concrete topic of it.

`schemas/groups.yaml` declares the consumer groups (`load_groups`): which service joins which
group to read which topics.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cocoon.core.paths import schemas_dir

# Services that may appear as producers/consumers; "operator" is people and their tools.
SERVICES = frozenset(
    {"gateway", "attestation", "scheduler", "billing", "worker-proxy", "telegram", "operator"}
)
DLQ_SUFFIX = ".dlq"
DEAD_LETTER_RECORD = "cocoon.bus.DeadLetter"
DLQ_PARTITIONS = 1  # dead letters are rare; one partition keeps them in arrival order
DLQ_RETENTION_MS = 14 * 86_400_000  # two weeks to look at and replay them
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class TemplateInfo(BaseModel):
    """How instances of a template topic come to exist."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parameters: dict[str, str]  # parameter -> regex its values must match
    created_by: str
    how: str


class TopicSpec(BaseModel):
    """One topic of the catalog (or a dead-letter topic derived from one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    key: str | None  # record field whose value is the Kafka key (None: the key is not a field)
    key_note: str | None = None
    partitions: int = Field(ge=1)
    cleanup_policy: Literal["delete", "compact", "compact,delete"]
    retention_ms: int = Field(ge=-1)  # -1 keeps records forever
    config: dict[str, str] = {}
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    record: str  # Avro full name
    versions: tuple[int, ...]
    dead_letter: str | None  # the DLQ topic; None for a DLQ itself
    template: bool = False
    template_info: TemplateInfo | None = None
    dead_letter_of: str | None = None  # for a DLQ: the topic it collects records from

    @model_validator(mode="after")
    def _consistent(self) -> TopicSpec:
        has_params = bool(_PARAM.search(self.name))
        if has_params != self.template or (self.template != (self.template_info is not None)):
            raise ValueError(
                f"{self.name}: a name with {{parameters}} is a template and vice versa"
            )
        if self.template and self.template_info:
            declared = set(self.template_info.parameters)
            if declared != set(_PARAM.findall(self.name)):
                raise ValueError(
                    f"{self.name}: template parameters {sorted(declared)} do not match"
                )
        if self.dead_letter is not None and self.dead_letter != self.name + DLQ_SUFFIX:
            raise ValueError(f"{self.name}: dead_letter must be {self.name}{DLQ_SUFFIX}")
        bad = sorted(set(self.producers + self.consumers) - SERVICES)
        if bad:
            raise ValueError(f"{self.name}: unknown services {bad}; known: {sorted(SERVICES)}")
        if list(self.versions) != sorted(set(self.versions)) or not self.versions:
            raise ValueError(f"{self.name}: versions must be ascending and unique")
        return self

    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy


def topic_config(spec: TopicSpec) -> dict[str, str]:
    """The Kafka topic configs of `spec` (what `cocoon topics apply` sets on the broker)."""
    return {
        "cleanup.policy": spec.cleanup_policy,
        "retention.ms": str(spec.retention_ms),
        **spec.config,
    }


def dead_letter_spec(spec: TopicSpec) -> TopicSpec:
    """The DLQ of `spec`: written by its consumers, read by operators, kept two weeks."""
    if spec.dead_letter is None:
        raise ValueError(f"{spec.name} has no dead-letter topic")
    return TopicSpec(
        name=spec.dead_letter,
        description=f"Records of {spec.name} that could not be handled, with the reason "
        "(cocoon.bus.DeadLetter: original key, value and headers kept byte for byte).",
        key=None,
        key_note=f"the original key of the {spec.name} record",
        partitions=DLQ_PARTITIONS,
        cleanup_policy="delete",
        retention_ms=DLQ_RETENTION_MS,
        config={k: v for k, v in spec.config.items() if k == "max.message.bytes"},
        producers=spec.consumers,
        consumers=("operator",),
        record=DEAD_LETTER_RECORD,
        versions=(1,),
        dead_letter=None,
        template=spec.template,
        template_info=spec.template_info,
        dead_letter_of=spec.name,
    )


def load_catalog(path: Path | str | None = None) -> dict[str, TopicSpec]:
    """Every topic of the catalog and its DLQ, by name (templates keep their `{param}` names)."""
    directory = Path(path) if path else schemas_dir() / "topics"
    catalog: dict[str, TopicSpec] = {}
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no topic files (*.yaml) in {directory}")
    for file in files:
        raw = yaml.safe_load(file.read_text())
        template = raw.pop("template", None)
        try:
            spec = TopicSpec(
                **raw,
                template=template is not None,
                template_info=TemplateInfo(**template) if template else None,
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{file}: {exc}") from exc
        if file.stem != spec.name:
            raise ValueError(f"{file}: the file must be named {spec.name}.yaml")
        for topic in (spec, dead_letter_spec(spec)):
            if topic.name in catalog:
                raise ValueError(f"{file}: topic {topic.name} is defined twice")
            catalog[topic.name] = topic
    return catalog


class GroupSpec(BaseModel):
    """A consumer group of `schemas/groups.yaml`: one service reading some topics in it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # may be a template (`worker-{worker_id}`) with the parameters of its topics
    service: str
    topics: tuple[str, ...]
    description: str

    @property
    def template(self) -> bool:
        return bool(_PARAM.search(self.name))


def load_groups(
    path: Path | str | None = None, catalog: dict[str, TopicSpec] | None = None
) -> dict[str, GroupSpec]:
    """The consumer groups by name, checked against the topic catalog.

    Each group's topics exist and list its service as a consumer; a template group takes its
    parameters from its topics.
    """
    file = Path(path) if path else schemas_dir() / "groups.yaml"
    catalog = catalog if catalog is not None else default_catalog()
    groups: dict[str, GroupSpec] = {}
    for raw in yaml.safe_load(file.read_text())["groups"]:
        try:
            group = GroupSpec(**raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{file}: {exc}") from exc
        if group.name in groups:
            raise ValueError(f"{file}: group {group.name} is declared twice")
        params = set(_PARAM.findall(group.name))
        for topic in group.topics:
            spec = catalog.get(topic)
            if spec is None:
                raise ValueError(f"{file}: group {group.name} reads {topic}, not in the catalog")
            if group.service not in spec.consumers:
                raise ValueError(
                    f"{file}: {group.service} reads {topic} in group {group.name}, "
                    f"but is not among its consumers {list(spec.consumers)}"
                )
            params -= set(_PARAM.findall(topic))
        if params:
            raise ValueError(f"{file}: group {group.name} has parameters no topic of it has")
        groups[group.name] = group
    return groups


def dead_letter_topic(topic: str, catalog: dict[str, TopicSpec] | None = None) -> str:
    """The dead-letter topic of a catalog topic or template instance; `<topic>.dlq` otherwise."""
    try:
        spec = spec_for(topic, catalog)
    except KeyError:
        return topic + DLQ_SUFFIX
    return spec.dead_letter or topic + DLQ_SUFFIX


def instantiate(spec: TopicSpec, **params: str) -> TopicSpec:
    """A concrete topic of a template: `instantiate(work, worker_id="w-123")` -> `work.w-123`."""
    if not spec.template or spec.template_info is None:
        raise ValueError(f"{spec.name} is not a template")
    expected = spec.template_info.parameters
    if set(params) != set(expected):
        raise ValueError(f"{spec.name} needs parameters {sorted(expected)}, got {sorted(params)}")
    for name, value in params.items():
        if not re.fullmatch(expected[name], value):
            raise ValueError(f"{name}={value!r} does not match {expected[name]}")

    def fill(text: str | None) -> str | None:
        for name, value in params.items():
            text = None if text is None else text.replace("{" + name + "}", value)
        return text

    return spec.model_copy(
        update={
            "name": fill(spec.name),
            "description": fill(spec.description),
            "key_note": fill(spec.key_note),
            "dead_letter": fill(spec.dead_letter),
            "dead_letter_of": fill(spec.dead_letter_of),
            "template": False,
            "template_info": None,
        }
    )


def concrete_topics(catalog: dict[str, TopicSpec]) -> list[TopicSpec]:
    """The topics that exist once per cluster (templates and their DLQs excluded), sorted."""
    return sorted((s for s in catalog.values() if not s.template), key=lambda s: s.name)


def spec_for(topic: str, catalog: dict[str, TopicSpec] | None = None) -> TopicSpec:
    """The spec of a concrete topic name; template instances too (`work.w-1`, `work.w-1.dlq`)."""
    catalog = catalog if catalog is not None else default_catalog()
    if topic in catalog and not catalog[topic].template:
        return catalog[topic]
    for spec in catalog.values():
        if not spec.template or spec.template_info is None:
            continue
        params = _match_template(spec, topic)
        if params is not None:
            return instantiate(spec, **params)
    raise KeyError(f"topic {topic!r} is not in the catalog")


def _match_template(spec: TopicSpec, topic: str) -> dict[str, str] | None:
    assert spec.template_info is not None
    pattern = ""
    for literal, param in re.findall(r"([^{}]*)(?:\{([a-z_][a-z0-9_]*)\})?", spec.name):
        pattern += re.escape(literal)
        if param:
            body = spec.template_info.parameters[param].removeprefix("^").removesuffix("$")
            pattern += f"(?P<{param}>{body})"
    match = re.fullmatch(pattern, topic)
    return match.groupdict() if match else None


_DEFAULT: dict[str, TopicSpec] | None = None


def default_catalog() -> dict[str, TopicSpec]:
    """The project's catalog (loaded once per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_catalog()
    return _DEFAULT
