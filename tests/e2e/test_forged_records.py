"""Records in another worker's name change nothing (issue 12): the attack measured on `cocoon up`.

A forger with write access to the shared topics (as any worker has) writes, for every real
worker, a DISABLED heartbeat with a huge seq every half second (unsigned, and signed by a key
of its own), and answers every assignment it sees with a FAILED outcome in the assigned worker's
name. Before heartbeats and outcomes were signed, the first alone made every request fail with
503 no_worker_available. Now the real workers keep serving, each request is charged once, and
the forged records are in the dead-letter topics with their reasons.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

from test_failures import Bus, bus, closing_entry, content_of, sdk  # noqa: F401  (fixture)

from cocoon.core.bus import BusProducer
from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.codec import models
from cocoon.core.contracts import Topic
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.worker_records import sign_record
from cocoon.network.engine_process import SMOLLM2_MODEL

FORGE_EVERY_S = 0.5


class Forger:
    """Writes DISABLED heartbeats and FAILED outcomes in the real workers' names."""

    def __init__(self, bootstrap: str, worker_ids: list[str]) -> None:
        self.bootstrap = bootstrap
        self.worker_ids = worker_ids
        self.keys = WorkerKeys.generate()  # attested nowhere, but a valid Ed25519 key
        self.heartbeats = 0
        self.outcomes = 0
        self._assignments: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Forger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _on_assignment(self, record: BroadcastRecord) -> None:
        if record.value is not None:
            self._assignments.append(record.value)

    def _heartbeat(self, worker_id: str) -> models.Heartbeat:
        return models.Heartbeat(
            worker_id=worker_id,
            models=[SMOLLM2_MODEL],
            state="DISABLED",
            max_active_requests=1,
            active_requests=0,
            coefficient=1000,
            work_topic=f"work.{worker_id}",
            seq=10**12 + self.heartbeats,
            sent_at=datetime.now(UTC),
        )

    def _failed(self, assignment: dict) -> models.Outcome:
        return models.Outcome(
            request_id=assignment["request_id"],
            attempt=assignment["attempt"],
            worker_id=assignment["worker_id"],
            model=assignment["model"],
            status="FAILED",
            error_code="engine_error",
            reported_by="worker-proxy",
            duration_ms=1,
            completion_tokens=0,
            finished_at=datetime.now(UTC),
        )

    async def _run(self) -> None:
        reader = BroadcastReader(
            self.bootstrap, [Topic.INFERENCE_ASSIGNMENTS], self._on_assignment, from_beginning=False
        )
        await reader.start()
        reading = asyncio.create_task(reader.run())
        try:
            async with BusProducer(self.bootstrap, client_id="forger") as producer:
                while not self._stop.is_set():
                    for worker_id in self.worker_ids:
                        forged = self._heartbeat(worker_id)
                        await producer.send(Topic.WORKER_HEARTBEATS, forged)
                        await producer.send(Topic.WORKER_HEARTBEATS, sign_record(self.keys, forged))
                        self.heartbeats += 2
                    while self._assignments:
                        failed = self._failed(self._assignments.pop())
                        await producer.send(Topic.INFERENCE_OUTCOMES, failed)
                        await producer.send(
                            Topic.INFERENCE_OUTCOMES, sign_record(self.keys, failed)
                        )
                        self.outcomes += 2
                    await asyncio.sleep(FORGE_EVERY_S)
        finally:
            reading.cancel()
            await reader.stop()


def _reasons(on: Bus, dlq: str, since_ms: int) -> dict[tuple[str, str | None], int]:
    """(reason code, consumer group) -> count of the dead letters on `dlq` since `since_ms`."""
    counts: dict[tuple[str, str | None], int] = {}
    for letter in on.records(dlq, since_ms=since_ms):
        code = letter["error"].split(": ")[1]
        key = (code, letter["consumer_group"])
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_forged_heartbeats_and_outcomes_leave_the_workers_serving(network, bus):  # noqa: F811
    since_ms = int(datetime.now(UTC).timestamp() * 1000)
    with Forger(bus.bootstrap, list(network.worker_ids)) as forger:
        # Long enough for the forged heartbeats to have taken every worker out (they come
        # four times as often as the real ones, with a seq no real heartbeat reaches).
        asyncio.run(asyncio.sleep(3))
        for n in range(3):
            stream = sdk(network).chat.completions.create(
                model=SMOLLM2_MODEL,
                messages=[{"role": "user", "content": f"Say hello {n}."}],
                max_tokens=16,
                stream=True,
            )
            text = "".join(content_of(event.model_dump()) for event in stream)
            assert text.strip()
    assert forger.outcomes >= 6 and forger.heartbeats >= 4 * len(network.worker_ids)

    # Every request was charged once, by its real receipt; none was released by a forgery.
    ids = {a["request_id"] for a in bus.records("inference.assignments", since_ms=since_ms)}
    assert len(ids) == 3
    for request_id in ids:
        entry, _ = closing_entry(bus, request_id)
        assert entry.entry_id == f"charge:{request_id}"

    beats = _reasons(bus, "worker.heartbeats.dlq", since_ms)
    assert beats.get(("unsigned_record", None), 0) >= 4, beats
    assert beats.get(("bad_record_signature", None), 0) >= 4, beats
    outcomes = _reasons(bus, "inference.outcomes.dlq", since_ms)
    groups = {group for _, group in outcomes}
    assert len(groups) == 2, outcomes  # the scheduler's and billing's
    for group in groups:
        assert outcomes[("unsigned_record", group)] == 3, outcomes
        assert outcomes[("bad_record_signature", group)] == 3, outcomes
