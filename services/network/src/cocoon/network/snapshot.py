"""What `cocoon status` shows: the compacted state topics, read once from the beginning."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.contracts import Topic


@dataclass
class Snapshot:
    verdicts: dict[str, dict] = field(default_factory=dict)
    heartbeats: dict[str, dict] = field(default_factory=dict)
    balance_rows: dict[str, dict] = field(default_factory=dict)

    def on_record(self, record: BroadcastRecord) -> None:
        table = {
            Topic.ATTESTATION_VERDICTS: self.verdicts,
            Topic.WORKER_HEARTBEATS: self.heartbeats,
            Topic.BILLING_BALANCES: self.balance_rows,
        }[record.topic]
        if record.key is None:
            return
        if record.value is None:
            table.pop(record.key, None)
        else:
            table[record.key] = record.value

    @property
    def workers(self) -> list[tuple[str, ...]]:
        rows = []
        for worker_id in sorted(set(self.verdicts) | set(self.heartbeats)):
            verdict = self.verdicts.get(worker_id, {})
            beat = self.heartbeats.get(worker_id, {})
            expires = verdict.get("expires_at")
            rows.append(
                (
                    worker_id,
                    str(verdict.get("status", "none")),
                    expires.strftime("%H:%M:%S") if expires else "-",
                    ", ".join(verdict.get("models") or beat.get("models") or []),
                    str(beat.get("state", "silent")),
                    f"{beat.get('active_requests', 0)}/{beat.get('max_active_requests', 0)}"
                    if beat
                    else "-",
                )
            )
        return rows

    @property
    def balances(self) -> list[tuple[str, ...]]:
        return [
            (account, f"{row['available_nanoton']:,}", f"{row['held_nanoton']:,}")
            for account, row in sorted(self.balance_rows.items())
        ]


async def take_snapshot(bootstrap: str, heartbeat_window_s: float = 3.0) -> Snapshot:
    snapshot = Snapshot()
    compacted = BroadcastReader(
        bootstrap,
        [Topic.ATTESTATION_VERDICTS, Topic.BILLING_BALANCES],
        snapshot.on_record,
        from_beginning=True,
    )
    # Heartbeats are not compacted: listen for a couple of beats instead of replaying history.
    beats = BroadcastReader(
        bootstrap, [Topic.WORKER_HEARTBEATS], snapshot.on_record, from_beginning=False
    )
    await compacted.start()
    await beats.start()
    tasks = [asyncio.create_task(compacted.run()), asyncio.create_task(beats.run())]
    try:
        started = time.monotonic()
        await compacted.wait_caught_up(timeout_s=15)
        await asyncio.sleep(max(0.0, heartbeat_window_s - (time.monotonic() - started)))
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await compacted.stop()
        await beats.stop()
    return snapshot
