"""`cocoon run attestation`: evidence in, signed verdicts out, the registry followed live.

    attestation.evidence  --(BusConsumer, group "attestation")-->  verify  -->  attestation.verdicts
    attestation.registry  --(mirror, every replica reads all)-->   policy allow-lists, revocations
    attestation.verdicts  --(mirror)-->  outstanding challenges, trusted workers, seen claims
    TRUSTED / withdrawn   --(admin API)-->  the worker's own SCRAM user and ACLs,
                          --> attestation.credentials (its password sealed to the worker)

Evidence that carries `gpu_evidence` (cocoon.core.gpu_evidence) is checked with `evaluate_gpu`
against `gpu_nonce(claims)` under the GPU policy from settings, and the GPU verdict goes to the
policy as `PolicyInput.extra["gpu"]`, where `require_gpu_cc_models` (base policy + registry)
decides. See docs/attestation.md ("The service") for freshness, replay rules and revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pydantic import Field, model_validator

from cocoon.attestation.claims import Claims, ClaimsError
from cocoon.attestation.collateral import (
    BundleSource,
    CollateralError,
    CollateralSource,
    PcsSource,
)
from cocoon.attestation.credentials import CredentialIssuer
from cocoon.attestation.gpu.report import GpuEvidenceError
from cocoon.attestation.gpu.verify import (
    GpuEvidence,
    GpuPolicy,
    GpuVerdict,
    evaluate_gpu,
    gpu_nonce,
)
from cocoon.attestation.policy import MeasurementSet, Policy
from cocoon.attestation.quote import QuoteFormatError, parse_quote
from cocoon.attestation.registry_mirror import CompactedMirror
from cocoon.attestation.registry_signing import UnsignedEntry, check_entry, load_registry_key
from cocoon.attestation.registry_topic import REGISTRY_TOPIC, RegistryState
from cocoon.attestation.replay import ChallengeBook, SeenClaims
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import (
    ServiceKey,
    default_key_path,
    rejected_record,
    revoked_record,
    trusted_record,
)
from cocoon.attestation.verify import Verdict as Check
from cocoon.attestation.verify import Verifier
from cocoon.core.bus import BusConsumer, BusProducer, Message
from cocoon.core.bus.principals import PrincipalError
from cocoon.core.bus.security import KafkaSecurity
from cocoon.core.bus.settings import topic_prefix
from cocoon.core.codec import models
from cocoon.core.contracts import Group, Topic
from cocoon.core.runtime import Service, ServiceSettings
from cocoon.core.verdicts import TRUSTED, load_pinned_key

log = logging.getLogger(__name__)

EVIDENCE_TOPIC = Topic.ATTESTATION_EVIDENCE
VERDICTS_TOPIC = Topic.ATTESTATION_VERDICTS
ATTESTED_TOPIC = Topic.ATTESTATION_ATTESTED
COLLATERAL_TOPIC = Topic.ATTESTATION_COLLATERAL
CREDENTIALS_TOPIC = Topic.ATTESTATION_CREDENTIALS
INTEL_PCS = "https://api.trustedservices.intel.com"

VERDICTS = Counter(
    "cocoon_attestation_verdicts", "Verdicts published, by status", ["status"]
)  # _total is added by prometheus_client


class Settings(ServiceSettings):
    topic_prefix: str | None = Field(
        None, description="physical topic prefix (tests, side by side)"
    )
    verdict_ttl_hours: float = Field(6.0, gt=0, le=72, description="lifetime of a TRUSTED verdict")
    service_key_file: Path | None = Field(None, description="Ed25519 PEM; default in cache dir")
    create_service_key: bool = Field(True, description="create the key file if it is missing")
    policy_file: Path | None = Field(None, description="base policy (roots, freshness bounds)")
    collateral_file: Path | None = Field(None, description="offline collateral bundle")
    pccs_url: str | None = Field(None, description="PCCS / Intel PCS v4 base URL")
    dev_simtdx: bool = Field(False, description="trust the local simulated TDX root (dev only)")
    allow_simulated_tee: bool = Field(False, description="allow dev_simtdx in production")
    simtdx_dir: Path | None = Field(None, description="simulated TDX state directory")
    gpu_policy_file: Path | None = Field(
        None, description="GPU policy JSON (RIM and OCSP: files or URLs); default NVIDIA online"
    )
    evidence_group: str = Group.ATTESTATION
    issue_worker_credentials: bool = Field(
        False,
        description="give each trusted worker its own SCRAM user and ACLs, its password sealed "
        "to the worker (workers hold only the enrolment principal); needs Alter on the cluster",
    )
    credential_sweep_seconds: float = Field(
        5.0, gt=0, le=300, description="how often expired verdicts' credentials are looked for"
    )
    registry_public_key: str = Field(
        "",
        description="hex Ed25519 key that signs registry entries; default: the .pub of the "
        "registry key file (COCOON_REGISTRY_KEY_FILE), created in development",
    )
    registry_public_key_file: Path | None = Field(
        None, description="a file holding registry_public_key (the chart mounts a ConfigMap)"
    )

    @model_validator(mode="after")
    def _simulated_only_in_dev(self) -> Settings:
        if self.dev_simtdx and self.production and not self.allow_simulated_tee:
            raise ValueError(
                f"COCOON_DEV_SIMTDX=true in COCOON_ENVIRONMENT={self.environment!r}: production "
                "never trusts the simulated TDX root (COCOON_ALLOW_SIMULATED_TEE=true overrides)"
            )
        return self


def base_policy_and_collateral(settings: Settings) -> tuple[Policy, CollateralSource]:
    """The policy whose allow-lists the registry fills, and where collateral comes from."""
    policy = Policy.from_file(settings.policy_file) if settings.policy_file else Policy()
    if settings.dev_simtdx:
        # Explicit opt-in: the test root is added to whatever the policy already trusts.
        sim = SimTdx.load_or_create(settings.simtdx_dir)
        if sim.trust_anchor not in policy.trusted_roots:
            policy = replace(
                policy,
                name=f"{policy.name}+{sim.trust_anchor.name}",
                trusted_roots=(*policy.trusted_roots, sim.trust_anchor),
            )
        items = [sim.collateral()]
        if settings.collateral_file:
            items += BundleSource.from_file(settings.collateral_file).items
        return policy, BundleSource(items)
    if settings.collateral_file:
        return policy, BundleSource.from_file(settings.collateral_file)
    return policy, PcsSource(settings.pccs_url or INTEL_PCS)


def gpu_policy_from(settings: Settings) -> GpuPolicy:
    """The GPU policy: the settings' file (offline reference data or URLs), else NVIDIA's RIM
    service and OCSP responder."""
    if settings.gpu_policy_file:
        return GpuPolicy.from_file(settings.gpu_policy_file)
    return GpuPolicy.online()


def _registry_key(settings: Settings) -> bytes:
    """The pinned registry key: the setting, else its file, else the local registry key's public
    half (development: made on first use unless COCOON_CREATE_SERVICE_KEY=false)."""
    if settings.registry_public_key:
        return load_pinned_key(settings.registry_public_key)
    if settings.registry_public_key_file is not None:
        return load_pinned_key(settings.registry_public_key_file)
    return load_registry_key(create=settings.create_service_key).public


def _measurements(check: Check) -> bytes:
    m = check.measurements
    return b"".join(bytes.fromhex(m[k]) for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))


class AttestationService(Service):
    name = "attestation"

    def __init__(
        self,
        settings: Settings,
        *,
        policy: Policy | None = None,
        collateral: CollateralSource | None = None,
        key: ServiceKey | None = None,
        gpu_policy: GpuPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.prefix = topic_prefix() if settings.topic_prefix is None else settings.topic_prefix
        if policy is None or collateral is None:
            default_policy, default_collateral = base_policy_and_collateral(settings)
            policy = policy or default_policy
            collateral = collateral or default_collateral
        self.base_policy = policy
        self._offline = isinstance(collateral, BundleSource)
        self.gpu_policy = gpu_policy or gpu_policy_from(settings)
        self.key = key or ServiceKey.load(
            settings.service_key_file or default_key_path(), create=settings.create_service_key
        )
        self.registry_key = _registry_key(settings)
        self.clock = clock
        self.ttl_seconds = int(settings.verdict_ttl_hours * 3600)
        self.registry = RegistryState()
        self.challenges = ChallengeBook()
        self.seen = SeenClaims()
        self.verifier = Verifier(self.registry.registry.apply(policy), collateral, self.challenges)
        self.trusted: dict[str, Any] = {}  # worker -> its current TRUSTED verdict model
        self.last_evidence: dict[str, str] = {}  # worker -> evidence id of its latest verdict
        # worker -> verdict id of a TRUSTED verdict this process issued with verified GPU evidence
        self.gpu_verified: dict[str, str] = {}
        self._published_collateral: dict[str, str] = {}  # fmspc -> digest of what we sent
        self._lock = asyncio.Lock()  # registry changes and verify+publish never interleave
        self.producer: BusProducer | None = None
        self.consumer: BusConsumer | None = None
        self._mirrors: list[CompactedMirror] = []
        self.issuer = (
            CredentialIssuer(settings.kafka_bootstrap, self.prefix, KafkaSecurity.from_env())
            if settings.issue_worker_credentials
            else None
        )
        self._issue_again: set[str] = set()  # workers whose issuance failed here

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        bootstrap, client = (
            self.settings.kafka_bootstrap,
            f"attestation-{self.settings.instance_id}",
        )
        log.info("attestation service key %s (pin %s)", self.key.key_id, self.key.public.hex())
        self.producer = BusProducer(bootstrap, client_id=client, prefix=self.prefix)
        await self.producer.start()
        registry = CompactedMirror(bootstrap, REGISTRY_TOPIC, prefix=self.prefix, client_id=client)
        verdicts = CompactedMirror(bootstrap, VERDICTS_TOPIC, prefix=self.prefix, client_id=client)
        for mirror in (registry, verdicts):
            await mirror.start()
            self._mirrors.append(mirror)
        await registry.catch_up(self._registry_record)
        await verdicts.catch_up(self._verdict_record)
        if self.issuer is not None:
            credentials = CompactedMirror(
                bootstrap, CREDENTIALS_TOPIC, prefix=self.prefix, client_id=client
            )
            await credentials.start()
            self._mirrors.append(credentials)
            await credentials.catch_up(self.issuer.restore)
        async with self._lock:
            self._apply_registry()
            await self._revoke_disallowed()  # changes made while the service was down
            await self._reconcile_credentials()  # both topics read to their end: all workers
        self.consumer = BusConsumer(
            bootstrap,
            [EVIDENCE_TOPIC],
            group_id=self.settings.evidence_group,
            client_id=client,
            handler=self.on_evidence,
            prefix=self.prefix,
        )
        await self.consumer.start()
        log.info(
            "attestation ready: registry version %d, %d trusted workers",
            self.registry.version,
            len(self.trusted),
        )

    async def run(self, stopping: asyncio.Event) -> None:
        assert self.consumer is not None
        registry, verdicts = self._mirrors[:2]
        tasks = [
            asyncio.ensure_future(self.consumer.run()),
            asyncio.ensure_future(self._follow(registry, self._on_registry, stopping)),
            asyncio.ensure_future(self._follow(verdicts, self._verdict_record, stopping)),
        ]
        if self.issuer is not None:
            credentials = self._mirrors[2]
            tasks += [
                asyncio.ensure_future(self._follow(credentials, self.issuer.restore, stopping)),
                asyncio.ensure_future(self._sweep_credentials(stopping)),
            ]
        stop_wait = asyncio.ensure_future(stopping.wait())
        await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        await self.consumer.stop()  # finishes the record in hand and commits
        for task in tasks[1:]:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task  # re-raises a crash of the consumer loop or a follower

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        for mirror in self._mirrors:
            await mirror.stop()
        if self.producer is not None:
            await self.producer.stop()

    @staticmethod
    async def _follow(mirror: CompactedMirror, handler: Any, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await mirror.poll(handler, timeout_ms=100)

    # ---- evidence --------------------------------------------------------------------------

    async def on_evidence(self, message: Message) -> None:
        ev = message.value
        if self.last_evidence.get(ev.worker_id) == ev.evidence_id:
            log.info("evidence %s already judged (redelivery); skipped", ev.evidence_id)
            return
        async with self._lock:
            now = self.clock()
            verdict = await self._judge(ev, int(now))
            await self._publish(verdict)
            await self._publish_evidence(ev, verdict, int(now))
            await self._reconcile_credentials(decided={ev.worker_id})

    async def _judge(self, ev: Any, at: int) -> models.Verdict:
        reject = self._rejecter(ev, at)
        try:
            claims = Claims.decode(ev.claims)
        except ClaimsError as exc:
            return reject(f"malformed claims: {exc}")
        nonce = claims.freshness.nonce
        if ev.nonce is not None and ev.nonce != nonce:
            return reject("evidence nonce does not match the nonce in the claims")
        banned = self._banned(claims.payout_address)
        if banned:
            return reject(banned)
        report_data = claims.report_data()
        if nonce is not None:
            problem = self.challenges.owner_problem(ev.worker_id, nonce)
            if problem:
                return reject(problem)
        else:
            earlier = self.seen.seen(report_data, at)
            if earlier is not None:
                return reject(f"replay: these claims were already presented in {earlier}")
        gpu: GpuVerdict | None = None
        if ev.gpu_evidence is not None:
            try:
                evidence = GpuEvidence.decode(ev.gpu_evidence)
            except GpuEvidenceError as exc:
                return reject(f"gpu_cc: {exc}")
            gpu = await self._evaluate_gpu(evidence, claims, at)
        extra = {"gpu": gpu}  # the policy's gpu_cc check decides (required models, or bad GPU)
        if self._offline:  # ~1.2 ms of CPU and no I/O: a thread hand-off would only add latency
            check = self.verifier.verify(ev.tdx_quote, claims, at, extra)
        else:  # a PCS fetch on a cache miss blocks; keep the loop (group heartbeats) responsive
            check = await asyncio.to_thread(self.verifier.verify, ev.tdx_quote, claims, at, extra)
        if not check.accepted:
            return reject(check.reason, check)
        expires = at + self.ttl_seconds
        if check.collateral_not_after:
            expires = min(expires, check.collateral_not_after)  # never past the collateral
        self.challenges.withdraw(ev.worker_id)  # one outstanding challenge per worker
        challenge = self.challenges.issue_for(ev.worker_id, expires)
        policy = self.verifier.policy
        self.seen.remember(report_data, at + policy.max_age_seconds, ev.evidence_id)
        verdict = self.key.sign(
            trusted_record(
                worker_id=ev.worker_id,
                evidence_id=ev.evidence_id,
                claims=claims,
                check=check,
                now_ms=at * 1000,
                expires_ms=expires * 1000,
                registry_version=self.registry.version,
                challenge=challenge,
                measurements=_measurements(check),
            )
        )
        if gpu is not None and gpu.accepted:
            self.gpu_verified[ev.worker_id] = verdict.verdict_id
        return verdict

    async def _evaluate_gpu(self, evidence: GpuEvidence, claims: Claims, at: int) -> GpuVerdict:
        when = datetime.fromtimestamp(at, UTC)
        args = (evidence, gpu_nonce(claims), self.gpu_policy, when)
        if self.gpu_policy.offline_sources():  # files only: CPU, no I/O
            return evaluate_gpu(*args)
        return await asyncio.to_thread(evaluate_gpu, *args)  # RIM service / OCSP responder

    def _rejecter(self, ev: Any, at: int) -> Callable[..., models.Verdict]:
        def reject(reason: str, check: Check | None = None) -> models.Verdict:
            return self.key.sign(
                rejected_record(
                    worker_id=ev.worker_id,
                    evidence_id=ev.evidence_id,
                    reason=reason,
                    now_ms=at * 1000,
                    registry_version=self.registry.version,
                    check=check,
                )
            )

        return reject

    async def _publish(self, verdict: models.Verdict) -> None:
        assert self.producer is not None
        await self.producer.send(VERDICTS_TOPIC, verdict)
        self._verdict_record(verdict.worker_id, verdict)
        VERDICTS.labels(verdict.status).inc()
        log.info(
            "verdict %s for %s: %s",
            verdict.status,
            verdict.worker_id,
            verdict.reason or "accepted",
            extra={"worker_id": verdict.worker_id, "evidence_id": verdict.evidence_id},
        )

    async def _publish_evidence(self, ev: Any, verdict: models.Verdict, at: int) -> None:
        """For clients that verify workers themselves: the evidence behind a TRUSTED verdict
        (a tombstone otherwise) and the collateral it was verified against."""
        assert self.producer is not None
        if verdict.status != TRUSTED:
            await self.producer.send_raw(ATTESTED_TOPIC, None, key=ev.worker_id.encode())
            return
        await self.producer.send(ATTESTED_TOPIC, ev)
        try:
            collateral = self.verifier.collateral.get(parse_quote(ev.tdx_quote), at)
        except (QuoteFormatError, CollateralError):
            return  # it was just used to accept this quote; a failure now is not the client's
        digest = hashlib.sha256(collateral.to_json().encode()).hexdigest()
        if self._published_collateral.get(collateral.fmspc) == digest:
            return
        await self.producer.send(
            COLLATERAL_TOPIC,
            models.Collateral(
                fmspc=collateral.fmspc,
                ca=parse_quote(ev.tdx_quote).pck.ca,
                collateral_json=json.dumps(collateral.doc),
                not_before=datetime.fromtimestamp(collateral.not_before, UTC),
                not_after=datetime.fromtimestamp(collateral.not_after, UTC),
                published_at=datetime.fromtimestamp(at, UTC),
            ),
        )
        self._published_collateral[collateral.fmspc] = digest

    # ---- workers' credentials ---------------------------------------------------------------

    async def _reconcile_credentials(self, decided: Collection[str] | None = None) -> None:
        """Withdraw the credentials trust no longer backs; issue one to each newly trusted key
        among `decided` (the workers whose verdict this replica just published; None: all, at
        start) and those whose issuance failed here before. Called with the lock held. A broker
        error is logged and tried again at the next sweep: it never stops the service."""
        if self.issuer is None:
            return
        assert self.producer is not None
        now = self.clock()
        for worker in self.issuer.to_withdraw(self.trusted, now, decided):
            try:
                await self.issuer.withdraw(worker)
            except PrincipalError as exc:
                log.warning("withdrawing the credential of %s failed: %s", worker, exc)
                continue
            await self.producer.send_raw(CREDENTIALS_TOPIC, None, key=worker.encode())
        wanted = self._issue_again | (set(self.trusted) if decided is None else set(decided))
        for verdict in self.issuer.to_issue(self.trusted, now):
            if verdict.worker_id not in wanted:
                continue  # the replica that judged it issues
            try:
                record = await self.issuer.issue(verdict, now)
            except PrincipalError as exc:
                log.warning("issuing a credential to %s failed: %s", verdict.worker_id, exc)
                self._issue_again.add(verdict.worker_id)
                continue
            self._issue_again.discard(verdict.worker_id)
            await self.producer.send(CREDENTIALS_TOPIC, record)

    async def _sweep_credentials(self, stopping: asyncio.Event) -> None:
        """Verdicts expire without a record: look for their credentials every few seconds
        (and retry what failed)."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.credential_sweep_seconds)
            async with self._lock:
                await self._reconcile_credentials(decided=())

    def _verdict_record(self, key: str | None, verdict: Any) -> None:
        """Track the verdicts topic (ours and other replicas'): trust, challenges, seen claims."""
        if key is None:
            return
        if verdict is None:  # tombstone after a revocation
            self.trusted.pop(key, None)
            return
        if verdict.attestor_key_id != self.key.key_id:
            return  # another key's verdicts (a rotated key) do not restore state
        if verdict.evidence_id:
            self.last_evidence[key] = verdict.evidence_id
        expires = int(verdict.expires_at.timestamp())
        if verdict.status == TRUSTED and expires > self.clock():
            self.trusted[key] = verdict
            if verdict.challenge:
                self.challenges.withdraw(key)
                self.challenges.restore(key, verdict.challenge, expires)
            if verdict.report_data:
                issued = int(verdict.issued_at.timestamp())
                until = issued + self.base_policy.max_age_seconds
                self.seen.remember(verdict.report_data, until, verdict.evidence_id or "")
        else:
            self.trusted.pop(key, None)

    # ---- registry --------------------------------------------------------------------------

    def _registry_record(self, key: str | None, value: Any) -> None:
        try:
            if value is not None:
                check_entry(value, self.registry_key)  # only the registry key changes policy
            self.registry.update(key, value)
        except UnsignedEntry as exc:
            log.warning("refusing registry entry %s: %s", key, exc)
            return
        except ValueError as exc:
            log.warning("ignoring registry entry %s: %s", key, exc)

    async def _on_registry(self, key: str | None, value: Any) -> None:
        async with self._lock:
            before = self.registry.version, dict(self.registry.entries)
            self._registry_record(key, value)
            if (self.registry.version, self.registry.entries) == before:
                return
            self._apply_registry()
            await self._revoke_disallowed()

    def _apply_registry(self) -> None:
        self.verifier.policy = self.registry.registry.apply(self.base_policy)
        log.info("registry version %d applied", self.registry.version)

    def _banned(self, payout_address: str | None) -> str | None:
        if payout_address is None or payout_address not in self.registry.registry.banned_addresses:
            return None
        return (
            f"payout_address: {payout_address} is banned by registry version "
            f"{self.registry.version}"
        )

    def _disallowed(self, verdict: Any) -> str | None:
        """Why the current registry no longer allows a TRUSTED verdict (None: still allowed)."""
        banned = self._banned(verdict.payout_address)
        if banned:
            return banned
        policy, version = self.verifier.policy, self.registry.version
        image = (verdict.image_hash or b"").hex()
        m = verdict.measurements or b""
        allowed_set = len(m) == 240 and (
            MeasurementSet(m[:48], (m[48:96], m[96:144], m[144:192], m[192:240]))
            in policy.allowed_measurements
        )
        if image not in policy.allowed_image_hashes and not allowed_set:
            return f"image hash {image} revoked by registry version {version}"
        for model in verdict.models:
            if policy.allowed_models is not None and model not in policy.allowed_models:
                return f"model {model!r} revoked by registry version {version}"
        if verdict.tcb_status not in policy.accepted_tcb_statuses:
            return (
                f"TCB status {verdict.tcb_status} no longer accepted (registry version {version})"
            )
        for model in verdict.models:
            if model in policy.require_gpu_cc_models and not self._gpu_shown(verdict, model):
                return (
                    f"model {model!r} requires a GPU in CC mode since registry version {version}; "
                    "this verdict was issued without verified GPU evidence"
                )
        return None

    def _gpu_shown(self, verdict: Any, model: str) -> bool:
        """Whether a TRUSTED verdict is known to rest on verified GPU evidence: this process
        verified it, or it was issued under a registry that already required the GPU (so the
        policy's gpu_cc check passed). The verdict record itself does not carry the GPU result,
        so one restored from the topic and issued before the requirement counts as without."""
        if self.gpu_verified.get(verdict.worker_id) == verdict.verdict_id:
            return True
        if model in self.base_policy.require_gpu_cc_models:
            return True  # the base policy never changes at runtime: every verdict passed gpu_cc
        since = self.registry.gpu_required_since(model)
        return since is not None and verdict.registry_version >= since

    async def _revoke_disallowed(self) -> None:
        assert self.producer is not None
        now_ms = int(self.clock() * 1000)
        revoked_here = set()
        for worker, verdict in list(self.trusted.items()):
            reason = self._disallowed(verdict)
            if reason is None:
                continue
            revoked_here.add(worker)
            revoked = self.key.sign(
                revoked_record(
                    worker_id=worker,
                    reason=reason,
                    now_ms=now_ms,
                    registry_version=self.registry.version,
                    previous=verdict,
                )
            )
            await self._publish(revoked)
            # The tombstone follows, so the compacted topic forgets the worker entirely.
            await self.producer.send_raw(VERDICTS_TOPIC, None, key=worker.encode())
            await self.producer.send_raw(ATTESTED_TOPIC, None, key=worker.encode())
            self.trusted.pop(worker, None)
            self.gpu_verified.pop(worker, None)
            self.challenges.withdraw(worker)
        await self._reconcile_credentials(decided=revoked_here)


def build(settings: Settings) -> AttestationService:
    return AttestationService(settings)
