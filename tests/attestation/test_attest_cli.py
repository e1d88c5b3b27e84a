"""`cocoon attest` and `cocoon registry` end to end through typer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocoon.attestation.cli import attest_app, registry_app

runner = CliRunner()


def test_parse_prints_every_field(data: Path) -> None:
    res = runner.invoke(attest_app, ["parse", str(data / "cocoon_quote.dat")])
    assert res.exit_code == 0, res.output
    for name in (
        "mr_td",
        "rtmr0",
        "rtmr3",
        "report_data",
        "td_attributes",
        "xfam",
        "mr_seam",
        "mr_config_id",
        "mr_owner",
        "mr_owner_config",
        "tee_tcb_svn",
        "fmspc",
    ):
        assert name in res.output
    assert "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436" in res.output


def test_parse_json_and_hex_file(data: Path, tmp_path: Path) -> None:
    hexfile = tmp_path / "q.hex"
    hexfile.write_text((data / "phala_tdx_quote_outdated").read_bytes().hex())
    res = runner.invoke(attest_app, ["parse", str(hexfile), "--json"])
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert d["schema"] == "cocoon.attestation.quote/1"
    assert d["header"]["version"] == 5 and d["td_report_version"] == "1.5"
    assert "mr_service_td" in d["body"] and "tee_tcb_svn2" in d["body"]
    assert d["pck"]["fmspc"] == "90c06f000000"


def test_parse_rejects_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x03\x00" + bytes(100))
    res = runner.invoke(attest_app, ["parse", str(bad)])
    assert res.exit_code == 1 and "malformed quote" in res.output


def test_verify_real_quote_reports_tcb_and_rejects_without_claims(data: Path) -> None:
    args = [
        "verify",
        str(data / "phala_tdx_quote"),
        "--collateral",
        str(data / "phala_tdx_quote_collateral.json"),
        "--at",
        "1752918000",
        "--json",
    ]
    res = runner.invoke(attest_app, args)
    assert res.exit_code == 1
    verdict = json.loads(res.output)
    assert verdict["tcb_status"] == "UpToDate" and verdict["accepted"] is False
    assert verdict["stage"] == "policy" and verdict["advisory_ids"] == []
    late = runner.invoke(attest_app, [*args[:-3], "--at", "1760000000"])
    assert late.exit_code == 1 and "not valid" in late.output


def test_simulate_then_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COCOON_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "sim"
    res = runner.invoke(attest_app, ["simulate", "--out", str(out), "--model", "qwen"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cache" / "attestation" / "simtdx" / "simtdx.json").exists()
    base = [
        "verify",
        str(out / "quote.bin"),
        "--collateral",
        str(out / "collateral.json"),
        "--claims",
        str(out / "claims.json"),
    ]
    ok = runner.invoke(attest_app, [*base, "--policy", str(out / "policy.json")])
    assert ok.exit_code == 0 and "ACCEPTED" in ok.output, ok.output
    prod = runner.invoke(attest_app, base)
    assert prod.exit_code == 1 and "does not trust" in prod.output
    usage = runner.invoke(attest_app, ["verify", str(out / "quote.bin")])
    assert usage.exit_code == 2


def test_simulate_with_nonce(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    nonce = "ab" * 32
    args = [
        "simulate",
        "--out",
        str(out),
        "--nonce",
        nonce,
        "--sim-dir",
        str(tmp_path / "ca"),
        "--version",
        "5",
    ]
    assert runner.invoke(attest_app, args).exit_code == 0
    base = [
        "verify",
        str(out / "quote.bin"),
        "--collateral",
        str(out / "collateral.json"),
        "--claims",
        str(out / "claims.json"),
        "--policy",
        str(out / "policy.json"),
    ]
    assert runner.invoke(attest_app, [*base, "--nonce", nonce]).exit_code == 0
    missing = runner.invoke(attest_app, base)
    assert missing.exit_code == 1 and "nonce" in missing.output


def test_registry_commands(tmp_path: Path) -> None:
    f = ["--file", str(tmp_path / "reg.json")]
    assert runner.invoke(registry_app, ["add-image", "ab" * 32, *f]).exit_code == 0
    assert runner.invoke(registry_app, ["add-model", "qwen", "cd" * 32, *f]).exit_code == 0
    assert runner.invoke(registry_app, ["allow-tcb", "OutOfDate", *f]).exit_code == 0
    assert runner.invoke(registry_app, ["allow-tcb", "Bogus", *f]).exit_code == 2
    shown = json.loads(runner.invoke(registry_app, ["show", *f]).output)
    assert shown["image_hashes"] == ["ab" * 32] and shown["models"] == {"qwen": "cd" * 32}
    assert runner.invoke(registry_app, ["export", str(tmp_path / "x.json"), *f]).exit_code == 0
    assert runner.invoke(registry_app, ["remove-image", "ab" * 32, *f]).exit_code == 0
    assert json.loads(runner.invoke(registry_app, ["show", *f]).output)["image_hashes"] == []
    assert runner.invoke(registry_app, ["import", str(tmp_path / "x.json"), *f]).exit_code == 0
    assert json.loads(runner.invoke(registry_app, ["show", *f]).output)["image_hashes"] == [
        "ab" * 32
    ]


def test_an_sgx_quote_with_sgx_collateral_is_a_rejection_not_a_usage_error(
    sim, tmp_path: Path
) -> None:
    import struct

    import dcap_qvl

    chain = dcap_qvl.parse_quote(sim.quote(bytes(64))).cert_chain_pem_bytes()
    header = struct.pack("<HHIHH", 3, 2, 0, 0, 0) + bytes(36)  # v3, ECDSA-P256, TEE type SGX
    cert = struct.pack("<HI", 5, len(chain)) + chain
    signature = bytes(576) + struct.pack("<H", 32) + bytes(32) + cert
    quote = tmp_path / "sgx.dat"
    quote.write_bytes(header + bytes(384) + struct.pack("<I", len(signature)) + signature)
    doc = dict(sim.collateral().doc)
    tcb = json.loads(doc["tcb_info"])
    doc["tcb_info"] = json.dumps({**tcb, "id": "SGX"})  # SGX collateral: not TDX collateral
    collateral = tmp_path / "sgx-collateral.json"
    collateral.write_text(json.dumps(doc))
    res = runner.invoke(
        attest_app, ["verify", str(quote), "--collateral", str(collateral), "--json"]
    )
    assert res.exit_code == 1, res.output
    verdict = json.loads(res.output)
    assert verdict["stage"] == "format" and not verdict["accepted"]
    assert "TDX" in verdict["reason"], verdict["reason"]
