"""Policy documents and the registry: strict parsing, explicit roots, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocoon.attestation.policy import MeasurementSet, Policy, PolicyError
from cocoon.attestation.registry import Registry, RegistryError
from cocoon.attestation.roots import INTEL_ROOT, INTEL_ROOT_SHA256, TrustAnchor, TrustError


def test_default_policy_trusts_only_intel() -> None:
    pol = Policy()
    assert pol.trusted_roots == (INTEL_ROOT,) and pol.accepted_tcb_statuses == {"UpToDate"}
    assert (
        INTEL_ROOT.sha256
        == INTEL_ROOT_SHA256
        == ("44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3")
    )
    assert Policy.from_dict({}).trusted_roots == (INTEL_ROOT,)


def test_policy_json_roundtrip_with_test_root(sim, tmp_path: Path) -> None:
    pol = sim.development_policy(accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(pol.to_dict()))
    again = Policy.from_file(path)
    assert again == pol
    assert [a.name for a in again.trusted_roots] == ["intel-sgx-root-ca", "simtdx-test-root"]


def test_test_root_from_cert_file_needs_matching_pin(sim, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    (tmp_path / "root.pem").write_bytes(sim.root_cert.public_bytes(Encoding.PEM))
    spec = {"name": "dev", "cert_file": "root.pem", "sha256": sim.trust_anchor.sha256}
    (tmp_path / "p.json").write_text(json.dumps({"trusted_roots": [spec]}))
    assert Policy.from_file(tmp_path / "p.json").trusted_roots[0].der == sim.trust_anchor.der
    spec["sha256"] = "00" * 32
    (tmp_path / "p.json").write_text(json.dumps({"trusted_roots": [spec]}))
    with pytest.raises(PolicyError, match="pinned"):
        Policy.from_file(tmp_path / "p.json")
    with pytest.raises(TrustError):
        TrustAnchor.from_pem("x", b"not a cert", "00")


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"skip_verification": True}, "unknown policy keys"),
        ({"accepted_tcb_statuses": ["Revoked"]}, "unknown TCB statuses"),
        ({"mr_service_td": "allow-any"}, "mr_service_td"),
        ({"trusted_roots": []}, "at least one root"),
        ({"trusted_roots": ["local"]}, "trusted root"),
        ({"allowed_image_hashes": ["abc"]}, "64"),
        ({"allowed_measurements": [{"mrtd": "00"}]}, "measurement"),
        ({"freshness": {"max_age_seconds": -1}}, "non-negative"),
    ],
)
def test_bad_policies_refused(doc: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        Policy.from_dict(doc)


def test_registry_apply_and_file_roundtrip(tmp_path: Path) -> None:
    reg = Registry()
    reg.add_image("AB" * 32)
    reg.add_model("qwen", "cd" * 32)
    mset = MeasurementSet(b"\x01" * 48, (b"\x02" * 48,) * 4)
    reg.add_measurements(mset)
    reg.allow_tcb("SWHardeningNeeded")
    pol = reg.apply(Policy.production())
    assert pol.allowed_image_hashes == {"ab" * 32} and pol.allowed_models == {"qwen"}
    assert pol.allowed_measurements == (mset,)
    assert pol.accepted_tcb_statuses == {"UpToDate", "SWHardeningNeeded"}
    assert pol.trusted_roots == (INTEL_ROOT,)
    reg.save(tmp_path / "r.json")
    back = Registry.load(tmp_path / "r.json")
    assert back.to_dict() == reg.to_dict()
    assert back.remove_image("ab" * 32) and not back.remove_image("ab" * 32)
    assert back.remove_model("qwen") and back.remove_measurements(mset)
    with pytest.raises(RegistryError):
        reg.add_image("zz")
    with pytest.raises(RegistryError):
        reg.allow_tcb("Revoked")
    with pytest.raises(RegistryError):
        Registry.from_dict({"format": "other"})
