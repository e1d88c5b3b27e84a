"""GPU confidential-computing evidence from NVIDIA's driver, bound to the worker's claims.

    COCOON_GPU_EVIDENCE=nvml     (default `none`: the evidence carries no GPU part)

What NVIDIA's own verifier (nvtrust, `nv-local-gpu-verifier`) collects, through the same NVML
calls of the `nvidia-ml-py` bindings:

* `nvmlSystemGetConfComputeState`: CC mode must be on and developer-tools mode off (a GPU in
  dev-tools mode is debuggable and attests as such);
* `nvmlSystemGetConfComputeGpusReadyState`: the GPUs accept work only after the guest marked
  them ready (`nvidia-smi conf-compute -srs 1`, once the driver is loaded);
* `nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)`: the SPDM GET_MEASUREMENTS
  request and the signed MEASUREMENTS response, over our 32-byte nonce;
* `nvmlDeviceGetConfComputeGpuCertificate(handle)`: `attestationCertChain`, the PEM chain from
  the GPU's attestation key to NVIDIA's device identity root.

The nonce is `gpu_nonce(claims)` (cocoon.core.gpu_evidence), so the report is bound to the same
keys, model and freshness as the TDX quote; the attestation service verifies it with
`cocoon.attestation.gpu` (docs/attestation.md, "GPU evidence"). One GPU per worker.

This has NOT run on a GPU here: it is tested against a fake NVML (tests/support/fake_nvml.py)
built on the bindings' own structures and errors, signing with a synthetic chain.
"""

from __future__ import annotations

import importlib
from typing import Any

from cocoon.core.gpu_evidence import encode_gpu_evidence, gpu_nonce


class GpuEvidenceUnavailable(RuntimeError):
    """The GPU cannot give evidence; the message says what to fix."""


def _bindings() -> Any:
    return importlib.import_module("pynvml")  # nvidia-ml-py's module


def collect_gpu_evidence(claims: bytes, *, nvml: Any | None = None, index: int = 0) -> bytes:
    """The `cocoon/gpu-evidence/v1` container of GPU `index`'s report over gpu_nonce(claims)."""
    nvml = _bindings() if nvml is None else nvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise GpuEvidenceUnavailable(f"NVIDIA driver not usable (NVML: {exc})") from None
    try:
        return _collect(nvml, claims, index)
    except nvml.NVMLError as exc:
        raise GpuEvidenceUnavailable(f"NVML: {exc}") from None
    finally:
        nvml.nvmlShutdown()


def _collect(nvml: Any, claims: bytes, index: int) -> bytes:
    state = nvml.nvmlSystemGetConfComputeState()
    if state.ccFeature != nvml.NVML_CC_SYSTEM_FEATURE_ENABLED:
        raise GpuEvidenceUnavailable(
            "confidential computing is off: set the GPU's CC mode on the host "
            "(gpu-admin-tools --set-cc-mode=on) before passing it through"
        )
    if state.devToolsMode != nvml.NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF:
        raise GpuEvidenceUnavailable("the GPU is in developer-tools mode, which is debuggable")
    if nvml.nvmlSystemGetConfComputeGpusReadyState() != nvml.NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE:
        raise GpuEvidenceUnavailable(
            "the GPU is not ready for CC work: run `nvidia-smi conf-compute -srs 1` in the TD"
        )
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    nonce = gpu_nonce(claims)
    report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
    certificate = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
    return encode_gpu_evidence(
        bytes(report.attestationReport[: report.attestationReportSize]),
        bytes(certificate.attestationCertChain[: certificate.attestationCertChainSize]),
    )
