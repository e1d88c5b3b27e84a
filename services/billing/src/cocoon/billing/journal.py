"""A file-backed, append-only journal of ledger entries (one JSON line each, fsynced).

A stand-in for the Kafka ledger topic when billing runs alone (the payout daemon, tests, local
tools): `engine.replay(journal.entries(), ...)` after a crash restores the exact state. A torn
last line (the process died mid-write, so the entry was never acknowledged) is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from cocoon.billing.ledger import Entry


class FileJournal:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._file = self.path.open("a", encoding="utf-8")

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, entry: Entry) -> None:
        self._file.write(entry.to_json() + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    __call__ = append  # usable directly as an engine sink

    def entries(self) -> Iterator[Entry]:
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield Entry.from_json(line)

    def close(self) -> None:
        self._file.close()
