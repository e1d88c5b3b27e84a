"""Run a rendered pod's container as a process on this machine, the way the kubelet would start
it, and ask its gRPC health endpoint what its probes ask.

What the process gets is exactly what the chart gives the container, with three documented,
minimal rewrites that stand for what a pod has and a process on a shared host does not:

* files: every volume (Secret, ConfigMap, emptyDir, PersistentVolumeClaim) is written under a
  per-pod root directory, and an absolute path at or under a mount path, in an environment
  value or the container's arguments, gets that root as a prefix (`/var/run/secrets/x` ->
  `<root>/var/run/secrets/x`);
* network: a pod has its own IP; here every pod shares the host, so each container port gets a
  free port of its own, and an environment value equal to a container port's number is
  rewritten to it. Probes and port checks go to 127.0.0.2, not 127.0.0.1: a process listening
  on 127.0.0.1 only (unreachable from the kubelet and the Service in a cluster) fails them;
* Kafka: `COCOON_KAFKA_BOOTSTRAP` points at the test broker (its mTLS listener when the
  container's `COCOON_KAFKA_SECURITY_PROTOCOL` is SSL).

The image's ENTRYPOINT, CMD and ENV come from deploy/docker/Dockerfile (support.images), and
its /opt/cocoon is a virtualenv built as that image target builds it. Not reproduced: the
user id, the read-only root filesystem, resource limits, and sidecar containers whose image is
not built from deploy/docker/Dockerfile (the inference engine: the worker-proxy needs it only
to serve, not to start).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from support.images import IMAGE_ROOT, ImageConfig

from cocoon.core.runtime.health import check_health

POD_IP = "127.0.0.2"  # probes use it: a process bound to 127.0.0.1 only is not reachable there


class PodFailed(AssertionError):
    pass


@dataclass
class Objects:
    """Secrets and ConfigMaps by name: those the chart renders plus those an operator made."""

    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def add_rendered(self, docs: tuple[dict, ...]) -> None:
        for doc in docs:
            name = doc["metadata"]["name"]
            if doc["kind"] == "Secret":
                data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
                data |= {k: v.encode() for k, v in (doc.get("stringData") or {}).items()}
                self.secrets[name] = data
            elif doc["kind"] == "ConfigMap":
                self.config_maps[name] = {k: v.encode() for k, v in (doc.get("data") or {}).items()}

    def source(self, kind: str, name: str) -> dict[str, bytes] | None:
        return (self.secrets if kind == "secret" else self.config_maps).get(name)


def pod_name(workload: dict) -> str:
    name = workload["metadata"]["name"]
    return f"{name}-0" if workload["kind"] == "StatefulSet" else f"{name}-5d4f8b7c9-x2x7q"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Pod:
    """One container of a rendered workload, made ready to run under `root`."""

    workload: dict
    container: dict
    image: ImageConfig
    venv: Path
    root: Path
    name: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port
    process: subprocess.Popen | None = None

    @property
    def spec(self) -> dict:
        return self.workload["spec"]["template"]["spec"]

    @property
    def log_path(self) -> Path:
        return self.root / "container.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- materialise ---------------------------------------------------------------------------
    def prepare(self, objects: Objects, namespace: str, bootstrap: Callable[[str], str]) -> None:
        """`bootstrap(protocol)`: the stand-in broker's listener for the security protocol the
        pod is given (PLAINTEXT, SSL for mTLS, SASL_SSL for SCRAM)."""
        self.name = pod_name(self.workload)
        self.root.mkdir(parents=True, exist_ok=True)
        mounts = self._write_volumes(objects)
        self.ports = {p["containerPort"]: _free_port() for p in self.container.get("ports", [])}
        env = dict(self.image.env)
        env.update(self._container_env(objects, namespace))
        env = {name: self._rewrite(value, mounts) for name, value in env.items()}
        protocol = env.get("COCOON_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
        if "COCOON_KAFKA_BOOTSTRAP" in env:
            env["COCOON_KAFKA_BOOTSTRAP"] = bootstrap(protocol)
        env["PATH"] = f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin"
        self.env = env
        command = self.container.get("command") or list(self.image.entrypoint)
        args = self.container.get("args") if "args" in self.container else list(self.image.cmd)
        argv = [self._rewrite(arg, mounts) for arg in [*command, *(args or [])]]
        self.argv = [self._executable(argv[0]), *argv[1:]]

    def _executable(self, program: str) -> str:
        if program.startswith(IMAGE_ROOT + "/"):
            return str(self.venv / program.removeprefix(IMAGE_ROOT + "/"))
        if "/" in program:
            raise PodFailed(f"{self.name}: {program} is not in the image's {IMAGE_ROOT}")
        found = self.venv / "bin" / program
        if not found.exists():
            raise PodFailed(f"{self.name}: {program!r} is not on the image's PATH")
        return str(found)

    def _write_volumes(self, objects: Objects) -> list[str]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        mounts = []
        for mount in self.container.get("volumeMounts", []):
            if "subPath" in mount:
                raise PodFailed(f"{self.name}: subPath mounts are not reproduced here")
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodFailed(f"{self.name}: mount {mount['name']!r} has no volume")
            target = self.root / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            for kind in ("secret", "configMap"):
                if kind in volume:
                    self._write_projection(volume[kind], kind, objects, target)
            if not {"secret", "configMap", "emptyDir", "persistentVolumeClaim"} & set(volume):
                raise PodFailed(f"{self.name}: volume {volume} is not reproduced here")
            mounts.append(mount["mountPath"].rstrip("/"))
        return sorted(mounts, key=len, reverse=True)

    def _write_projection(self, ref: dict, kind: str, objects: Objects, target: Path) -> None:
        name = ref.get("secretName") if kind == "secret" else ref.get("name")
        data = objects.source("secret" if kind == "secret" else "configMap", name)
        if data is None:
            if ref.get("optional"):
                return
            # The kubelet would leave the pod in ContainerCreating forever.
            raise PodFailed(f"{self.name}: mounts {kind} {name!r}, which nobody creates")
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        mode = ref.get("defaultMode", 0o644)
        for item in items:
            if item["key"] not in data:
                raise PodFailed(f"{self.name}: {kind} {name!r} has no key {item['key']!r}")
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])
            path.chmod(item.get("mode", mode))

    def _container_env(self, objects: Objects, namespace: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            kind = "secret" if "secretRef" in source else "configMap"
            ref = source.get("secretRef") or source.get("configMapRef")
            data = objects.source(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise PodFailed(f"{self.name}: envFrom {kind} {ref['name']!r}: nobody creates it")
            env |= {source.get("prefix", "") + k: v.decode() for k, v in data.items()}
        for var in self.container.get("env", []):
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "valueFrom" in var:
                env[var["name"]] = self._value_from(var, objects, namespace)
            else:
                env[var["name"]] = ""
        return env

    def _value_from(self, var: dict, objects: Objects, namespace: str) -> str:
        source = var["valueFrom"]
        if "fieldRef" in source:
            fields = {
                "metadata.name": self.name,
                "metadata.namespace": namespace,
                "status.podIP": POD_IP,
                "spec.nodeName": "node-1",
            }
            path = source["fieldRef"]["fieldPath"]
            if path not in fields:
                raise PodFailed(f"{self.name}: {var['name']}: fieldRef {path} not reproduced")
            return fields[path]
        for key, kind in (("secretKeyRef", "secret"), ("configMapKeyRef", "configMap")):
            if key in source:
                ref = source[key]
                data = objects.source(kind, ref["name"])
                if data is None or ref["key"] not in data:
                    raise PodFailed(f"{self.name}: {var['name']}: {kind} {ref} does not exist")
                return data[ref["key"]].decode()
        raise PodFailed(f"{self.name}: {var['name']}: valueFrom {source} not reproduced")

    def _rewrite(self, value: str, mounts: list[str]) -> str:
        for port, host_port in self.ports.items():
            if value == str(port):
                return str(host_port)
        for mount in mounts:
            if value == mount or value.startswith(mount + "/"):
                return str(self.root) + value
        return value

    # -- run -----------------------------------------------------------------------------------
    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def host_port(self, port: int | str) -> int:
        if isinstance(port, str):
            (number,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port]
            port = number
        return self.ports[port]

    async def wait_for_startup_probe(self, *, extra_s: float = 0.0) -> None:
        """Until the startup probe succeeds (gRPC SERVING for its service name) within the
        budget the probe gives (period x failureThreshold); fails as soon as the process exits."""
        probe = self.container["startupProbe"]
        if "grpc" not in probe:
            raise PodFailed(f"{self.name}: startup probe {probe} is not a gRPC probe")
        address = f"{POD_IP}:{self.host_port(probe['grpc']['port'])}"
        service = probe["grpc"].get("service", "")
        budget = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) + extra_s
        deadline = time.monotonic() + budget
        status = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PodFailed(
                    f"{self.name} exited with {self.process.returncode} before SERVING "
                    f"(its probe saw {status}):\n{self.log_tail()}"
                )
            with contextlib.suppress(Exception):
                status = await check_health(
                    address, service, deadline_s=probe.get("timeoutSeconds", 1)
                )
                if status == "SERVING":
                    return
            await asyncio.sleep(0.5)
        raise PodFailed(
            f"{self.name}: not SERVING after {budget:.0f}s ({status}):\n{self.log_tail()}"
        )

    def unreachable_ports(self) -> list[str]:
        """Container ports nothing answers on at the pod's address."""
        missing = []
        for port in self.container.get("ports", []):
            try:
                socket.create_connection((POD_IP, self.ports[port["containerPort"]]), 2).close()
            except OSError:
                missing.append(f"{port['name']} ({port['containerPort']})")
        return missing

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM, as the kubelet sends; SIGKILL after the grace period. The exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                return None
        return self.process.returncode


def cocoon_containers(workload: dict, wanted: Callable[[dict], bool]) -> list[dict]:
    """The containers of `workload` that `wanted` picks."""
    return [c for c in workload["spec"]["template"]["spec"]["containers"] if wanted(c)]
