"""The roots a TDX quote's PCK chain may end at: Intel's SGX Root CA, pinned here, and (only
when a configuration names it) a development root such as `cocoon up`'s simulated TDX CA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cocoon.client.errors import ConfigError

INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
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


@dataclass(frozen=True)
class TrustRoot:
    name: str
    der: bytes
    development: bool = False  # the client says so on start and in every response

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    @classmethod
    def from_pem(cls, name: str, pem: bytes, *, development: bool = False) -> TrustRoot:
        try:
            der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
        except ValueError as exc:
            raise ConfigError(f"root {name!r} is not a PEM certificate: {exc}") from None
        root = cls(name, der, development)
        if root.sha256 == INTEL_ROOT_SHA256 and development:
            raise ConfigError("Intel's root cannot be marked as a development root")
        return root


INTEL_ROOT = TrustRoot.from_pem("intel-sgx-root-ca", INTEL_ROOT_PEM)
assert INTEL_ROOT.sha256 == INTEL_ROOT_SHA256, "the pinned Intel root does not match its pin"
