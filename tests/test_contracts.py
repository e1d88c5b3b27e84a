"""Contracts as code: the services' use of the bus agrees with `schemas/`, in both directions.

* Each service produces to, reads and joins in groups exactly what the catalog
  (`schemas/topics/`, `schemas/groups.yaml`) says it does (a static scan of its code,
  `support.contract_scan`).
* No service spells a topic name, a dead-letter topic or an error code as a string: they come
  from the generated `cocoon.core.contracts`.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from support.contract_scan import Scan, scan
from support.repo import SERVICES_DIR

from cocoon.core.catalog import load_catalog, load_groups
from cocoon.core.vocabulary import load_error_codes

SRC_DIRS = sorted(SERVICES_DIR.glob("*/src"))
# Catalog service name -> the package that is its code (`cocoon up` / `cocoon status` read as
# the operator).
PACKAGES = {
    "gateway": "gateway",
    "attestation": "attestation",
    "scheduler": "scheduler",
    "billing": "billing",
    "worker-proxy": "worker_proxy",
    "operator": "network",
}
GENERATED = {"cocoon/core/contracts.py", "cocoon/core/codec/models.py"}
# String literals that equal an error code but are another vocabulary (path suffix, value): why.
NOT_WIRE_CODES = {
    ("billing/ton/payouts.py", "cancelled"): "a payout-store state",
    ("gateway/api/errors.py", "worker_lost"): "the OpenAI-style API error code (docs/api.md)",
}
# (service, topic) the catalog declares and no code uses yet, with why it stays declared.
NOT_YET_USED = {
    ("billing", "billing.payouts"): "payout states on Kafka: billing keeps them in its payout "
    "store and the ledger today; delete the topic or publish them (lead's decision)",
}
CATALOG = load_catalog()
GROUPS = load_groups()


def _package_dir(package: str) -> Path:
    (found,) = SERVICES_DIR.glob(f"*/src/cocoon/{package}")
    return found


def _scan(package: str, src_dirs: list[Path] = SRC_DIRS) -> Scan:
    return scan(src_dirs, _package_dir(package))


def _declared(service: str, role: str) -> set[str]:
    return {
        spec.name
        for spec in CATALOG.values()
        if not spec.dead_letter_of
        and service in getattr(spec, role)
        and (service, spec.name) not in NOT_YET_USED
    }


@pytest.mark.parametrize("service", sorted(PACKAGES))
def test_service_code_and_catalog_agree(service):
    found = _scan(PACKAGES[service])
    assert not found.unresolved, (
        "topics or groups the scan cannot name (use cocoon.core.contracts constants):\n"
        + "\n".join(found.unresolved)
    )
    assert found.values("produce") == _declared(service, "producers"), (
        f"{service} produces to {sorted(found.values('produce'))}; the catalog says "
        f"{sorted(_declared(service, 'producers'))}"
    )
    assert found.values("consume") == _declared(service, "consumers"), (
        f"{service} reads {sorted(found.values('consume'))}; the catalog says "
        f"{sorted(_declared(service, 'consumers'))}"
    )
    declared = {g.name: set(g.topics) for g in GROUPS.values() if g.service == service}
    assert found.groups() == declared, (
        f"{service} joins {found.groups()}; schemas/groups.yaml says {declared}"
    )


def test_the_scan_fails_when_code_and_catalog_disagree(tmp_path):
    """The agreement test can fail: a scheduler that also sends to billing.grants is caught."""
    src = tmp_path / "src"
    shutil.copytree(_package_dir("scheduler").parent.parent, src)
    service = src / "cocoon" / "scheduler" / "service.py"
    text = service.read_text()
    service.write_text(
        text.replace(
            "await self.producer.send(OUTCOMES, record)",
            "await self.producer.send(OUTCOMES, record)\n"
            "                await self.producer.send(Topic.BILLING_GRANTS, record)",
        )
    )
    assert service.read_text() != text
    others = [d for d in SRC_DIRS if "scheduler" not in str(d)]
    found = scan([*others, src], src / "cocoon" / "scheduler")
    assert "billing.grants" in found.values("produce")
    assert found.values("produce") != _declared("scheduler", "producers")
    # ... and one that names a topic some other way is reported, not skipped.
    service.write_text(text.replace("group_id=settings.consumer_group", "group_id=f'g-{client}'"))
    unresolved = scan([*others, src], src / "cocoon" / "scheduler").unresolved
    assert any("group" in line for line in unresolved), unresolved


def _wire_strings() -> dict[str, str]:
    names: dict[str, str] = {}
    for spec in CATALOG.values():
        names[spec.name] = "topic"
    for code in load_error_codes().codes:
        names[code.code] = "error code"
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def wire_literals(src_dirs: list[Path]) -> list[str]:
    """`path:line: 'value' (kind)` for each string literal that spells a wire name."""
    names = _wire_strings()
    heads = {s.name.split("{")[0] for s in CATALOG.values() if s.template}
    found = []
    for src in src_dirs:
        for path in sorted(src.rglob("*.py")):
            relative = path.relative_to(src).as_posix()
            if relative in GENERATED:
                continue
            tree = ast.parse(path.read_text())
            docstrings = _docstrings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.JoinedStr) and node.values:
                    first = node.values[0]
                    if isinstance(first, ast.Constant) and first.value in heads:
                        found.append(f"{path}:{node.lineno}: f'{first.value}...' (topic template)")
                if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                    continue
                if id(node) in docstrings or node.value not in names:
                    continue
                if any(relative.endswith(p) and v == node.value for p, v in NOT_WIRE_CODES):
                    continue
                found.append(f"{path}:{node.lineno}: {node.value!r} ({names[node.value]})")
    return found


def test_no_wire_name_is_spelled_as_a_string():
    found = wire_literals(SRC_DIRS)
    assert not found, "use cocoon.core.contracts (Topic, work_topic, ErrorCode):\n" + "\n".join(
        found
    )


def test_the_literal_scan_finds_a_spelled_topic_and_code(tmp_path):
    """The literal test can fail: the strings it forbids are found where they are written."""
    module = tmp_path / "src" / "cocoon" / "demo" / "wiring.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        '"""inference.outcomes in a docstring is fine."""\n'
        'OUTCOMES = "inference.outcomes"\n'
        'CODE = "no_worker"\n'
        'def topic(worker_id):\n    return f"work.{worker_id}"\n'
    )
    found = wire_literals([tmp_path / "src"])
    assert [line.split(": ", 1)[1] for line in found] == [
        "'inference.outcomes' (topic)",
        "'no_worker' (error code)",
        "f'work....' (topic template)",
    ]
