"""The worker-proxy service: attests, heartbeats, and runs sealed work on its engine.

    cocoon run worker-proxy        (COCOON_WORKER_ID, COCOON_MODEL, COCOON_ENGINE_URL, ...)

Start-up: keys made in this process (the TEE), Evidence -> attestation.evidence. Then the work
session: its work topic `work.<worker_id>` ensured, WorkItems from it, one task per RUN (see
job.py), CANCEL stops that task; heartbeats every `heartbeat_seconds`; evidence again before the
verdict on the last one expires (see attest.py). SIGTERM: stop taking work, heartbeat DRAINING,
finish what is in flight.

With `await_credential` (the host holds only the enrolment principal: evidence out, verdicts and
sealed credentials in) the work session waits for the worker's own credential, which the
attestation service issues after a TRUSTED verdict sealed to this process's key (credential.py),
and ends when it is withdrawn; a new one starts it again. Without it the process's own Kafka
settings serve for everything.

Offsets of the work topic are committed once an item is dispatched, not when its job ends: a
restarted worker has new keys and could not open an old item anyway, and a lost job is what the
scheduler's lease and WORKER_LOST handling are for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from prometheus_client import Counter, Gauge
from pydantic import Field, field_validator, model_validator

from cocoon.core.bus import BusConsumer, BusProducer, Message, RejectRecord, topic_prefix
from cocoon.core.bus.admin import ensure_instance
from cocoon.core.bus.broadcast import BroadcastReader, BroadcastRecord
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.capabilities import CHAT, TOOLS
from cocoon.core.catalog import default_catalog
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import epoch_millis, now_millis
from cocoon.core.contracts import Topic, TopicTemplate, work_topic, worker_group
from cocoon.core.runtime import Service, ServiceSettings
from cocoon.core.runtime.tasks import wait_any
from cocoon.core.tee import SIMULATED, installed_devices
from cocoon.core.ton_address import TonAddressError, parse_ton_address
from cocoon.core.worker_records import sign_record
from cocoon.worker_proxy.attest import AttestationSchedule
from cocoon.worker_proxy.credential import CredentialBox
from cocoon.worker_proxy.engine import EngineClient
from cocoon.worker_proxy.gpu_nvml import collect_gpu_evidence
from cocoon.worker_proxy.identity import Identity
from cocoon.worker_proxy.job import Job, JobContext, JobResult
from cocoon.worker_proxy.receipts_log import ReceiptLog

log = logging.getLogger(__name__)

WORKER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # the work topic template's parameter

REQUESTS = Counter(
    "cocoon_worker_proxy_requests", "Work items finished, by outcome status", ["status"]
)
ACTIVE = Gauge("cocoon_worker_proxy_active_requests", "Requests running on the engine")
SESSION_RETRY_SECONDS = 2.0  # after a work session failed, before it starts again


class Settings(ServiceSettings):
    """COCOON_WORKER_ID, COCOON_MODEL, COCOON_ENGINE_URL, ... (env names are COCOON_<FIELD>)."""

    worker_id: str = Field(description="this worker's id; its work topic is work.<worker_id>")
    model: str = Field(min_length=1, max_length=256, description="model id the network uses")
    engine_url: str = Field(
        "http://127.0.0.1:8080/v1", description="the engine's OpenAI base URL (ends in /v1)"
    )
    engine_model: str | None = Field(None, description="model name the engine expects (= model)")
    capabilities: list[models.CapabilitySymbol] = Field(
        [CHAT, TOOLS],
        min_length=1,
        description="what the engine's model serves (JSON list in the environment, e.g. "
        "'[\"EMBEDDINGS\"]'); heartbeats announce it, and the worker refuses the rest",
    )
    context_length: int | None = Field(
        None, ge=1, description="the longest input the engine takes, in tokens (announced)"
    )
    max_active_requests: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="requests the engine runs at once; unset: asked from the engine at start "
        "(llama.cpp's /props total_slots), else 1",
    )
    coefficient: int = Field(1000, ge=1, description="price coefficient, 1000 = 1.0x")
    chunk_linger_ms: float = Field(
        5.0,
        ge=0,
        le=60_000,
        description="engine chunks after the first share a sealed record within this window",
    )
    heartbeat_seconds: float = Field(2.0, gt=0, le=60)
    evidence_refresh_seconds: float = Field(
        1800.0, gt=0, description="re-attest at least this often (earlier if the verdict asks)"
    )
    payout_address: str | None = Field(
        None,
        description="TON address the earnings are paid to, attested in the claims (claims v2)",
    )

    await_credential: bool = Field(
        False,
        description="hold only the enrolment principal: take work, heartbeat and report with "
        "the credential the attestation service issues sealed to this process after a TRUSTED "
        "verdict (docs/security.md)",
    )

    gpu_evidence: Literal["none", "nvml"] = Field(
        "none",
        description="GPU evidence in each attestation: `nvml` asks the NVIDIA driver for a "
        "report over gpu_nonce(claims) (a confidential-computing GPU; gpu_nvml.py)",
    )

    receipts_file: Path | None = Field(
        None, description="append a copy of each signed receipt here (cocoon worker audit)"
    )

    @field_validator("payout_address")
    @classmethod
    def _payout_address(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            return parse_ton_address(value).raw
        except TonAddressError as exc:
            raise ValueError(str(exc)) from None

    # The quote device (cocoon.core.tee reads the same COCOON_TEE). The simulated one signs with
    # a local test CA: a production worker refuses it unless explicitly allowed (staging).
    tee: str = Field(SIMULATED, min_length=1, description="TEE quote device (entry point name)")
    allow_simulated_tee: bool = False

    @model_validator(mode="after")
    def _tee(self) -> Settings:
        installed = installed_devices()
        if self.tee not in installed:
            raise ValueError(
                f"COCOON_TEE={self.tee!r}: no such quote device in this image (installed: "
                f"{', '.join(installed) or 'none'})"
            )
        if self.tee == SIMULATED and self.production and not self.allow_simulated_tee:
            raise ValueError(
                f"COCOON_TEE=simulated in COCOON_ENVIRONMENT={self.environment!r}: a production "
                "worker needs a real TEE (or COCOON_ALLOW_SIMULATED_TEE=true, e.g. for staging)"
            )
        return self

    @field_validator("worker_id")
    @classmethod
    def _worker_id(cls, value: str) -> str:
        if not WORKER_ID_RE.match(value):
            raise ValueError("must match ^[a-z0-9][a-z0-9-]{0,62}$ (it names a Kafka topic)")
        return value


class WorkerProxy(Service):
    name = "worker-proxy"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.work_topic = work_topic(settings.worker_id)
        self.identity: Identity | None = None
        self.schedule: AttestationSchedule | None = None
        self.jobs: dict[str, Job] = {}
        self.results: dict[str, JobResult] = {}  # the last few, for tests and status
        self._runs: dict[tuple[str, int], int] = {}  # (request, attempt) run -> its deadline
        self.draining = False
        self._tasks: set[asyncio.Task] = set()
        # What the engine runs at once: the slots, and what the heartbeats advertise (so the
        # scheduler never places more here than the engine serves). Settled in start().
        self.capacity = settings.max_active_requests or 1
        self._slots = asyncio.Semaphore(self.capacity)
        self._heartbeat_seq = 0
        self._avg_ms: float | None = None
        self._verdict_seen = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._last_state: models.WorkerStateSymbol | None = None  # none sent yet
        self.enrolment = KafkaSecurity.from_env()
        self.credential: CredentialBox | None = None
        self._credential_changed = asyncio.Event()
        self.evidence_producer: BusProducer | None = None
        self.producer: BusProducer | None = None  # the work session's (None between sessions)
        self.consumer: BusConsumer | None = None
        self.verdicts: BroadcastReader | None = None
        self.engine: EngineClient | None = None
        self.receipts = (
            ReceiptLog(settings.receipts_file, settings.payout_address)
            if settings.receipts_file
            else None
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        # Keys are generated here, inside the (simulated) TEE, and never leave this process.
        gpu = collect_gpu_evidence if s.gpu_evidence == "nvml" else None
        self.identity = Identity.generate(self.worker_id, s.model, s.payout_address, gpu=gpu)
        self.schedule = AttestationSchedule(
            self.worker_id, self.identity.keys.public.signing_key, s.evidence_refresh_seconds
        )
        self.engine = EngineClient(s.engine_url)
        if s.max_active_requests is None:
            await self._learn_capacity(self.engine)
        self.evidence_producer = BusProducer(
            s.kafka_bootstrap,
            client_id=f"worker-proxy-{self.worker_id}-evidence",
            security=self.enrolment,
        )
        await self.evidence_producer.start()
        if s.await_credential:
            self.credential = CredentialBox(self.worker_id, self.identity.keys, self.enrolment)
        self.verdicts = BroadcastReader(
            s.kafka_bootstrap,
            [Topic.ATTESTATION_VERDICTS, Topic.ATTESTATION_CREDENTIALS],
            self._on_attestation_record,
            from_beginning=True,
            client_id=f"worker-proxy-{self.worker_id}-verdicts",
            security=self.enrolment,
        )
        await self.verdicts.start()
        await self._submit_evidence()
        if not s.await_credential:
            await self._connect(self.enrolment)
        log.info(
            "worker started",
            extra={"worker_id": self.worker_id, "model": s.model, "work_topic": self.work_topic},
        )

    async def _connect(self, security: KafkaSecurity) -> None:
        """Start a work session as `security`: the work topic ensured, the producer of
        heartbeats, outcomes, responses and receipts, the work consumer, a first heartbeat."""
        s = self.settings
        await asyncio.to_thread(
            ensure_instance,
            s.kafka_bootstrap,
            default_catalog()[TopicTemplate.WORK],
            prefix=topic_prefix(),
            security=security,
            worker_id=self.worker_id,
        )
        self.producer = BusProducer(
            s.kafka_bootstrap, client_id=f"worker-proxy-{self.worker_id}", security=security
        )
        await self.producer.start()
        self.consumer = BusConsumer(
            s.kafka_bootstrap,
            [self.work_topic],
            group_id=worker_group(self.worker_id),
            handler=self._on_work,
            client_id=f"worker-proxy-{self.worker_id}",
            security=security,
        )
        await self.consumer.start()
        await self._heartbeat()
        log.info("work session started", extra={"principal": security.username})

    async def _disconnect(self) -> None:
        """End the work session: no more work taken; jobs in flight lose their producer."""
        consumer, producer = self.consumer, self.producer
        self.consumer = self.producer = None
        for closer in (consumer.stop if consumer else None, producer.stop if producer else None):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    async def _learn_capacity(self, engine: EngineClient) -> None:
        """Ask the engine how many requests it runs at once; one if it does not say."""
        slots = await engine.parallel_slots()
        self.capacity = slots or 1
        self._slots = asyncio.Semaphore(self.capacity)
        log.info(
            "engine capacity",
            extra={
                "max_active_requests": self.capacity,
                "source": "engine" if slots else "default (the engine does not say)",
            },
        )

    async def run(self, stopping: asyncio.Event) -> None:
        assert self.verdicts is not None
        background = [
            asyncio.create_task(self._sessions(stopping), name="work"),
            asyncio.create_task(self.verdicts.run(stopping), name="verdicts"),
            asyncio.create_task(self._attestation(stopping), name="attestation"),
        ]
        stop_wait = asyncio.create_task(stopping.wait())
        try:
            done, _ = await asyncio.wait(
                [*background, stop_wait], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stop_wait:
                    task.result()  # a loop that ended by itself failed: let the runtime see it
            # Stop taking work first, then tell the scheduler, then let the jobs finish.
            self.draining = True
            if self.consumer is not None:
                await self.consumer.stop()
                await self._heartbeat()
            if self._tasks:
                log.info("draining", extra={"in_flight": len(self._tasks)})
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            stop_wait.cancel()
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for task in list(self._tasks):
                task.cancel()  # past the grace period: the runtime cancelled us

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for closer in (
            self.consumer.stop if self.consumer else None,
            self.verdicts.stop if self.verdicts else None,
            self.producer.stop if self.producer else None,
            self.evidence_producer.stop if self.evidence_producer else None,
            self.engine.aclose if self.engine else None,
        ):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    # -- work sessions -------------------------------------------------------------------------
    async def _sessions(self, stopping: asyncio.Event) -> None:
        """Work while there is a credential to work with; returns (session still open, for the
        drain) when `stopping` is set."""
        if self.credential is None:  # the process's own settings: one session, as started
            await self._session(stopping)
            return
        while not stopping.is_set():
            self._credential_changed.clear()
            security = self.credential.current
            if security is None:
                log.info("waiting for this worker's credential (issued after a TRUSTED verdict)")
                await wait_any(stopping, self._credential_changed, timeout_s=3600)
                continue
            try:
                await self._connect(security)
                await self._session(stopping)
            except Exception:
                # Most likely the credential was just withdrawn (its ACLs go before its record
                # arrives): start again with whatever the credential is by then.
                log.warning("work session failed", exc_info=True)
                await self._disconnect()
                await wait_any(stopping, timeout_s=SESSION_RETRY_SECONDS)
                continue
            if stopping.is_set():
                return
            log.info("credential changed: work session ends")
            await self._disconnect()

    async def _session(self, stopping: asyncio.Event) -> None:
        """Run the work consumer and the heartbeats until stopping or the credential changes;
        a failure of either is raised."""
        assert self.consumer is not None
        work = asyncio.create_task(self.consumer.run(), name="work-consumer")
        beats = asyncio.create_task(self._heartbeats(stopping), name="heartbeats")
        ends = [
            asyncio.create_task(stopping.wait()),
            asyncio.create_task(self._credential_changed.wait()),
        ]
        try:
            done, _ = await asyncio.wait([work, beats, *ends], return_when=asyncio.FIRST_COMPLETED)
            for task in done & {work, beats}:
                task.result()  # a loop that ended by itself failed
        finally:
            # On SIGTERM run() stops the consumer (ending `work`) and drains; otherwise the
            # session ends here.
            cancelled = [beats, *ends] if stopping.is_set() else [work, beats, *ends]
            for task in cancelled:
                task.cancel()
            for task in cancelled:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- work ----------------------------------------------------------------------------------
    async def _on_work(self, message: Message) -> None:
        item: models.WorkItem = message.value
        if item.action == "RUN":
            self._dispatch(item)
        elif item.action == "CANCEL":
            job = self.jobs.get(item.request_id)
            if job is not None and job.item.attempt == item.attempt:
                job.cancel()
        else:
            raise RejectRecord(f"work item action {item.action!r} is not RUN or CANCEL")

    def _dispatch(self, item: models.WorkItem) -> None:
        current = self.jobs.get(item.request_id)
        if current is not None and current.item.attempt >= item.attempt:
            return  # redelivered: that attempt is already running
        if not self._first_run(item):
            # Run again, it would seal a second answer under the same key and nonces.
            log.warning("work item run before; ignored", extra={"request_id": item.request_id})
            return
        assert self.identity is not None and self.producer is not None
        assert self.engine is not None
        context = JobContext(
            self.identity,
            self.engine,
            self.producer,
            self._slots,
            engine_model=self.settings.engine_model or self.settings.model,
            receipts=self.receipts,
            chunk_linger_s=self.settings.chunk_linger_ms / 1000,
            capabilities=frozenset(self.settings.capabilities),
        )
        job = Job(item, context)
        self.jobs[item.request_id] = job
        task = asyncio.create_task(self._run_job(job), name=f"job-{item.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _first_run(self, item: models.WorkItem) -> bool:
        """Remember each (request, attempt) run until its deadline; False for a repeat."""
        now = now_millis()
        if len(self._runs) > 10_000:
            self._runs = {k: d for k, d in self._runs.items() if d > now}
        key = (item.request_id, item.attempt)
        if key in self._runs:
            return False
        self._runs[key] = epoch_millis(item.deadline_at)
        return True

    async def _run_job(self, job: Job) -> None:
        ACTIVE.inc()
        try:
            result = await job.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job failed", extra={"request_id": job.request_id})
            return
        finally:
            ACTIVE.dec()
            if self.jobs.get(job.request_id) is job:
                del self.jobs[job.request_id]
        REQUESTS.labels(result.status).inc()
        self.results[job.request_id] = result
        while len(self.results) > 1000:
            del self.results[next(iter(self.results))]
        if result.status == "SUCCEEDED":
            took = now_millis() - job.received_ms
            self._avg_ms = took if self._avg_ms is None else 0.8 * self._avg_ms + 0.2 * took
        log.info(
            "request finished",
            extra={
                "request_id": job.request_id,
                "attempt": job.item.attempt,
                "status": result.status,
                "error_code": result.error_code,
                "completion_tokens": result.completion_tokens,
            },
        )

    # -- heartbeats ----------------------------------------------------------------------------
    async def _heartbeats(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await wait_any(stopping, self._state_changed, timeout_s=self.settings.heartbeat_seconds)
            self._state_changed.clear()
            if not stopping.is_set():
                await self._heartbeat()

    def _state(self) -> models.WorkerStateSymbol:
        if self.draining:
            return "DRAINING"
        # Not placeable until this process's own key is attested: an earlier process with the
        # same worker id may still hold an unexpired verdict for a key that is gone.
        assert self.schedule is not None
        return "READY" if self.schedule.trusted(now_millis()) else "STARTING"

    async def _heartbeat(self) -> None:
        if self.producer is None:
            return  # between work sessions: nothing to heartbeat with
        self._heartbeat_seq += 1
        self._last_state = self._state()
        waiting = sum(1 for job in self.jobs.values() if not job.running)
        assert self.identity is not None
        heartbeat = sign_record(
            self.identity.keys,
            models.Heartbeat(
                worker_id=self.worker_id,
                models=[self.settings.model],
                state=self._last_state,
                max_active_requests=self.capacity,
                active_requests=len(self.jobs),
                coefficient=self.settings.coefficient,
                work_topic=self.work_topic,
                seq=self._heartbeat_seq,
                sent_at=datetime.now(UTC),
                engine_queue_depth=waiting,
                avg_request_ms=self._avg_ms,
                capabilities=list(self.settings.capabilities),
                context_length=self.settings.context_length,
            ),
        )
        await self.producer.send(Topic.WORKER_HEARTBEATS, heartbeat)

    # -- attestation ---------------------------------------------------------------------------
    def _on_attestation_record(self, record: BroadcastRecord) -> None:
        if record.topic == Topic.ATTESTATION_CREDENTIALS:
            if self.credential is not None and self.credential.on_record(record.key, record.value):
                self._credential_changed.set()
            return
        self._on_verdict(record)

    def _on_verdict(self, record: BroadcastRecord) -> None:
        if self.schedule is not None and self.schedule.on_verdict(record.key, record.value):
            log.info(
                "verdict",
                extra={"status": self.schedule.status, "reason": self.schedule.reason},
            )
            self._verdict_seen.set()
            if self._last_state != self._state():
                self._state_changed.set()  # READY (or not) at once, not at the next beat

    async def _submit_evidence(self) -> None:
        assert self.identity is not None and self.evidence_producer is not None
        assert self.schedule is not None
        nonce = self.schedule.challenge
        evidence = await asyncio.to_thread(self.identity.evidence, nonce=nonce)
        await self.evidence_producer.send(Topic.ATTESTATION_EVIDENCE, evidence)
        self.schedule.submitted(evidence.evidence_id, now_millis())
        log.info(
            "evidence submitted",
            extra={"evidence_id": evidence.evidence_id, "challenged": nonce is not None},
        )

    async def _attestation(self, stopping: asyncio.Event) -> None:
        assert self.schedule is not None
        while not stopping.is_set():
            wait_s = max(0.0, (self.schedule.next_due_ms() - now_millis()) / 1000)
            if wait_s > 0:
                # Wake on a new verdict too: it may bring the due time forward.
                self._verdict_seen.clear()
                await wait_any(stopping, self._verdict_seen, timeout_s=wait_s)
                continue
            await self._submit_evidence()


def build(settings: Settings) -> WorkerProxy:
    return WorkerProxy(settings)


__all__ = ["Settings", "WorkerProxy", "build"]
