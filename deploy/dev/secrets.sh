#!/usr/bin/env bash
# The Secrets and ConfigMap the dev environment needs, with fresh keys, as manifests on stdout
# (Tilt pipes them to `kubectl apply`; tests/deploy/test_boot.py boots the dev pods with them):
#   cocoon-attestation-signing-key  the attestation service's Ed25519 verdict key (PKCS#8 PEM)
#   cocoon-attestation-public-key   its public key in hex (ConfigMap), pinned by the gateway,
#                                   scheduler and billing
#   cocoon-registry-public-key      the registry key's public half in hex (ConfigMap), pinned
#                                   by the attestation service and told to clients by the gateway
#   cocoon-api-keys                 the gateway's key store with one key for account `dev`
#                                   (funded by the dev values' COCOON_DEV_GRANTS)
# The API key itself is printed on stderr, once: only its hash is stored. The registry key's
# private half never enters the cluster: it is kept (made once, then reused) at
# $COCOON_REGISTRY_KEY_FILE, else .cache/attestation/registry-key.pem in this checkout, where
# `cocoon registry` signs with it.
# Needs openssl, sha256sum and kubectl (no cluster: --dry-run=client).
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

openssl genpkey -algorithm ed25519 -out "$work/signing-key.pem" 2>/dev/null
# The raw 32-byte public key is the tail of its DER SubjectPublicKeyInfo.
public_hex="$(openssl pkey -in "$work/signing-key.pem" -pubout -outform DER | tail -c 32 \
  | od -An -v -tx1 | tr -d ' \n')"

registry_key="${COCOON_REGISTRY_KEY_FILE:-$(dirname "$0")/../../.cache/attestation/registry-key.pem}"
if [ ! -f "$registry_key" ]; then
  mkdir -p "$(dirname "$registry_key")"
  (umask 077 && openssl genpkey -algorithm ed25519 -out "$registry_key" 2>/dev/null)
fi
registry_hex="$(openssl pkey -in "$registry_key" -pubout -outform DER | tail -c 32 \
  | od -An -v -tx1 | tr -d ' \n')"

key_id="$(openssl rand -hex 6)"
secret="$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n')"
api_key="sk-cocoon-${key_id}-${secret}"
key_hash="$(printf '%s' "$api_key" | sha256sum | cut -d' ' -f1)"
printf '[{"key_id": "%s", "account_id": "dev", "key_hash": "%s", "name": "dev", "revoked": false}]\n' \
  "$key_id" "$key_hash" > "$work/api-keys.json"

kubectl create secret generic cocoon-attestation-signing-key \
  --from-file=signing-key.pem="$work/signing-key.pem" --dry-run=client -o yaml
echo ---
kubectl create configmap cocoon-attestation-public-key \
  --from-literal=public-key="$public_hex" --dry-run=client -o yaml
echo ---
kubectl create configmap cocoon-registry-public-key \
  --from-literal=public-key="$registry_hex" --dry-run=client -o yaml
echo ---
kubectl create secret generic cocoon-api-keys \
  --from-file=api-keys.json="$work/api-keys.json" --dry-run=client -o yaml
echo "dev API key (account dev): $api_key" >&2
