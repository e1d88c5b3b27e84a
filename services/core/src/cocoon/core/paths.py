"""Where the project keeps its contracts and its local caches."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def _find_checkout() -> Path | None:
    """The source checkout this package runs from (editable install), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / ".ci" / "cocoon").is_file() and (parent / "schemas").is_dir():
            return parent
    return None


# The repository root when running from a checkout; None in an installed image.
CHECKOUT: Path | None = _find_checkout()


def schemas_dir() -> Path:
    """The contracts (`schemas/`): shipped inside the `cocoon.core` wheel, overridable."""
    override = os.environ.get("COCOON_SCHEMAS_DIR")
    if override:
        return Path(override)
    return Path(str(files("cocoon.core") / "schemas"))


def cache_dir() -> Path:
    """The project cache (broker jars, broker data, engine files); created on first use.

    `COCOON_CACHE_DIR`, else `.cache` in the checkout, else `~/.cache/cocoon`.
    """
    override = os.environ.get("COCOON_CACHE_DIR")
    if override:
        path = Path(override)
    elif CHECKOUT is not None:
        path = CHECKOUT / ".cache"
    else:
        path = Path.home() / ".cache" / "cocoon"
    path.mkdir(parents=True, exist_ok=True)
    return path
