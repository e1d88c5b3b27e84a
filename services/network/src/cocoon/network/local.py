"""`cocoon up`: the whole network on one machine, each service its own process.

Order matters: broker and topics, then the registry entries the simulated workers need, then
attestation (it creates its signing key, which the others pin), then billing, scheduler and
gateway, then the workers with their engines. Everything started here is stopped on exit.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cocoon.core.acls import WORKER_ENROLMENT
from cocoon.core.bus.admin import apply_topics, catalog_topics
from cocoon.core.bus.principals import Credentials
from cocoon.core.bus.settings import topic_prefix
from cocoon.core.catalog import load_catalog
from cocoon.core.kafka import broker
from cocoon.core.paths import cache_dir
from cocoon.network.demo import DEMO_ACCOUNT, save_demo, state_dir
from cocoon.network.dev_chain import (
    DEFAULT_TON_PORT,
    DEV_PAYOUT_THRESHOLD_NANOTON,
    DevChain,
    start_dev_chain,
)
from cocoon.network.engine_process import (
    SMOLLM2_CONTEXT,
    SMOLLM2_MODEL,
    EngineProcess,
    smollm2_gguf_path,
    start_embedding_engine,
    start_engine,
)
from cocoon.network.minilm import MINILM_MODEL, minilm_dir
from cocoon.network.supervisor import Supervisor

DEMO_BALANCE_NANOTON = 1_000 * 10**9  # 1,000 TON of play money, granted by billing's dev grant
# What each new Telegram user of `cocoon up --telegram-token` gets to try the models with.
TELEGRAM_TRIAL_NANOTON = 1 * 10**9
Echo = Callable[[str], None]


@dataclass
class LocalNetwork:
    workers: int = 1  # chat workers (SmolLM2)
    embedding_workers: int = 1  # embedding workers (all-MiniLM-L6-v2), separate processes
    http_port: int = 8080
    grpc_port: int = 50051  # the gateway's gRPC inference API
    # More gateway instances beside the first, one HTTP port each (HTTP only): every gateway
    # serves any account and reads every answer from the bus (docs/architecture.md).
    more_gateway_ports: tuple[int, ...] = ()
    echo: Echo = print
    supervisor: Supervisor = field(default_factory=lambda: Supervisor(state_dir() / "logs"))
    engines: list[EngineProcess] = field(default_factory=list)
    bootstrap: str = ""
    started_broker: bool = False
    # account -> dev grant in nanoTON; each account gets an API key (the first is the demo's).
    grants: dict[str, int] = field(default_factory=lambda: {DEMO_ACCOUNT: DEMO_BALANCE_NANOTON})
    api_keys: dict[str, str] = field(default_factory=dict)
    # The Telegram bot's key: it may act for the accounts of Telegram users (tg-<user id>).
    telegram_api_key: str = ""
    # With a bot token, `start` also runs the Telegram bot (against telegram_api_url).
    telegram_token: str = ""
    telegram_api_url: str = "https://api.telegram.org"
    client_config_path: Path | None = None
    credentials: Credentials | None = None
    # With `ton`, billing pays workers on an emulated TON chain (cocoon.network.dev_chain).
    ton: bool = False
    ton_port: int = DEFAULT_TON_PORT
    payout_threshold: int = DEV_PAYOUT_THRESHOLD_NANOTON
    chain: DevChain | None = None

    @property
    def api_key(self) -> str:
        return self.api_keys[DEMO_ACCOUNT]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def gateways(self) -> dict[str, str]:
        """Each gateway instance's process name and URL, the first (`gateway`) first."""
        ports = (self.http_port, *self.more_gateway_ports)
        return {_gateway_name(i): f"http://127.0.0.1:{port}" for i, port in enumerate(ports)}

    # -- start ---------------------------------------------------------------------------------
    def start(self, ready_timeout_s: float = 120.0) -> None:
        self._start_broker()
        self.echo("Applying the topic catalog ...")
        # COCOON_TOPIC_PREFIX (inherited by every child) lets several networks share a broker.
        apply_topics(self.bootstrap, catalog_topics(load_catalog()), prefix=topic_prefix())
        # Each process connects as its own principal, with the catalog's ACLs (docs/security.md).
        self.credentials = Credentials.for_admin(self.bootstrap, self._users_dir())
        self._register_dev_image()
        key_file = cache_dir() / "attestation" / "service-key.pem"
        common = {
            "COCOON_KAFKA_BOOTSTRAP": self.bootstrap,
            "COCOON_GRPC_HEALTH_PORT": "0",
            "COCOON_METRICS_PORT": "0",
            "COCOON_LOG_FORMAT": "human",
        }
        self._spawn_service(
            "attestation",
            {
                **common,
                "COCOON_DEV_SIMTDX": "true",
                "COCOON_SERVICE_KEY_FILE": str(key_file),
                # Workers hold only the enrolment principal; trust brings their own credential.
                "COCOON_ISSUE_WORKER_CREDENTIALS": str(self.credentials is not None).lower(),
            },
        )
        public_key_file = key_file.with_suffix(".pub")
        self._wait_for(public_key_file.exists, "the attestation service key", 30)
        pinned = {**common, "COCOON_ATTESTATION_PUBLIC_KEY_FILE": str(public_key_file)}
        grants = ",".join(f"{account}={amount}" for account, amount in self.grants.items())
        billing = {**pinned, "COCOON_DEV_GRANTS": grants}
        if self.ton:
            self.echo("Starting the emulated TON chain ...")
            self.chain = start_dev_chain(
                state_dir() / "ton", port=self.ton_port, payout_threshold=self.payout_threshold
            )
            billing.update(self.chain.billing_env)
        self._spawn_service("billing", billing)
        self._spawn_service("scheduler", pinned)
        self._create_keys()
        gateway = {**pinned, "COCOON_REGISTRY_PUBLIC_KEY": _registry_public_key_hex()}
        self._spawn_service(
            "gateway",
            {
                **gateway,
                "COCOON_HTTP_PORT": str(self.http_port),
                "COCOON_INFERENCE_GRPC_PORT": str(self.grpc_port),
                "COCOON_GATEWAY_ID": "gw-local",
            },
        )
        for index, port in enumerate(self.more_gateway_ports, start=1):
            name = _gateway_name(index)
            self._spawn_service(
                "gateway",
                {**gateway, "COCOON_HTTP_PORT": str(port), "COCOON_GATEWAY_ID": f"gw-{name}"},
                label=name,
                principal="gateway",
            )
        for index in range(self.workers):
            self._start_worker(index, common)
        for index in range(self.embedding_workers):
            self._start_embedding_worker(index, common)
        self._wait_for(self._model_listed, "the first attested worker", ready_timeout_s)
        if self.embedding_workers:
            self._wait_for(
                lambda: self._model_listed(1, MINILM_MODEL),
                "the first attested embedding worker",
                ready_timeout_s,
            )
        save_demo(self.api_key, self.gateway_url)
        self.client_config_path = write_dev_client_config(self.gateway_url)
        if self.telegram_token:  # a client of the network: after its client configuration
            self.start_telegram(self.telegram_token, common)

    def start_telegram(self, token: str, common: dict[str, str]) -> None:
        """Run the Telegram bot (docs/telegram.md) as a client of this network."""
        secrets_dir = state_dir() / "telegram"
        secrets_dir.mkdir(parents=True, exist_ok=True)
        files = {"token": token, "gateway-key": self.telegram_api_key}
        for name, value in files.items():
            path = secrets_dir / name
            path.write_text(value)
            path.chmod(0o600)
        self._spawn_service(
            "telegram",
            {
                **common,
                "COCOON_TELEGRAM_TOKEN_FILE": str(secrets_dir / "token"),
                "COCOON_TELEGRAM_API_URL": self.telegram_api_url,
                "COCOON_GATEWAY_URL": self.gateway_url,
                "COCOON_GATEWAY_API_KEY_FILE": str(secrets_dir / "gateway-key"),
                "COCOON_TELEGRAM_TRIAL_NANOTON": str(TELEGRAM_TRIAL_NANOTON),
                "COCOON_TELEGRAM_CLIENT_CONFIG_FILE": str(self.client_config_path),
            },
        )

    def _start_broker(self) -> None:
        external = os.environ.get("COCOON_KAFKA_BOOTSTRAP")
        if external:
            self.bootstrap = external
            return
        layout = broker.default_layout()
        running = broker.read_pid(layout) is not None
        self.echo("Starting Kafka ..." if not running else "Kafka is already running")
        self.bootstrap = broker.start(layout, echo=self.echo)
        self.started_broker = not running

    def _users_dir(self) -> Path:
        """Where the principals' passwords live: with the local broker's secrets (shared with
        `cocoon topics apply`), or this network's state for an external broker."""
        if os.environ.get("COCOON_KAFKA_BOOTSTRAP"):
            return state_dir() / "kafka-users"
        return broker.default_layout().secrets.users_dir

    def _register_dev_image(self) -> None:
        """Allow the simulated TDX image and the local model and set the network's prices (100
        nanoTON per adjusted token, 80 to the worker), as an operator would."""
        from cocoon.attestation.simtdx import DEFAULT_MEASUREMENTS  # the dev image's registers

        image = DEFAULT_MEASUREMENTS.image_hash().hex()
        model_hash = _sha256_file(smollm2_gguf_path())
        embedder_hash = _sha256_file(minilm_dir() / "model.safetensors")
        prices = ["--price-per-token", "100", "--worker-fee-per-token", "80"]
        for args in (
            ["add-image", image],
            ["add-model", SMOLLM2_MODEL, model_hash],
            ["add-model", MINILM_MODEL, embedder_hash],
            ["set-prices", *prices],
        ):
            _cocoon("registry", *args, "--bootstrap", self.bootstrap)

    def _create_keys(self) -> None:
        from cocoon.gateway.api.keys import KeyStore

        keys_file = cache_dir() / "gateway" / "api-keys.json"
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        store = KeyStore.load(keys_file) if keys_file.exists() else KeyStore()
        for account in self.grants:
            self.api_keys[account] = store.create(account, name="cocoon up")
        self.telegram_api_key = store.create(
            "telegram-bot", name="cocoon up: telegram bot", delegate_prefix="tg-"
        )
        store.save(keys_file)

    def _spawn_service(
        self, service: str, env: dict[str, str], label: str = "", principal: str = ""
    ) -> None:
        self.echo(f"Starting {label or service} ...")
        argv = [sys.executable, "-m", "cocoon.core.runtime", service]
        own = self._principal_env(principal or service)
        self.supervisor.spawn(label or service, argv, {**env, **own})

    def _principal_env(self, holder: str) -> dict[str, str]:
        """The holder's own Kafka principal; nothing (inherit) on a broker without SASL."""
        if self.credentials is None:
            return {}
        return self.credentials.env(holder, topic_prefix())

    def _start_worker(self, index: int, common: dict[str, str]) -> None:
        worker_id = f"w-local-{index}"
        self.echo(f"Starting worker {worker_id} (llama.cpp engine with SmolLM2-135M on CPU) ...")
        engine = start_engine(n_ctx=SMOLLM2_CONTEXT, log_dir=state_dir() / "logs")
        self.engines.append(engine)
        self._spawn_worker(
            worker_id,
            engine,
            common,
            # llama.cpp's grammar-constrained tool calls (docs/api.md, "Tool calling").
            capabilities='["CHAT", "TOOLS"]',
            context_length=SMOLLM2_CONTEXT,
        )

    def _start_embedding_worker(self, index: int, common: dict[str, str]) -> None:
        worker_id = f"w-local-embed-{index}"
        self.echo(f"Starting worker {worker_id} (all-MiniLM-L6-v2 embeddings on CPU) ...")
        engine = start_embedding_engine(log_dir=state_dir() / "logs")
        self.engines.append(engine)
        self._spawn_worker(
            worker_id, engine, common, capabilities='["EMBEDDINGS"]', context_length=256
        )

    def _spawn_worker(
        self,
        worker_id: str,
        engine: EngineProcess,
        common: dict[str, str],
        *,
        capabilities: str,
        context_length: int,
    ) -> None:
        self._spawn_service(
            "worker-proxy",
            {
                **common,
                "COCOON_WORKER_ID": worker_id,
                "COCOON_MODEL": engine.model,
                "COCOON_ENGINE_URL": engine.base_url,
                "COCOON_CAPABILITIES": capabilities,
                "COCOON_CONTEXT_LENGTH": str(context_length),
                "COCOON_AWAIT_CREDENTIAL": str(self.credentials is not None).lower(),
            },
            label=worker_id,
            # As a GPU host would: it can enrol, and only the enclave can open what trust brings.
            principal=WORKER_ENROLMENT,
        )

    def _model_listed(
        self, workers: int = 1, model: str = SMOLLM2_MODEL, gateway_url: str = ""
    ) -> bool:
        try:
            response = httpx.get(
                f"{gateway_url or self.gateway_url}/v1/models",
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=2,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and any(
            m["id"] == model and m["attested_workers"] >= workers
            for m in response.json().get("data", [])
        )

    def wait_for_workers(self, ready_timeout_s: float = 120.0) -> None:
        """Wait until every gateway lists every worker as attested and alive."""
        self._wait_for(
            lambda: all(
                self._model_listed(self.workers, gateway_url=url) for url in self.gateways.values()
            ),
            "every attested worker at every gateway",
            ready_timeout_s,
        )

    def restart(self, name: str) -> None:
        """Start a process of the network again with its command and environment: a gateway, or
        a worker-proxy (new keys, new evidence, the same engine)."""
        self.echo(f"Restarting {name} ...")
        self.supervisor.respawn(name)

    def _wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            dead = self.supervisor.dead_children()
            if dead:
                raise NetworkError(
                    f"{dead[0].name} exited with code {dead[0].process.returncode} "
                    f"while waiting for {what}; see {dead[0].log_path}"
                )
            time.sleep(0.25)
        raise NetworkError(f"timed out after {timeout_s:.0f}s waiting for {what}")

    # -- workers (for failure tests and operators) -----------------------------------------------
    @property
    def worker_ids(self) -> list[str]:
        return [f"w-local-{index}" for index in range(self.workers)]

    def signal_worker(self, worker_id: str, sig: int) -> None:
        """Signal a worker's worker-proxy (not its engine): SIGSTOP freezes, SIGKILL kills it."""
        self.supervisor.signal(worker_id, sig)

    # -- run / stop ----------------------------------------------------------------------------
    def watch(self) -> None:
        """Block until a process dies (raises) or Ctrl-C (returns)."""
        try:
            while True:
                dead = self.supervisor.dead_children()
                if dead:
                    raise NetworkError(
                        f"{dead[0].name} exited with code {dead[0].process.returncode}; "
                        f"see {dead[0].log_path}"
                    )
                time.sleep(0.5)
        except KeyboardInterrupt:
            return

    def stop(self) -> None:
        self.supervisor.stop_all()
        for engine in self.engines:
            engine.stop()
        self.engines.clear()
        if self.chain is not None:
            self.chain.stop()
            self.chain = None
        if self.started_broker:
            broker.stop(broker.default_layout())


def _gateway_name(index: int) -> str:
    return "gateway" if index == 0 else f"gateway-{index}"


class NetworkError(RuntimeError):
    pass


def write_dev_client_config(gateway_url: str) -> Path:
    """The client configuration for this development network, for its gateway only: the
    registry key `cocoon registry` signs with, and the simulated TDX root, marked as a
    development root (the client says so on start and in every response)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from cocoon.attestation.registry_signing import load_registry_key
    from cocoon.attestation.simtdx import SimTdx
    from cocoon.client.config import ClientConfig, gateway_config_path, write_config
    from cocoon.client.roots import INTEL_ROOT, TrustRoot

    sim = SimTdx.load_or_create()
    root = TrustRoot.from_pem(
        "cocoon-up-simulated-tdx", sim.root_cert.public_bytes(Encoding.PEM), development=True
    )
    config = ClientConfig(
        load_registry_key(create=False).public, (INTEL_ROOT, root), gateway=gateway_url
    )
    path = gateway_config_path(gateway_url)
    write_config(path, config)
    return path


def _registry_public_key_hex() -> str:
    """The key `cocoon registry` signed the dev entries with (made by `_register_dev_image`)."""
    from cocoon.attestation.registry_signing import load_registry_key

    return load_registry_key(create=False).public.hex()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cocoon(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cocoon.core.cli", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise NetworkError(f"cocoon {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
