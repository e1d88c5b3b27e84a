"""Two attestation instances on one broker (issue 14): both judge evidence, and one's death
loses none.

Each instance runs as `cocoon run attestation` in its own process, in one consumer group over
`attestation.evidence` (3 partitions, keyed by worker), with the same pinned service key, as
the chart runs its replicas. Which instance judged what is read from each one's log ("verdict
TRUSTED for <worker>"); what was decided is read from `attestation.verdicts`.

The death is a SIGKILL with evidence in flight: what the dead instance read but had not
committed is read again by the survivor once the group gives it the partitions (after the
session timeout); a verdict the dead one had already published is not judged twice (the
survivor's mirror of the verdicts knows that evidence), so no worker gets a second verdict,
and none a REJECTED "replay" of its own evidence.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from test_service import Worker, allow_all, watch

from cocoon.attestation.registry_topic import publish_registry
from cocoon.attestation.simtdx import SimTdx
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import concrete_topics, default_catalog

JUDGED = re.compile(r"verdict (\w+) for (\S+):")
# The group's session timeout (aiokafka's default, 10 s) plus a rebalance and a margin on a
# loaded machine: the survivor must have judged the dead instance's evidence by then.
TAKEOVER_BOUND_S = 45.0


def partition_of(worker_id: str) -> int:
    """The partition of `attestation.evidence` a worker's evidence goes to (keyed by worker)."""
    partitions = list(range(default_catalog()["attestation.evidence"].partitions))
    return DefaultPartitioner()(worker_id.encode(), partitions, partitions)


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    p = unique_name("atti") + "."
    specs = [s for s in concrete_topics(default_catalog()) if s.name.startswith("attestation.")]
    apply_topics(kafka_bootstrap, specs, prefix=p)
    return p


class Instance:
    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cocoon.core.runtime", "attestation"],
                env=env,
                stderr=out,
                stdout=out,
            )

    def judged(self) -> list[tuple[str, str]]:
        """(status, worker id) of every verdict this instance published, from its log."""
        return JUDGED.findall(self.log.read_text())

    async def ready(self, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        while "attestation ready" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def instances(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path, tmp_path: Path
) -> Iterator[list[Instance]]:
    env = {
        **os.environ,
        "COCOON_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "COCOON_TOPIC_PREFIX": prefix,
        "COCOON_DEV_SIMTDX": "true",
        "COCOON_SIMTDX_DIR": str(sim_dir),
        "COCOON_SERVICE_KEY_FILE": str(service_key),
        "COCOON_CREATE_SERVICE_KEY": "false",  # both replicas sign with the one pinned key
        "COCOON_EVIDENCE_GROUP": f"attestation-{uuid.uuid4().hex[:8]}",
        "COCOON_GRPC_HEALTH_PORT": "0",
        "COCOON_METRICS_PORT": "0",
        "COCOON_LOG_FORMAT": "human",
    }
    started = [Instance(name, env, tmp_path / f"{name}.log") for name in ("a", "b")]
    try:
        yield started
    finally:
        for instance in started:
            instance.stop()


async def send_evidence(
    producer: BusProducer, workers: list[Worker]
) -> dict[str, Any]:  # worker id -> evidence
    sent = {}
    for worker in workers:
        evidence = worker.evidence(worker.claims())
        await producer.send("attestation.evidence", evidence)
        sent[worker.id] = evidence
    return sent


async def test_two_instances_share_the_evidence_and_a_killed_one_loses_none(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, instances: list[Instance]
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    sim = SimTdx.load_or_create(sim_dir)
    a, b = instances
    await asyncio.gather(a.ready(), b.ready())
    sent: dict[str, Any] = {}
    async with (
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
    ):

        async def judged_all(within_s: float) -> None:
            await verdicts.until(
                lambda _key, _value: {
                    v.evidence_id for _, v in verdicts.seen if v is not None
                }.issuperset(e.evidence_id for e in sent.values()),
                within=within_s,
            )

        # Both serve: until the group has settled on two members, one may hold every
        # partition; new workers' evidence is spread over the 3 partitions by worker id.
        deadline = time.monotonic() + 90
        while not (a.judged() and b.judged()):
            assert time.monotonic() < deadline, (a.judged(), b.judged())
            sent |= await send_evidence(producer, [Worker(sim) for _ in range(6)])
            await judged_all(30)

        # Kill one with evidence in flight; the other takes its partitions and judges the rest.
        owned_by_b = {partition_of(worker) for _, worker in b.judged()}
        batch = [Worker(sim) for _ in range(12)]
        in_flight = asyncio.ensure_future(send_evidence(producer, batch))
        await asyncio.sleep(0.05)
        b.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        sent |= await in_flight
        late = [Worker(sim) for _ in range(6)]
        sent |= await send_evidence(producer, late)
        await judged_all(TAKEOVER_BOUND_S)
        took_s = time.monotonic() - killed_at
        print(f"every evidence judged {took_s:.1f} s after the kill")

    ours = {e.evidence_id for e in sent.values()}
    judged = [v for _, v in verdicts.seen if v is not None and v.evidence_id in ours]
    per_evidence = Counter(v.evidence_id for v in judged)
    assert set(per_evidence) == ours  # none lost
    assert max(per_evidence.values()) == 1, per_evidence.most_common(3)  # none judged twice
    assert {v.status for v in judged} == {"TRUSTED"}, [v.reason for v in judged]
    # Both took part; what was sent to the dead one's partitions after it died (and whatever it
    # had not judged) the survivor judged.
    by_a = {worker for _, worker in a.judged()}
    by_b = {worker for _, worker in b.judged()}
    assert by_a and by_b
    taken_over = {w.id for w in [*batch, *late] if partition_of(w.id) in owned_by_b} - by_b
    assert taken_over, "no evidence went to the killed instance's partitions"
    assert taken_over <= by_a
