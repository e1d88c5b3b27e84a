"""NVML as the NVIDIA driver answers it on an H100 in confidential-computing mode, for tests.

There is no GPU here, so `cocoon.worker_proxy.gpu_nvml` is tested against this stand-in for the
`pynvml` module (nvidia-ml-py). It is built from the bindings' own parts so that it fails where
the real one does:

* the result structures are the bindings' ctypes structures: an oversized report or chain, or
  a nonce that is not exactly 32 bytes, fails in ctypes exactly as with the driver (the nonce
  is set the way the binding sets it);
* errors are the bindings' `NVMLError` with the driver's codes: every call before `nvmlInit`
  (and after `nvmlShutdown`) is NVML_ERROR_UNINITIALIZED, an unknown GPU index
  INVALID_ARGUMENT, an attestation report while CC mode is off NOT_SUPPORTED;
* the report is what the GPU signs: an SPDM 1.1 GET_MEASUREMENTS request over the caller's
  nonce and the MEASUREMENTS response, signed by the attestation key of a synthetic chain
  (support.gpu_synth), which the attestation service verifies against that chain's root.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml
from cryptography.hazmat.primitives.serialization import Encoding
from support.gpu_synth import World, build_report

# The constants the collector reads, as the bindings define them.
NVMLError = pynvml.NVMLError
NVML_CC_SYSTEM_FEATURE_ENABLED = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
NVML_CC_SYSTEM_FEATURE_DISABLED = pynvml.NVML_CC_SYSTEM_FEATURE_DISABLED
NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF = pynvml.NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF
NVML_CC_SYSTEM_DEVTOOLS_MODE_ON = pynvml.NVML_CC_SYSTEM_DEVTOOLS_MODE_ON
NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE = pynvml.NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE
NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE = pynvml.NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE
NVML_CC_SYSTEM_ENVIRONMENT_PROD = pynvml.NVML_CC_SYSTEM_ENVIRONMENT_PROD


class FakeNvml:
    def __init__(
        self,
        world: World,
        *,
        cc_mode: bool = True,
        devtools: bool = False,
        ready: bool = True,
        gpus: int = 1,
    ) -> None:
        self.world = world
        self.cc_mode, self.devtools, self.ready, self.gpus = cc_mode, devtools, ready, gpus
        self.initialised = 0  # NVML counts nvmlInit calls; each nvmlShutdown undoes one
        self.reports_signed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(pynvml, name)  # constants and types the collector may read

    # -- lifecycle ------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._require_init()
        self.initialised -= 1

    # -- system ----------------------------------------------------------------------------
    def nvmlSystemGetConfComputeState(self) -> Any:
        self._require_init()
        state = pynvml.c_nvmlConfComputeSystemState_t()
        state.environment = NVML_CC_SYSTEM_ENVIRONMENT_PROD
        state.ccFeature = (
            NVML_CC_SYSTEM_FEATURE_ENABLED if self.cc_mode else NVML_CC_SYSTEM_FEATURE_DISABLED
        )
        state.devToolsMode = (
            NVML_CC_SYSTEM_DEVTOOLS_MODE_ON if self.devtools else NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF
        )
        return state

    def nvmlSystemGetConfComputeGpusReadyState(self) -> int:
        self._require_init()
        if not self.cc_mode:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if self.ready:
            return NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE
        return NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE

    # -- device ----------------------------------------------------------------------------
    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._require_init()
        if not 0 <= index < self.gpus:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index + 1  # an opaque handle

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, c_nonce: bytes) -> Any:
        self._require_handle(handle)
        report = pynvml.c_nvmlConfComputeGpuAttestationReport_t()
        # As the binding does: a nonce of any length but 32 bytes is a ctypes TypeError.
        setattr(report, "nonce", (ctypes.c_uint8 * len(c_nonce))(*c_nonce))  # noqa: B010
        if not self.cc_mode:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        signed = build_report(bytes(report.nonce), self.world.keys["leaf"], self.world.fwid)
        if len(signed) > len(report.attestationReport):
            raise AssertionError("a report larger than NVML's buffer")
        report.attestationReportSize = len(signed)
        ctypes.memmove(report.attestationReport, signed, len(signed))  # the driver's copy
        report.isCecAttestationReportPresent = 0
        self.reports_signed += 1
        return report

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        self._require_handle(handle)
        chain = b"".join(c.public_bytes(Encoding.PEM) for c in self.world.chain)
        certificate = pynvml.c_nvmlConfComputeGpuCertificate_t()
        if len(chain) > len(certificate.attestationCertChain):
            raise AssertionError("a chain larger than NVML's buffer")
        certificate.attestationCertChainSize = len(chain)
        ctypes.memmove(certificate.attestationCertChain, chain, len(chain))
        return certificate

    def _require_init(self) -> None:
        if self.initialised <= 0:
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _require_handle(self, handle: int) -> None:
        self._require_init()
        if not 1 <= handle <= self.gpus:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
