"""Online reference data: an NVIDIA-shaped RIM service and OCSP responder on 127.0.0.1 serving
the real fixtures (NVIDIA's own services are never contacted by the tests)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from cocoon.attestation.gpu.ocsp import OcspService
from cocoon.attestation.gpu.rim import RimService
from cocoon.attestation.gpu.verify import GpuEvidence, GpuPolicy, evaluate_gpu

GPU = Path(__file__).parent / "data" / "gpu"
REPORT = bytes.fromhex((GPU / "nvtrust" / "hopperAttestationReport.txt").read_text().strip())
CHAIN = (GPU / "nvtrust" / "hopperCertChain.txt").read_bytes()
NONCE = REPORT[4:36]
AT = datetime(2025, 8, 21, 12, 0, tzinfo=UTC)
RIMS = {p.stem: p.read_bytes() for p in (GPU / "go-nvattest-tools" / "rim").iterdir()}
OCSP_DER = [
    base64.b64decode(p.read_text()) for p in sorted((GPU / "go-nvattest-tools" / "ocsp").iterdir())
]


class Upstream:
    """What the fake services serve; tests change `mode` to misbehave."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.rim_requests: list[str] = []
        self.ocsp_requests: list[ocsp.OCSPRequest] = []


def _handler(up: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            rim_id = self.path.removeprefix("/v1/rim/")
            up.rim_requests.append(rim_id)
            if rim_id not in RIMS or up.mode == "rim-missing":
                self._send(404, b'{"error": "not found"}', "application/json")
                return
            rim = base64.b64encode(RIMS[rim_id]).decode()
            body = {"id": rim_id, "rim": "!!" if up.mode == "rim-garbled" else rim}
            self._send(200, json.dumps(body).encode(), "application/json")

        def do_POST(self) -> None:
            req = ocsp.load_der_ocsp_request(self.rfile.read(int(self.headers["Content-Length"])))
            up.ocsp_requests.append(req)
            if up.mode == "ocsp-down":
                self._send(503, b"", "text/plain")
                return
            for der in OCSP_DER:
                hit = ocsp.load_der_ocsp_response(der).serial_number == req.serial_number
                if hit != (up.mode == "ocsp-wrong-cert"):
                    self._send(200, der, "application/ocsp-response")
                    return
            self._send(
                200, b"\x30\x03\x0a\x01\x01", "application/ocsp-response"
            )  # malformedRequest

    return Handler


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, str]]:
    up = Upstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(up))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield up, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def policy(url: str, nonce: bool = False) -> GpuPolicy:
    # NVIDIA's recorded responses carry no nonce, so the nonce is off unless a test wants it.
    return GpuPolicy(RimService(url), OcspService(url + "/", nonce=nonce), name="online")


def test_online_verification_of_real_evidence(upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    p = policy(url)
    v = evaluate_gpu(GpuEvidence(REPORT, CHAIN), NONCE, p, AT)
    assert v.accepted, v.reason
    assert up.rim_requests == [
        "NV_GPU_DRIVER_GH100_550.90.07",
        "NV_GPU_VBIOS_1010_0200_882_96009F0001",
    ]
    # OCSP asked about chain certificates 1..3 by serial, with SHA-384 CertIDs
    assert len(up.ocsp_requests) == 3
    assert all(r.hash_algorithm.name == "sha384" for r in up.ocsp_requests)
    assert evaluate_gpu(GpuEvidence(REPORT, CHAIN), NONCE, p, AT).accepted
    assert len(up.rim_requests) == 2  # RIMs are cached per id


def test_online_ocsp_nonce_must_be_echoed(upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    v = evaluate_gpu(GpuEvidence(REPORT, CHAIN), NONCE, policy(url, nonce=True), AT)
    assert (v.accepted, v.stage) == (False, "ocsp")
    assert "does not echo the nonce" in v.reason
    assert up.ocsp_requests[0].extensions.get_extension_for_class(ocsp.x509.OCSPNonce)


@pytest.mark.parametrize(
    ("mode", "stage", "reason"),
    [
        ("ocsp-down", "ocsp", "HTTP 503"),
        ("ocsp-wrong-cert", "ocsp", "does not name"),
        ("rim-missing", "measurements", "HTTP 404"),
        ("rim-garbled", "measurements", "malformed"),
    ],
)
def test_online_failures(
    upstream: tuple[Upstream, str], mode: str, stage: str, reason: str
) -> None:
    up, url = upstream
    up.mode = mode
    v = evaluate_gpu(GpuEvidence(REPORT, CHAIN), NONCE, policy(url), AT)
    assert (v.accepted, v.stage) == (False, stage)
    assert reason in v.reason


def test_unreachable_services_reject() -> None:
    v = evaluate_gpu(GpuEvidence(REPORT, CHAIN), NONCE, policy("http://127.0.0.1:9"), AT)
    assert (v.accepted, v.stage) == (False, "ocsp")
    assert "unreachable" in v.reason


def test_policy_from_dict_online_and_offline(upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    online = GpuPolicy.from_dict({"rim": {"url": url}, "ocsp": {"url": url, "nonce": False}})
    assert evaluate_gpu(GpuEvidence(REPORT, CHAIN), NONCE, online, AT).accepted
    offline = GpuPolicy.from_dict(
        {
            "trusted_roots": ["nvidia"],
            "rim": {"dir": "rim"},
            "ocsp": {
                "files": [f"ocsp/{p.name}" for p in (GPU / "go-nvattest-tools/ocsp").iterdir()]
            },
        },
        base_dir=GPU / "go-nvattest-tools",
    )
    assert evaluate_gpu(GpuEvidence(REPORT, CHAIN), NONCE, offline, AT).accepted
