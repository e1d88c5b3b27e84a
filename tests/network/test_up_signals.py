"""`cocoon up` stops everything it started on SIGTERM, SIGHUP and Ctrl-C, even when launched
from a shell that ignores SIGINT (a background job). The process below runs the same
`stop_on_signals()` and try/finally shape as `cocoon up`, around a real child process instead of
the whole network (which takes a minute to start; tests/e2e runs that)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import subprocess, sys, time
    from cocoon.network.cli import stop_on_signals

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stop_on_signals()
    try:
        print(child.pid, flush=True)
        while True:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        child.terminate()
        child.wait(10)
        print("stopped", flush=True)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\\n")[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_the_children_too(sig):
    # SIGINT ignored on the way in, as a non-interactive shell does for `cocoon up &`.
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    child = int(proc.stdout.readline())
    try:
        assert _alive(child)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
        assert "stopped" in out
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:  # a failed run must not leave either process behind
        proc.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
