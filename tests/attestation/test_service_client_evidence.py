"""What clients that verify workers themselves need from the attestation service: signed
registry entries only, and the evidence and collateral behind each TRUSTED verdict."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_service import (
    MODEL,
    Worker,
    allow_all,
    running,
    settings,
    verdict_for,
    watch,
)

from cocoon.attestation.registry_signing import load_registry_key, sign_entry
from cocoon.attestation.registry_topic import publish_registry
from cocoon.attestation.service import AttestationService
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verdicts import ServiceKey
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import concrete_topics, default_catalog
from cocoon.core.codec import models

OTHER_MODEL = "not-in-the-registry"


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    p = unique_name("attc") + "."
    specs = [s for s in concrete_topics(default_catalog()) if s.name.startswith("attestation.")]
    apply_topics(kafka_bootstrap, specs, prefix=p)
    return p


def model_entry(name: str, version: int, signature: bytes | None) -> models.RegistryEntry:
    fields = {
        "entry_id": f"model:{name}",
        "kind": "MODEL",
        "subject": name,
        "allowed": True,
        "attributes": {"sha256": "ab" * 32},
        "version": version,
        "updated_by": "intruder",
        "updated_at": datetime.fromtimestamp(int(time.time()), UTC),
    }
    return models.RegistryEntry(**fields, signature=signature)


async def test_entries_not_signed_by_the_registry_key_change_nothing(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    svc = AttestationService(settings(kafka_bootstrap, prefix, sim_dir, service_key))
    sim = SimTdx.load_or_create(sim_dir)
    intruder_key = ServiceKey.generate()
    async with (
        running(svc),
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.verdicts", prefix) as verdicts,
    ):
        unsigned = model_entry(OTHER_MODEL, 1000, None)
        wrong = model_entry(OTHER_MODEL, 1001, None)
        wrong = wrong.model_copy(update={"signature": sign_entry(intruder_key, wrong)})
        for entry in (unsigned, wrong):
            await producer.send("attestation.registry", entry)
        evidence = Worker(sim, model=OTHER_MODEL).evidence()
        await producer.send("attestation.evidence", evidence)
        v = await verdicts.until(verdict_for(evidence))
        assert v.status == "REJECTED" and v.reason.startswith("model:"), v.reason

        # The same entry signed by the registry key is taken.
        signed = model_entry(OTHER_MODEL, 1002, None)
        signed = signed.model_copy(update={"signature": sign_entry(load_registry_key(), signed)})
        await producer.send("attestation.registry", signed)
        deadline = time.monotonic() + 10
        while OTHER_MODEL not in svc.registry.registry.models:
            assert time.monotonic() < deadline, "the signed entry was not applied"
            await _sleep()
        evidence = Worker(sim, model=OTHER_MODEL).evidence()
        await producer.send("attestation.evidence", evidence)
        v = await verdicts.until(verdict_for(evidence))
        assert v.status == "TRUSTED", v.reason


async def test_trusted_evidence_and_its_collateral_are_published_for_clients(
    kafka_bootstrap: str, prefix: str, sim_dir: Path, service_key: Path
) -> None:
    await publish_registry(kafka_bootstrap, allow_all, prefix=prefix)
    svc = AttestationService(settings(kafka_bootstrap, prefix, sim_dir, service_key))
    sim = SimTdx.load_or_create(sim_dir)
    worker = Worker(sim)
    async with (
        running(svc),
        BusProducer(kafka_bootstrap, prefix=prefix) as producer,
        watch(kafka_bootstrap, "attestation.attested", prefix) as attested,
        watch(kafka_bootstrap, "attestation.collateral", prefix) as collateral,
    ):
        good = worker.evidence()
        await producer.send("attestation.evidence", good)
        ev = await attested.until(lambda k, v: v is not None and v.evidence_id == good.evidence_id)
        assert ev.worker_id == worker.id and ev.tdx_quote == good.tdx_quote
        col = await collateral.until(lambda k, v: v is not None)
        doc = json.loads(col.collateral_json)
        assert col.fmspc == json.loads(doc["tcb_info"])["fmspc"].lower()
        assert col.not_before < datetime.now(UTC) < col.not_after

        # A rejection withdraws the worker's published evidence (a tombstone).
        bad = worker.evidence(worker.claims(timestamp=int(time.time()) - 10_000))
        await producer.send("attestation.evidence", bad)
        await attested.until(lambda k, v: k == worker.id and v is None)
        assert MODEL in ev.claims.decode(errors="replace")


async def _sleep() -> None:
    await asyncio.sleep(0.1)
