#!/usr/bin/env bash
# Build a virtualenv holding exactly one Cocoon service: its locked third-party dependencies
# (from uv.lock, hash-checked), then the workspace distributions it depends on (cocoon-core, and
# cocoon-client for a client of the network such as the Telegram bot, or for the gateway's
# Responses API translation) and itself, not editable.
#   install-service.sh SERVICE VENV [PYTHON]
# Run from the repository root. The Dockerfile runs it for each image; tests/deploy runs it to
# check what an image holds without a Docker engine.
set -euo pipefail
service="$1" venv="$2" python="${3:-python3}"
requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
uv export --quiet --frozen --no-dev --no-emit-workspace --no-header \
  --package "cocoon-$service" -o "$requirements"
uv venv --quiet --python "$python" "$venv"
uv pip install --quiet --python "$venv/bin/python" --require-hashes -r "$requirements"
# The workspace members the lock says this service needs, as local paths (./services/...).
members=$(uv export --quiet --frozen --no-dev --no-header --no-hashes --no-editable \
  --package "cocoon-$service" | grep '^\./services/')
# shellcheck disable=SC2086  # one path per word
uv pip install --quiet --python "$venv/bin/python" --no-deps $members
"$venv/bin/cocoon" --help > /dev/null
