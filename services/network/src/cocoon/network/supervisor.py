"""Runs the local network's processes and guarantees none outlives `cocoon up`.

Each child gets its own process group so a Ctrl-C in the terminal reaches only the supervisor,
which then stops children in reverse start order: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's environment

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Supervisor:
    log_dir: Path
    grace_s: float = 10.0
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        child = Child(name, process, log_path, tuple(argv), dict(env or {}))
        self.children.append(child)
        return child

    def child(self, name: str) -> Child:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def signal(self, name: str, sig: int) -> None:
        """Send `sig` (e.g. SIGSTOP, SIGCONT, SIGKILL) to the child's process group."""
        _signal_group(self.child(name).process.pid, sig)

    def respawn(self, name: str) -> Child:
        """Kill the child if it still runs and start it again with the same command."""
        old = self.child(name)
        _signal_group(old.process.pid, signal.SIGKILL)
        old.process.wait()
        self.children.remove(old)
        return self.spawn(name, old.argv, old.env)

    def dead_children(self) -> list[Child]:
        return [child for child in self.children if not child.alive]

    def stop_all(self) -> None:
        for child in reversed(self.children):
            _signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in reversed(self.children):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait()
            # Grandchildren left in the group (e.g. an engine a service started) go too.
            _signal_group(child.process.pid, signal.SIGKILL)
        self.children.clear()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
