"""Worker identity: an Ed25519 signing key and HPKE keys (X25519 and hybrid ML-KEM-768+X25519).

The private half is generated inside the (simulated) TEE and never serialised; the public half
(`WorkerPublicKeys`) goes into the attestation claims, with the same field names and byte layout
as `cocoon.attestation.claims.Claims` so the gateway can build one from the other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.core.crypto.errors import CryptoError

ED25519_LEN = 32
X25519_LEN = 32
MLKEM768_LEN = 1184
MLKEM768_X25519_LEN = MLKEM768_LEN + X25519_LEN  # ML-KEM-768 encapsulation key ‖ X25519


class HpkeSuite(enum.StrEnum):
    """HPKE suites a request can be sealed with; the value is what travels in `hpke_suite`."""

    X25519 = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305"
    MLKEM768_X25519 = "MLKEM768-X25519/HKDF-SHA256/ChaCha20Poly1305"

    def suite(self) -> hpke.Suite:
        kem = hpke.KEM.X25519 if self is HpkeSuite.X25519 else hpke.KEM.MLKEM768_X25519
        return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)

    def enc_length(self) -> int:
        """Size of the encapsulated key that prefixes the single-shot ciphertext."""
        kem = hpke.KEM.X25519 if self is HpkeSuite.X25519 else hpke.KEM.MLKEM768_X25519
        return kem.enc_length()


# Post-quantum protection by default: a recorded ciphertext stays sealed against a future
# quantum adversary as long as either ML-KEM-768 or X25519 holds.
DEFAULT_SUITE = HpkeSuite.MLKEM768_X25519


def load_hpke_public_key(
    suite: HpkeSuite, raw: bytes
) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
    """The key object for a raw HPKE public key of `suite` (as a verdict carries it)."""
    try:
        if suite is HpkeSuite.X25519:
            return x25519.X25519PublicKey.from_public_bytes(raw)
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_LEN]),
            x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_LEN:]),
        )
    except ValueError as exc:
        raise CryptoError(f"invalid HPKE public key for {suite.value}: {exc}") from None


class SingleHpkeKey:
    """One attested HPKE public key (a verdict's), usable where `seal_request` wants keys."""

    def __init__(self, suite: HpkeSuite, raw: bytes) -> None:
        self.suite = HpkeSuite(suite)
        self._key = load_hpke_public_key(self.suite, raw)

    def hpke_public_key(
        self, suite: HpkeSuite
    ) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
        if HpkeSuite(suite) is not self.suite:
            raise CryptoError(f"this worker attested a {self.suite.value} key, not {suite}")
        return self._key


@dataclass(frozen=True)
class WorkerPublicKeys:
    """The public identity a worker attests to (raw bytes, layouts as in the claims)."""

    signing_key: bytes  # Ed25519, 32 bytes
    hpke_x25519: bytes  # X25519, 32 bytes
    hpke_mlkem768_x25519: bytes  # ML-KEM-768 encapsulation key (1184) ‖ X25519 (32)

    def __post_init__(self) -> None:
        for name, size in (
            ("signing_key", ED25519_LEN),
            ("hpke_x25519", X25519_LEN),
            ("hpke_mlkem768_x25519", MLKEM768_X25519_LEN),
        ):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise CryptoError(f"{name} must be {size} bytes")

    def hpke_public_key(
        self, suite: HpkeSuite
    ) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
        """The cryptography key object HPKE encrypts to under `suite`."""
        raw = self.hpke_x25519 if suite is HpkeSuite.X25519 else self.hpke_mlkem768_x25519
        return load_hpke_public_key(suite, raw)

    def to_dict(self) -> dict[str, str]:
        return {
            "signing_key": self.signing_key.hex(),
            "hpke_x25519": self.hpke_x25519.hex(),
            "hpke_mlkem768_x25519": self.hpke_mlkem768_x25519.hex(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerPublicKeys:
        try:
            return cls(
                bytes.fromhex(data["signing_key"]),
                bytes.fromhex(data["hpke_x25519"]),
                bytes.fromhex(data["hpke_mlkem768_x25519"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CryptoError(f"bad worker public keys: {exc!r}") from None


class WorkerKeys:
    """A worker's private keys; create with `WorkerKeys.generate()` inside the TEE."""

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        x25519_key: x25519.X25519PrivateKey,
        mlkem_key: mlkem.MLKEM768PrivateKey,
        hybrid_x25519_key: x25519.X25519PrivateKey,
    ) -> None:
        self.signing_key = signing_key
        self._x25519 = x25519_key
        # The hybrid suite gets its own X25519 key so the two suites never share key material.
        self._hybrid = hpke.MLKEM768X25519PrivateKey(mlkem_key, hybrid_x25519_key)
        self._public = WorkerPublicKeys(
            signing_key=signing_key.public_key().public_bytes_raw(),
            hpke_x25519=x25519_key.public_key().public_bytes_raw(),
            hpke_mlkem768_x25519=mlkem_key.public_key().public_bytes_raw()
            + hybrid_x25519_key.public_key().public_bytes_raw(),
        )

    @classmethod
    def generate(cls) -> WorkerKeys:
        return cls(
            Ed25519PrivateKey.generate(),
            x25519.X25519PrivateKey.generate(),
            mlkem.MLKEM768PrivateKey.generate(),
            x25519.X25519PrivateKey.generate(),
        )

    @property
    def public(self) -> WorkerPublicKeys:
        return self._public

    def hpke_private_key(
        self, suite: HpkeSuite
    ) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
        return self._x25519 if suite is HpkeSuite.X25519 else self._hybrid

    def __repr__(self) -> str:  # never print private material
        return f"WorkerKeys(signing_key={self._public.signing_key.hex()[:16]}...)"
