"""Python source generated from `schemas/`: what a type checker and the services import.

`cocoon topics codegen` writes, and `--check` compares (tests/core/test_codegen.py fails when a
committed file is stale):

* `cocoon/core/codec/models.py`: one frozen pydantic model per Avro record (the latest version of
  each `.avsc`, nested records included) and one `StrEnum` per Avro enum. Enum fields are typed
  with the `Literal` of their symbols and hold the plain strings, as the codec writes them.
* `cocoon/core/contracts.py`: the names that cross the bus as constants: topics and topic
  templates (`schemas/topics/`), consumer groups (`schemas/groups.yaml`) and error codes
  (`schemas/error_codes.yaml`).

The output is formatted as `ruff format` would leave it, so the committed files are lint clean.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocoon.core.catalog import GroupSpec, TopicSpec, load_catalog, load_groups
from cocoon.core.codec.store import SchemaStore, default_store
from cocoon.core.vocabulary import Vocabulary, load_error_codes

MODELS_MODULE = "cocoon/core/codec/models.py"
CONTRACTS_MODULE = "cocoon/core/contracts.py"
LINE = 100  # the project's line length (pyproject: [tool.ruff])

_HEADER = """\
# GENERATED from {source} by `cocoon topics codegen`: do not edit.
# Change the schemas and generate again (tests/core/test_codegen.py checks it is up to date).
"""

_PRIMITIVES = {
    "null": "None",
    "boolean": "bool",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "bytes": "bytes",
}
_TIMESTAMPS = ("timestamp-millis", "timestamp-micros")


def _simple(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _string(text: str, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
    """`prefix"text"suffix` on one line, or implicit concatenation in parentheses if too long."""
    one = f"{' ' * indent}{prefix}{_quote(text)}{suffix}"
    if len(one) <= LINE:
        return [one]
    inner = " " * (indent + 4)
    # Room for the quotes; words keep their trailing space so the pieces join back exactly.
    pieces = textwrap.wrap(
        text, LINE - len(inner) - 2, drop_whitespace=False, break_long_words=False
    )
    return [
        f"{' ' * indent}{prefix}(",
        *(f"{inner}{_quote(piece)}" for piece in pieces),
        f"{' ' * indent}){suffix}",
    ]


def _quote(text: str) -> str:
    """A double-quoted Python literal, as ruff format writes it."""
    body = repr(text)[1:-1] if "'" not in text else repr(text)[1:-1].replace("\\'", "'")
    return '"' + body.replace('"', '\\"') + '"'


def _docstring(text: str | None, indent: int) -> list[str]:
    if not text:
        return []
    if '"""' in text or "\\" in text:
        raise ValueError(f"a doc cannot hold triple quotes or backslashes: {text!r}")
    pad = " " * indent
    if len(pad) + len(text) + 6 <= LINE:
        return [f'{pad}"""{text}"""']
    # Narrower than the line: a docstring that fits on one line is joined by the formatter.
    lines = textwrap.wrap(text, LINE - indent - 6, break_long_words=False)
    return [f'{pad}"""{lines[0]}', *(f"{pad}{line}" for line in lines[1:]), f'{pad}"""']


def _exploded(head: str, items: list[str], tail: str, indent: int = 0) -> list[str]:
    """`head item, item tail` on one line if it fits, else one item per line (trailing comma)."""
    pad = " " * indent
    one = f"{pad}{head}{', '.join(items)}{tail}"
    if len(one) <= LINE:
        return [one]
    return [f"{pad}{head}", *(f"{pad}    {item}," for item in items), f"{pad}{tail}"]


@dataclass
class _Models:
    """Walks the parsed schemas the way the codec resolves names, emitting classes in order."""

    named: dict[str, str] = field(default_factory=dict)  # full name -> annotation source
    enums: dict[str, list[str]] = field(default_factory=dict)  # full name -> symbols
    records: dict[str, str] = field(default_factory=dict)  # full name -> class name
    blocks: list[list[str]] = field(default_factory=list)

    def type_of(self, schema: Any, version: int) -> str:
        if isinstance(schema, str):
            return self.named.get(schema) or _PRIMITIVES[schema]
        if isinstance(schema, list):
            branches = [self.type_of(b, version) for b in schema]
            non_null = [b for b in branches if b != "None"]
            inner = " | ".join(non_null)
            return f"{inner} | None" if len(non_null) < len(branches) else inner
        kind = schema["type"]
        if kind == "record":
            return self.record(schema, version)
        if kind == "enum":
            return self.enum(schema)
        if kind == "fixed":
            self.named[schema["name"]] = "bytes"
            return "bytes"
        if kind == "array":
            return f"list[{self.type_of(schema['items'], version)}]"
        if kind == "map":
            return f"dict[str, {self.type_of(schema['values'], version)}]"
        if schema.get("logicalType") in _TIMESTAMPS:
            return "datetime"
        return self.type_of(kind, version)

    def enum(self, schema: dict[str, Any]) -> str:
        name, symbols = schema["name"], list(schema["symbols"])
        known = self.enums.get(name)
        if known is not None:  # the same enum shared by several records (AccountKind)
            if known != symbols:
                raise ValueError(f"enum {name} is defined with different symbols")
            return self.named[name]
        self.enums[name] = symbols
        cls = _simple(name)
        alias = f"{cls}Symbol"
        # Fields accept and hold the symbol strings; the StrEnum is there for callers.
        self.named[name] = alias
        block = [f"class {cls}(StrEnum):", *_docstring(schema.get("doc"), 4)]
        if len(block) > 1:
            block.append("")
        block += [f"    {s} = {_quote(s)}" for s in symbols]
        block += ["", "", *_exploded(f"{alias} = Literal[", [_quote(s) for s in symbols], "]")]
        self.blocks.append(block)
        return alias

    def record(self, schema: dict[str, Any], version: int) -> str:
        name = schema["name"]
        if name in self.records:
            return self.records[name]
        cls = _simple(name)
        body: list[str] = []
        for avro_field in schema["fields"]:
            if keyword.iskeyword(avro_field["name"]):
                raise ValueError(f"{name}.{avro_field['name']} is a Python keyword")
            annotation = self.type_of(avro_field["type"], version)
            body += _field(avro_field, annotation)
        block = [f"class {cls}(AvroModel):", *_docstring(schema.get("doc"), 4)]
        if len(block) > 1:
            block.append("")
        block += [
            f"    avro_name: ClassVar[str] = {_quote(name)}",
            f"    avro_version: ClassVar[int] = {version}",
            "",
            *body,
        ]
        self.named[name] = cls
        self.records[name] = cls
        self.blocks.append(block)
        return cls


def _field(avro_field: dict[str, Any], annotation: str) -> list[str]:
    args: list[str] = []
    if "default" in avro_field:
        default = avro_field["default"]
        if isinstance(default, list | dict):
            args.append(f"default_factory=lambda: {default!r}")
        elif annotation == "bytes" and isinstance(default, str):
            args.append(f"default={default.encode('latin-1')!r}")  # Avro writes bytes as latin-1
        elif isinstance(default, str):
            args.append(f"default={_quote(default)}")
        else:
            args.append(f"default={default!r}")
    head = f"    {avro_field['name']}: {annotation} = Field("
    doc = avro_field.get("doc")
    one = head + ", ".join([*args, *([f"description={_quote(doc)}"] if doc else [])]) + ")"
    if len(one) <= LINE:
        return [one]
    lines = [head, *(f"        {arg}," for arg in args)]
    if doc:
        lines += _string(doc, 8, "description=", ",")
    return [*lines, "    )"]


def render_models(store: SchemaStore) -> str:
    """The source of `cocoon.core.codec.models` for the latest version of every record."""
    walker = _Models()
    for name in store.names:
        latest = store.latest(name)
        walker.type_of(latest.parsed, latest.version)
    classes: dict[str, str] = {}
    for full in [*walker.records, *walker.enums]:
        simple = _simple(full)
        if simple in classes and classes[simple] != full:
            raise ValueError(f"two schema types are both called {simple}; rename one")
        classes[simple] = full
    lines = [
        _HEADER.format(source="schemas/avro/").rstrip("\n"),
        '"""Pydantic models of the latest version of every record in `schemas/avro/`.',
        "",
        "The schemas are the only definition of a message; this module is generated from them",
        "(`cocoon topics codegen`), so the two cannot disagree. Use the models for type-checked",
        "construction and access:",
        "",
        "    from cocoon.core.codec import models",
        '    req = models.InferenceRequest(request_id="r-1", ...)',
        "    models.RequestChannel.HTTP       # enums are StrEnums; fields hold the plain string",
        "    codec.encode(req)                # or req.to_avro() for the plain dict",
        "",
        'Every record class is available as `models.<SimpleName>` and `model_for("<full.name>")`.',
        '"""',
        "",
        "from datetime import datetime",
        "from enum import StrEnum",
        "from typing import ClassVar, Literal",
        "",
        "from pydantic import Field",
        "",
        "from cocoon.core.codec.base import AvroModel",
    ]
    for block in walker.blocks:
        lines += ["", "", *block]
    lines += [
        "",
        "",
        *_exploded(
            "RECORDS: dict[str, type[AvroModel]] = {",
            [f"{_quote(full)}: {cls}" for full, cls in walker.records.items()],
            "}",
        ),
        *_exploded(
            "ENUMS: dict[str, type[StrEnum]] = {",
            [f"{_quote(full)}: {_simple(full)}" for full in walker.enums],
            "}",
        ),
        "",
        "",
        "def model_for(name: str) -> type[AvroModel]:",
        '    """The model class of a record full name."""',
        "    return RECORDS[name]",
    ]
    return "\n".join(lines) + "\n"


def _constant(name: str) -> str:
    """`attestation.evidence` -> `ATTESTATION_EVIDENCE`; a template keeps its literal parts."""
    literal = re.sub(r"\{[a-z_][a-z0-9_]*\}", "", name)
    return re.sub(r"[^A-Za-z0-9]+", "_", literal).strip("_").upper()


def _enum(name: str, doc: str, members: list[tuple[str, str, str | None]]) -> list[str]:
    """A StrEnum class; each member is (NAME, value, comment)."""
    lines = [f"class {name}(StrEnum):", *_docstring(doc, 4), ""]
    for member, value, comment in members:
        if comment:
            lines += [f"    # {line}" for line in textwrap.wrap(comment, LINE - 6)]
        lines.append(f"    {member} = {_quote(value)}")
    return lines


def render_contracts(
    catalog: dict[str, TopicSpec], groups: dict[str, GroupSpec], errors: Vocabulary
) -> str:
    """The source of `cocoon.core.contracts`: topic, group and error-code constants."""
    topics = sorted(s.name for s in catalog.values() if not s.template and not s.dead_letter_of)
    templates = sorted(
        (s for s in catalog.values() if s.template and not s.dead_letter_of), key=lambda s: s.name
    )
    parameters: dict[str, str] = {}
    for spec in templates:
        assert spec.template_info is not None
        for param, pattern in spec.template_info.parameters.items():
            if parameters.setdefault(param, pattern) != pattern:
                raise ValueError(f"parameter {param} has two patterns in the catalog")
    fixed_groups = sorted(g.name for g in groups.values() if not g.template)
    template_groups = sorted(g.name for g in groups.values() if g.template)
    lines = [
        _HEADER.format(source="schemas/").rstrip("\n"),
        '"""Names that cross the bus: topics, consumer groups and error codes of `schemas/`.',
        "",
        "Services use these constants, never the strings (tests/test_contracts.py):",
        "",
        "    from cocoon.core.contracts import ErrorCode, Topic, work_topic",
        "    await producer.send(Topic.INFERENCE_OUTCOMES, outcome)",
        '"""',
        "",
        "import re",
        "from enum import StrEnum",
        "",
        "",
        *_enum(
            "Topic",
            "Every concrete topic of the catalog; its dead-letter topic is `<topic>.dlq`.",
            [(_constant(t), t, None) for t in topics],
        ),
        "",
        "",
        *_enum(
            "TopicTemplate",
            "Template topics: one instance per parameter value (e.g. `work_topic`).",
            [(_constant(s.name), s.name, None) for s in templates],
        ),
        "",
        "",
        *_enum(
            "Group",
            "Consumer groups of `schemas/groups.yaml` (the default each service joins).",
            [(_constant(g), g, None) for g in fixed_groups],
        ),
        "",
        "",
        *_enum(
            "GroupTemplate",
            "Consumer groups with a parameter: one group per instance (e.g. `worker_group`).",
            [(_constant(g), g, None) for g in template_groups],
        ),
        "",
        "",
        *_enum(
            errors.name,
            errors.description,
            [(c.code.upper(), c.code, c.description) for c in errors.codes],
        ),
        "",
        "",
        *_exploded(
            "PARAMETERS: dict[str, str] = {",
            [f"{_quote(p)}: {_quote(pattern)}" for p, pattern in sorted(parameters.items())],
            "}",
        ),
    ]
    helpers = [("topic", "TopicTemplate", s.name) for s in templates]
    helpers += [("group", "GroupTemplate", g) for g in template_groups]
    for kind, enum, template in helpers:
        params = re.findall(r"\{([a-z_][a-z0-9_]*)\}", template)
        signature = ", ".join(f"{p}: str" for p in params)
        arguments = ", ".join(f"{p}={p}" for p in params)
        lines += [
            "",
            "",
            f"def {_constant(template).lower()}_{kind}({signature}) -> str:",
            f'    """The {kind} `{template}` of one {params[0].removesuffix("_id")}."""',
            f"    return _fill({enum}.{_constant(template)}, {arguments})",
        ]
    lines += [
        "",
        "",
        "def _fill(template: str, **params: str) -> str:",
        "    for name, value in params.items():",
        "        if not re.fullmatch(PARAMETERS[name], value):",
        '            raise ValueError(f"{name}={value!r} does not match {PARAMETERS[name]}")',
        "    return template.format(**params)",
    ]
    return "\n".join(lines) + "\n"


def render_all(schemas: Path | None = None) -> dict[str, str]:
    """Path under a distribution's `src/` -> the generated source (default: shipped schemas/)."""
    store = SchemaStore(schemas / "avro") if schemas else default_store()
    catalog = load_catalog(schemas / "topics" if schemas else None)
    groups = load_groups(schemas / "groups.yaml" if schemas else None, catalog)
    errors = load_error_codes(schemas / "error_codes.yaml" if schemas else None, store)
    return {
        MODELS_MODULE: render_models(store),
        CONTRACTS_MODULE: render_contracts(catalog, groups, errors),
    }


def source_root() -> Path:
    """The `src/` directory this cocoon-core is imported from (services/core/src in a checkout)."""
    return Path(__file__).resolve().parents[2]


def stale_files(src_dir: Path, files: dict[str, str]) -> list[Path]:
    """The generated files under `src_dir` whose contents differ from `files`."""
    stale = []
    for relative, text in files.items():
        path = src_dir / relative
        if not path.is_file() or path.read_text() != text:
            stale.append(path)
    return stale
