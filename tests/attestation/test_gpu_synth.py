"""Synthetic GPU evidence under a local P-384 test CA, for what real samples cannot show: a
report bound to our own claims nonce, revoked certificates, rogue OCSP responders, an echoed
OCSP nonce, a FWID mismatch, and the policy's `require_gpu_cc_models` hook.

The synthetic evidence (gpu_synth.py, shared with test_service_gpu) has the real report layout;
the real-sample tests are in test_gpu_verify.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from support.gpu_synth import AT, DRIVER, VBIOS, World, make_world

from cocoon.attestation.claims import Claims
from cocoon.attestation.gpu.ocsp import OcspResponses, OcspService
from cocoon.attestation.gpu.verify import GpuPolicy, evaluate_gpu, gpu_nonce
from cocoon.attestation.policy import Policy, PolicyInput, evaluate
from cocoon.attestation.quote import parse_quote
from cocoon.attestation.simtdx import SimTdx


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("gpu-rims"))


@pytest.fixture
def claims(make_claims: Callable[..., Claims]) -> Claims:
    return make_claims(nonce=os.urandom(32), model="llama-70b-cc")


def test_evidence_bound_to_claims_verifies_under_its_explicit_root(
    world: World, claims: Claims
) -> None:
    nonce = gpu_nonce(claims)
    v = evaluate_gpu(world.evidence(nonce), nonce, world.policy(responder="responder"), AT)
    assert v.accepted, v.reason
    assert (v.driver_version, v.vbios_version, v.root) == (DRIVER, VBIOS, "synthetic-gpu-root")
    # the same evidence under NVIDIA's pinned root only
    default = GpuPolicy(world.policy().rims, world.policy().ocsp)
    assert evaluate_gpu(world.evidence(nonce), nonce, default, AT).stage == "root"


def test_gpu_nonce_depends_on_every_claim(make_claims: Callable[..., Claims]) -> None:
    a, b = make_claims(nonce=b"n" * 32), make_claims(nonce=b"n" * 32)
    assert len(gpu_nonce(a)) == 32 and gpu_nonce(a) != gpu_nonce(b)  # different worker keys


@pytest.mark.parametrize(
    ("ocsp_kw", "reason"),
    [
        ({"status": ocsp.OCSPCertStatus.REVOKED}, "revoked"),
        ({"status": ocsp.OCSPCertStatus.UNKNOWN}, "UNKNOWN"),
        ({"responder": "rogue-responder"}, "not issued by its CA"),
        ({"responder": "no-eku-responder"}, "lacks the OCSPSigning EKU"),
    ],
)
def test_ocsp_rejections(world: World, ocsp_kw: dict[str, object], reason: str) -> None:
    nonce = os.urandom(32)
    v = evaluate_gpu(world.evidence(nonce), nonce, world.policy(**ocsp_kw), AT)
    assert (v.accepted, v.stage) == (False, "ocsp")
    assert reason in v.reason


def test_tampered_ocsp_signature_fails(world: World) -> None:
    good = world.policy()
    assert isinstance(good.ocsp, OcspResponses)
    blob = good.ocsp.responses[0]
    tampered = bytearray(blob)
    tampered[blob.index(ocsp.load_der_ocsp_response(blob).signature) + 20] ^= 0x01
    bad = GpuPolicy(
        good.rims, OcspResponses([bytes(tampered), good.ocsp.responses[1]]), (world.anchor,)
    )
    nonce = os.urandom(32)
    v = evaluate_gpu(world.evidence(nonce), nonce, bad, AT)
    assert (v.stage, v.accepted) == ("ocsp", False)
    assert "signature" in v.reason


def test_fwid_must_match_the_attestation_certificate(world: World) -> None:
    nonce = os.urandom(32)
    v = evaluate_gpu(world.evidence(nonce, report_fwid=os.urandom(48)), nonce, world.policy(), AT)
    assert (v.accepted, v.stage) == (False, "fwid")


@pytest.fixture
def echoing_responder(world: World) -> Iterator[tuple[str, list[str]]]:
    mode: list[str] = ["echo"]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            req = ocsp.load_der_ocsp_request(self.rfile.read(int(self.headers["Content-Length"])))
            sent = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            name = next(
                n for n in ("device", "ca") if world.certs[n].serial_number == req.serial_number
            )
            echoed = sent if mode[0] == "echo" else os.urandom(32)
            body = world.ocsp(name, nonce=echoed)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", mode
    finally:
        server.shutdown()
        server.server_close()


def test_online_ocsp_nonce_is_echoed(
    world: World, echoing_responder: tuple[str, list[str]]
) -> None:
    url, mode = echoing_responder
    policy = GpuPolicy(world.policy().rims, OcspService(url, nonce=True), (world.anchor,))
    nonce = os.urandom(32)
    assert evaluate_gpu(world.evidence(nonce), nonce, policy, AT).accepted
    mode[0] = "other-nonce"
    v = evaluate_gpu(world.evidence(nonce), nonce, policy, AT)
    assert (v.stage, v.accepted) == ("ocsp", False) and "different nonce" in v.reason


def test_policy_requires_gpu_cc_for_listed_models(
    world: World, claims: Claims, sim: SimTdx, now: int
) -> None:
    quote = parse_quote(sim.quote(claims.report_data()))
    policy = sim.development_policy(require_gpu_cc_models=frozenset({claims.model}))
    nonce = gpu_nonce(claims)
    good = evaluate_gpu(world.evidence(nonce), nonce, world.policy(), AT)
    stale = evaluate_gpu(world.evidence(os.urandom(32)), nonce, world.policy(), AT)
    outcomes = {}
    for label, gpu in (("verified", good), ("rejected", stale), ("absent", None)):
        inp = PolicyInput(quote, "UpToDate", (), claims, now, extra={"gpu": gpu})
        outcomes[label] = next(c for c in evaluate(policy, inp) if c.name == "gpu_cc")
    assert outcomes["verified"].ok
    assert not outcomes["rejected"].ok and "nonce" in outcomes["rejected"].detail
    assert not outcomes["absent"].ok and "no GPU evidence" in outcomes["absent"].detail
    # a model that is not listed gets no gpu_cc check at all
    other = sim.development_policy(require_gpu_cc_models=frozenset({"another-model"}))
    inp = PolicyInput(quote, "UpToDate", (), claims, now)
    assert "gpu_cc" not in [c.name for c in evaluate(other, inp)]


def test_require_gpu_cc_models_round_trips_through_policy_json() -> None:
    pol = Policy.from_dict({"require_gpu_cc_models": ["llama-70b-cc"]})
    assert pol.require_gpu_cc_models == {"llama-70b-cc"}
    assert Policy.from_dict(pol.to_dict()).require_gpu_cc_models == {"llama-70b-cc"}
    assert Policy().require_gpu_cc_models == frozenset()
