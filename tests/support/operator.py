"""What exists in a cluster before `helm install cocoon` and is not the chart's: the Secrets an
operator creates by hand (docs/deployment.md, "Secrets to create"), and those Strimzi's user
operator writes for each KafkaUser, from a CA this test made (support.pki).
"""

from __future__ import annotations

import hashlib
import json
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.pki import TestCA

# Secret (or ConfigMap) name -> what docs/deployment.md tells the operator to put in it.
OPERATOR_SECRETS = (
    "cocoon-attestation-signing-key",
    "cocoon-ton-wallet",
    "cocoon-ton-api",
    "cocoon-api-keys",
)
OPERATOR_CONFIG_MAPS = ("cocoon-attestation-public-key", "cocoon-registry-public-key")


def attestation_key() -> tuple[bytes, str]:
    """An Ed25519 signing key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it)
    and its public key in hex (what the gateway, scheduler and billing pin)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return pem, public.hex()


def api_keys_json(account: str) -> tuple[str, bytes]:
    """One API key for `account` and the gateway's key store holding only its hash."""
    key_id = secrets.token_hex(6)
    key = f"sk-cocoon-{key_id}-{secrets.token_urlsafe(32)}"
    record = {
        "key_id": key_id,
        "account_id": account,
        "key_hash": hashlib.sha256(key.encode()).hexdigest(),
        "name": account,
        "revoked": False,
    }
    return key, json.dumps([record]).encode()


def operator_objects() -> tuple[dict[str, dict[str, bytes]], dict[str, dict[str, bytes]]]:
    """(Secrets, ConfigMaps) an operator creates before installing the chart, keys generated."""
    pem, public_hex = attestation_key()
    _, store = api_keys_json("first-customer")
    found = {
        "cocoon-attestation-signing-key": {"signing-key.pem": pem},
        "cocoon-ton-wallet": {"wallet-key": secrets.token_bytes(32).hex().encode()},
        "cocoon-ton-api": {
            "url": b"https://testnet.toncenter.com/api/v2",
            "api-key": secrets.token_hex(16).encode(),
        },
        "cocoon-api-keys": {"api-keys.json": store},
    }
    assert set(found) == set(OPERATOR_SECRETS)
    # The registry key's private half stays with the operator: only its public half is here.
    _, registry_hex = attestation_key()
    config_maps = {
        "cocoon-attestation-public-key": {"public-key": public_hex.encode()},
        "cocoon-registry-public-key": {"public-key": registry_hex.encode()},
    }
    assert set(config_maps) == set(OPERATOR_CONFIG_MAPS)
    return found, config_maps


def strimzi_secrets(
    ca: TestCA, users: list[dict], cluster_cas: bytes = b""
) -> dict[str, dict[str, bytes]]:
    """The cluster CA Secret and one Secret per KafkaUser, with the keys Strimzi writes: a
    certificate for `tls` users, a password for `scram-sha-512` ones. `cluster_cas`: more CA
    certificates the cluster's listeners use (a local broker's SCRAM listener has its own)."""
    out = {"cocoon-cluster-ca-cert": {"ca.crt": ca.cert_pem + cluster_cas}}
    for user in users:
        name = user["metadata"]["name"]
        if user["spec"]["authentication"]["type"] == "scram-sha-512":
            password = secrets.token_urlsafe(24)
            jaas = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{name}" password="{password}";'
            )
            out[name] = {"password": password.encode(), "sasl.jaas.config": jaas.encode()}
            continue
        issued = ca.issue(name)
        out[name] = {
            "ca.crt": ca.cert_pem,
            "user.crt": issued.cert_pem,
            "user.key": issued.key_pem,
            "user.password": secrets.token_urlsafe(12).encode(),
        }
    return out


def scram_passwords(secrets_by_name: dict[str, dict[str, bytes]]) -> dict[str, str]:
    """What Strimzi's user operator sets in the cluster for each SCRAM KafkaUser's Secret."""
    return {
        name: keys["password"].decode()
        for name, keys in secrets_by_name.items()
        if "password" in keys
    }
