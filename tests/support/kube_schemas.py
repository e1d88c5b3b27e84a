"""Validate rendered Kubernetes objects as an API server with strict field validation would.

Built-in kinds: the Kubernetes JSON schemas shipped by the PyPI package `kubernetes-validate`
(strict: unknown fields are errors, as `kubectl apply` reports them since 1.27). Custom
resources: the `openAPIV3Schema` of the Strimzi and Prometheus-operator CRDs vendored in
tests/deploy/crds/ (tests/deploy/crds/README.md says where from), turned into JSON Schema.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from support.charts import KUBE_VERSION
from support.repo import REPO_ROOT

CRDS = REPO_ROOT / "tests" / "deploy" / "crds"


def errors(doc: dict) -> list[str]:
    """What is wrong with `doc` (empty when it would be accepted)."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
    crd = _crd_schemas().get((api_version, kind))
    if crd is not None:
        found = jsonschema.Draft202012Validator(crd).iter_errors(doc)
        return [f"{name}: {_where(e)}: {e.message}" for e in found]
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: no schema for {api_version} {kind} (neither built in nor a known CRD)"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{name}: {_where(exc)}: {exc.message}"]
    return []


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(root)"


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served"):
                    continue
                api_version = f"{spec['group']}/{version['name']}"
                schema = _json_schema(version["schema"]["openAPIV3Schema"])
                schemas[(api_version, spec["names"]["kind"])] = schema
    return schemas


def _json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema, with the API server's strictness."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False  # strict field validation: unknown field
    return out


def all_errors(docs: Iterator[dict] | tuple[dict, ...]) -> list[str]:
    return [problem for doc in docs for problem in errors(doc)]
