#!/usr/bin/env bash
# Build a virtualenv holding exactly one Cocoon service: its locked third-party dependencies
# (from uv.lock, hash-checked), then cocoon-core and the service itself, not editable.
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
uv pip install --quiet --python "$venv/bin/python" --no-deps services/core "services/$service"
"$venv/bin/cocoon" --help > /dev/null
