"""The worker configuration file: written by `cocoon worker init`, read by `cocoon worker run`.

It is a worker-proxy settings file (TOML, the field names of `Settings`), so the same file also
works with `cocoon run worker-proxy --config FILE` and in the chart. `init` checks each value
up front, with an error an owner can act on, so that a typo in a payout address is refused here
rather than paid to nobody.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cocoon.core.paths import cache_dir
from cocoon.core.ton_address import TonAddressError, parse_ton_address
from cocoon.worker_proxy.service import WORKER_ID_RE


class WorkerConfigError(ValueError):
    """A value `cocoon worker init` refuses; the message says which and why."""


def default_config_path() -> Path:
    return cache_dir() / "worker" / "worker.toml"


def receipts_path_beside(config: Path, worker_id: str) -> Path:
    """Where the worker keeps its signed receipts: next to its configuration."""
    return config.absolute().parent / f"receipts-{worker_id}.jsonl"


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    payout_address: str  # as the owner typed it; validated in `check`
    model: str
    engine_url: str
    coefficient: int
    max_active_requests: int | None  # None: asked from the engine at start
    kafka_bootstrap: str
    receipts_file: str

    def check(self) -> list[str]:
        """Warnings worth showing (the address is usable but may not be what the owner meant);
        raises WorkerConfigError for a value the worker could not run with."""
        if not WORKER_ID_RE.match(self.worker_id):
            raise WorkerConfigError(
                f"worker id {self.worker_id!r}: use 1-63 lowercase letters, digits and '-', "
                "starting with a letter or digit (it names the worker's Kafka topic)"
            )
        try:
            address = parse_ton_address(self.payout_address)
        except TonAddressError as exc:
            raise WorkerConfigError(f"payout address: {exc}") from None
        if not self.model.strip():
            raise WorkerConfigError("model: give the model id the registry allows")
        if not self.engine_url.startswith(("http://", "https://")):
            raise WorkerConfigError(
                f"engine URL {self.engine_url!r}: an OpenAI base URL, e.g. http://127.0.0.1:8080/v1"
            )
        if self.coefficient < 1:
            raise WorkerConfigError("coefficient: 1000 means 1.0x the price list; at least 1")
        if self.max_active_requests is not None and not 1 <= self.max_active_requests <= 1024:
            raise WorkerConfigError("capacity: between 1 and 1024 concurrent requests")
        warnings = []
        if address.workchain == -1:
            warnings.append("the address is on the masterchain (-1); wallets live on 0")
        if address.testnet_only:
            warnings.append("the address is flagged testnet-only")
        if address.bounceable:
            warnings.append(
                "the address is in bounceable form; payouts are sent non-bounceable anyway, "
                "so an undeployed wallet keeps them"
            )
        return warnings

    def to_toml(self) -> str:
        # Flat strings and integers only: a JSON string literal is a valid TOML basic string.
        lines = ["# Cocoon worker configuration (cocoon worker init); worker-proxy settings"]
        for key, value in vars(self).items():
            if value is None:
                continue  # unset: the worker-proxy's default applies
            lines.append(f"{key} = {json.dumps(value) if isinstance(value, str) else value}")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_toml())
