"""A single-node Apache Kafka 4.x broker (KRaft, combined broker and controller) on loopback.

The jars come from Maven Central through Maven, once, and are cached under the project cache.
Nothing here needs a Docker engine or the release tarball.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cocoon.core.bus.security import SASL_MECHANISM, KafkaSecurity
from cocoon.core.kafka import pki
from cocoon.core.paths import cache_dir

KAFKA_VERSION = "4.1.1"
MIN_JAVA_MAJOR = 17
_JARS_MARKER = ".complete"

LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""


class BrokerError(RuntimeError):
    """The local broker could not be provisioned, started or stopped; the message says why."""


@dataclass(frozen=True)
class BrokerTls:
    """An extra listener `SSL` that requires a client certificate (mTLS), as production's.

    `keystore`: PEM with the broker's private key (PKCS#8, unencrypted) and certificate chain;
    `truststore`: PEM of the CA that client certificates must chain to.
    """

    port: int
    keystore: Path
    truststore: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class BrokerLayout:
    """Where one broker instance keeps its configuration, data, logs and pid."""

    home: Path
    port: int = 9092
    controller_port: int = 9093
    tls: BrokerTls | None = None
    # The dev chart's unauthenticated `plain` listener, whose ANONYMOUS clients are super users
    # (deploy/helm/templates/kafka.yaml, plainListener): only the chart's boot test opens it.
    dev_plain_port: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dev_plain_bootstrap(self) -> str:
        return f"127.0.0.1:{self.dev_plain_port}"

    @property
    def secrets(self) -> pki.BrokerSecrets:
        """CA, broker certificate and SCRAM passwords, made once and kept with the data."""
        return pki.BrokerSecrets(self.home / "security")

    def admin_security(self) -> KafkaSecurity:
        """How the admin principal (a super user) connects to this broker."""
        return KafkaSecurity(
            "SASL_SSL",
            self.secrets.ca_file,
            username=pki.ADMIN,
            password=self.secrets.password(pki.ADMIN),
        )

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.home / "log4j2.properties"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def stdout_file(self) -> Path:
        return self.home / "broker.out"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` was not found on PATH. {hint}")
    return path


def check_java() -> str:
    """Return the java executable, or explain what to install."""
    java = _require_tool(
        "java", "Install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)."
    )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise BrokerError(f"Could not read the Java version from: {out.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA_MAJOR:
        raise BrokerError(
            f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA_MAJOR}+, found Java {major}."
        )
    return java


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / "kafka" / f"libs-{version}"


def ensure_jars(version: str = KAFKA_VERSION, *, echo=print) -> Path:
    """Fetch the broker's runtime classpath from Maven Central once; later calls reuse it."""
    target = jars_dir(version)
    if (target / _JARS_MARKER).exists():
        return target
    mvn = _require_tool("mvn", "Install Apache Maven (e.g. `apt-get install maven`).")
    pom = resources.files("cocoon.core.kafka").joinpath("pom.xml")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    echo(f"Fetching Apache Kafka {version} from Maven Central (once)...")
    with resources.as_file(pom) as pom_path:
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_path),
                f"-Dkafka.version={version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        raise BrokerError(f"Maven could not fetch Kafka {version}:\n{result.stdout}{result.stderr}")
    (staging / _JARS_MARKER).write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _jaas(module: str, principal: str, password: str, *, plain_users: bool = False) -> str:
    users = f' user_{principal}="{password}"' if plain_users else ""
    return f'{module} required username="{principal}" password="{password}"{users};'


def _server_properties(layout: BrokerLayout) -> str:
    """One SASL_SSL listener for clients (as production's), a loopback controller listener the
    broker alone uses, and the optional mTLS listener; nobody gets in without a principal, and a
    principal gets only what its ACLs (or super.users) allow."""
    secrets = layout.secrets
    listeners = f"SASL_SSL://127.0.0.1:{layout.port}"
    protocols = "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    if layout.tls is not None:
        listeners += f",SSL://127.0.0.1:{layout.tls.port}"
        protocols += ",SSL:SSL"
    super_users = [pki.ADMIN, pki.BROKER, pki.CONTROLLER]
    if layout.dev_plain_port is not None:
        listeners += f",PLAIN://127.0.0.1:{layout.dev_plain_port}"
        protocols += ",PLAIN:PLAINTEXT"
        super_users.append("ANONYMOUS")
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    controller_password = secrets.password(pki.CONTROLLER)
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{layout.controller_port}",
        "listeners": f"{listeners},CONTROLLER://127.0.0.1:{layout.controller_port}",
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": protocols,
        "inter.broker.listener.name": "SASL_SSL",
        # Clients: SCRAM-SHA-512 over TLS; users live in the cluster metadata (KIP-554).
        "sasl.enabled.mechanisms": SASL_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": SASL_MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": _jaas(
            scram, pki.BROKER, secrets.password(pki.BROKER)
        ),
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(secrets.keystore),
        "listener.name.sasl_ssl.ssl.truststore.type": "PEM",
        "listener.name.sasl_ssl.ssl.truststore.location": str(secrets.ca_file),
        # The controller listener: SCRAM cannot authenticate there (its credentials are in the
        # metadata the controller serves), so PLAIN with one static user, on loopback only.
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": _jaas(
            plain, pki.CONTROLLER, controller_password, plain_users=True
        ),
        # Authorization: ACLs in the KRaft metadata; no ACL means no access.
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(f"User:{p}" for p in super_users),
        # mTLS principals are the certificate's CN (`CN=cocoon-gateway` -> User:cocoon-gateway),
        # the same names the SCRAM users have.
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
        "log.dirs": str(layout.data_dir),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        # A local broker: compact and clean quickly so compaction is observable in minutes.
        "log.cleaner.backoff.ms": "1000",
        "log.retention.check.interval.ms": "10000",
    }
    if layout.tls is not None:
        settings |= {
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.ssl.ssl.keystore.type": "PEM",
            "listener.name.ssl.ssl.keystore.location": str(layout.tls.keystore),
            "listener.name.ssl.ssl.truststore.type": "PEM",
            "listener.name.ssl.ssl.truststore.location": str(layout.tls.truststore),
        }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def read_pid(layout: BrokerLayout) -> int | None:
    try:
        pid = int(layout.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def broker_answers(
    bootstrap: str, security: KafkaSecurity | None = None, timeout_s: float = 2.0
) -> bool:
    """True when the broker at `bootstrap` answers a metadata request (as `security`)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        # kafka-python's client blocks for its full bootstrap timeout on a closed port.
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError:
        return False
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            **(security or KafkaSecurity()).kafka_python(),
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def start(
    layout: BrokerLayout,
    *,
    heap: str = "1g",
    # Format, JVM start, then a TLS + SCRAM metadata round trip: on the shared 2-core machine at
    # load average 50 the start took over 90 s.
    timeout_s: float = 180.0,
    version: str = KAFKA_VERSION,
    echo=print,
) -> str:
    """Start the broker (formatting storage on first use) and wait until it answers metadata."""
    if read_pid(layout) is not None:
        if layout.secrets.complete and broker_answers(layout.bootstrap, layout.admin_security()):
            return layout.bootstrap
        raise BrokerError(
            f"A broker process is running (pid file {layout.pid_file}) but not answering"
        )
    java = check_java()
    libs = ensure_jars(version, echo=echo)
    layout.home.mkdir(parents=True, exist_ok=True)
    if not layout.secrets.complete and layout.data_dir.exists():
        # Data formatted without these secrets (an older, plaintext broker): its users and ACLs
        # cannot match new passwords, so start from empty storage.
        echo(f"New broker credentials: clearing the old broker data in {layout.data_dir}")
        shutil.rmtree(layout.data_dir)
    layout.secrets.ensure()
    layout.config_file.write_text(_server_properties(layout))
    layout.log4j_file.write_text(LOG4J2_PROPERTIES.format(log_file=layout.log_file))
    classpath = f"{libs}/*"
    jvm = [
        java,
        f"-Xmx{heap}",
        "-Xms256m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={layout.log4j_file}",
        "-cp",
        classpath,
    ]
    if not (layout.data_dir / "meta.properties").exists():
        cluster_id = _random_cluster_id()
        fmt = subprocess.run(
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                # `=` form: a random id may start with '-', which would parse as an option.
                f"--cluster-id={cluster_id}",
                "-c",
                str(layout.config_file),
                *_scram_users(layout.secrets),
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"Formatting broker storage failed:\n{fmt.stdout}{fmt.stderr}")
    with layout.stdout_file.open("ab") as out:
        process = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(layout.config_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI and gets its own process group
        )
    layout.pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerError(
                f"The broker exited with code {process.returncode}; see {layout.stdout_file} "
                f"and {layout.log_file}"
            )
        if broker_answers(layout.bootstrap, layout.admin_security(), timeout_s=1.0):
            return layout.bootstrap
        time.sleep(0.3)
    stop(layout)
    raise BrokerError(f"The broker did not answer within {timeout_s:.0f}s; see {layout.log_file}")


def _scram_users(secrets: pki.BrokerSecrets) -> list[str]:
    """The admin and the broker itself exist from the first start (KIP-900); every other
    principal is created by `cocoon topics apply` through the admin API."""
    args = []
    for principal in (pki.ADMIN, pki.BROKER):
        password = secrets.password(principal)
        args.append(f"--add-scram={SASL_MECHANISM}=[name={principal},password={password}]")
    return args


def _random_cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def stop(layout: BrokerLayout, *, timeout_s: float = 30.0) -> bool:
    """Stop the broker and its process group; returns False when none was running."""
    pid = read_pid(layout)
    if pid is None:
        layout.pid_file.unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.1)
    _reap(pid)
    layout.pid_file.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def free_port_pair() -> int:
    """A loopback port p such that p and p+1 are both free (broker and controller listeners)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise BrokerError("no free pair of loopback ports")


def default_layout() -> BrokerLayout:
    """The developer broker used by `cocoon kafka start` and `cocoon up`."""
    port = int(os.environ.get("COCOON_KAFKA_PORT", "9092"))
    return BrokerLayout(home=cache_dir() / "kafka" / "broker", port=port, controller_port=port + 1)
