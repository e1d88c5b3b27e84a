"""The demo account `cocoon up` creates: an API key mapped to a billing account."""

from __future__ import annotations

import json
from pathlib import Path

from cocoon.core.paths import cache_dir

DEMO_ACCOUNT = "demo"


def state_dir() -> Path:
    path = cache_dir() / "network"
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_file() -> Path:
    return state_dir() / "demo.json"


def save_demo(api_key: str, gateway_url: str) -> None:
    path = demo_file()
    path.write_text(json.dumps({"api_key": api_key, "gateway_url": gateway_url}))
    path.chmod(0o600)


def load_demo() -> dict[str, str]:
    try:
        return json.loads(demo_file().read_text())
    except (OSError, ValueError):
        return {}
