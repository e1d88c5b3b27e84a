"""Roots of trust for the DCAP chain: the Intel SGX Root CA, pinned, and explicit test roots."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

# Intel SGX Root CA (public certificate, as published by Intel and embedded in every PCK chain).
INTEL_ROOT_PEM = b"""-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----"""


class TrustError(ValueError):
    """A root certificate that does not match its pin."""


@dataclass(frozen=True)
class TrustAnchor:
    """A root CA the DCAP chain may end at, identified by the SHA-256 of its DER."""

    name: str
    der: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @property
    def is_intel(self) -> bool:
        return self.sha256 == INTEL_ROOT_SHA256

    @classmethod
    def from_pem(cls, name: str, pem: bytes, pin: str) -> TrustAnchor:
        """Load a root and refuse it unless its DER hashes to `pin`."""
        try:
            der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
        except ValueError as exc:
            raise TrustError(f"root {name!r} is not a PEM certificate: {exc}") from None
        anchor = cls(name, der)
        if anchor.sha256 != pin.lower():
            raise TrustError(f"root {name!r} has SHA-256 {anchor.sha256}, pinned {pin}")
        return anchor

    @classmethod
    def from_file(cls, name: str, path: str | Path, pin: str) -> TrustAnchor:
        return cls.from_pem(name, Path(path).read_bytes(), pin)


INTEL_ROOT = TrustAnchor.from_pem("intel-sgx-root-ca", INTEL_ROOT_PEM, INTEL_ROOT_SHA256)
