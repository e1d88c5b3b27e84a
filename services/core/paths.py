"""Where the project keeps its contracts and its local caches."""

from __future__ import annotations

import os
from pathlib import Path

# services/core/paths.py -> repo root is two levels above the `services` package.
REPO_ROOT = Path(__file__).resolve().parents[2]


def schemas_dir() -> Path:
    """The contracts directory (`schemas/`), overridable for packaged deployments."""
    return Path(os.environ.get("COCOON_SCHEMAS_DIR", REPO_ROOT / "schemas"))


def cache_dir() -> Path:
    """The project cache (broker jars, broker data, engine files); created on first use."""
    path = Path(os.environ.get("COCOON_CACHE_DIR", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
