"""The registry as compacted-topic entries: diff, fold, and `cocoon registry` on a real broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocoon.attestation.cli import registry_app
from cocoon.attestation.policy import MeasurementSet, Policy
from cocoon.attestation.registry import Registry
from cocoon.attestation.registry_topic import RegistryState, diff, read_registry
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import default_catalog
from cocoon.core.codec import models

M = MeasurementSet(bytes(range(48)), (b"\x01" * 48, b"\x02" * 48, b"\x03" * 48, b"\x04" * 48))


def _registry() -> Registry:
    reg = Registry()
    reg.add_image("aa" * 32)
    reg.add_measurements(M)
    reg.add_model("qwen", "bb" * 32)
    reg.allow_tcb("OutOfDate")
    reg.advisories.add("INTEL-SA-00837")
    return reg


def _fold(entries: list, state: RegistryState | None = None) -> RegistryState:
    state = state or RegistryState()
    for n, e in enumerate(entries, start=state.version + 1):
        record = models.RegistryEntry(
            entry_id=e.entry_id,
            kind=e.kind,
            subject=e.subject,
            allowed=e.allowed,
            attributes=e.attributes,
            version=n,
            updated_by="test",
            updated_at=0,
        )
        state.update(e.entry_id, record)
    return state


def test_diff_then_fold_reproduces_the_registry() -> None:
    target = _registry()
    state = _fold(diff(Registry(), target))
    assert state.registry.to_dict() == target.to_dict()
    assert state.version == 5  # image, measurements, model, OutOfDate, advisory (UpToDate kept)


def test_removals_are_entries_with_allowed_false() -> None:
    before = _registry()
    after = Registry.from_dict(before.to_dict())
    after.remove_image("aa" * 32)
    after.remove_model("qwen")
    after.disallow_tcb("UpToDate")
    changes = diff(before, after)
    assert {(e.entry_id, e.allowed) for e in changes} == {
        ("image:" + "aa" * 32, False),
        ("model:qwen", False),
        ("tcb:UpToDate", False),
    }
    state = _fold(changes, _fold(diff(Registry(), before)))
    assert state.registry.to_dict() == after.to_dict()
    assert "UpToDate" not in state.registry.tcb_statuses


def test_a_malformed_entry_changes_nothing() -> None:
    state = _fold(diff(Registry(), _registry()))
    before = state.registry.to_dict()
    bad = models.RegistryEntry(
        entry_id="image:zz",
        kind="IMAGE",
        subject="zz",
        allowed=True,
        attributes={},
        version=99,
        updated_by="x",
        updated_at=0,
    )
    with pytest.raises(ValueError, match="image hash"):
        state.update("image:zz", bad)
    assert state.registry.to_dict() == before and state.version == 5


PRICES = {
    "price_per_token": 100,
    "worker_fee_per_token": 80,
    "prompt_bps": 10_000,
    "cached_bps": 5_000,
    "completion_bps": 10_000,
    "reasoning_bps": 12_000,
}


def test_prices_and_workers_are_entries_that_fold_back() -> None:
    target = _registry()
    target.set_prices(PRICES)
    target.set_worker("w-1", coefficient=1500, payout_address="EQ-test")
    target.set_worker("w-2", coefficient=900)
    target.ban_address("0:" + "ee" * 32)
    changes = diff(Registry(), target)
    banned = next(e for e in changes if e.entry_id.startswith("banned-address:"))
    assert banned.entry_id == "banned-address:0:" + "ee" * 32 and banned.kind == "POLICY"
    prices = next(e for e in changes if e.entry_id == "prices:network")
    assert prices.kind == "POLICY" and prices.attributes["price_per_token"] == "100"
    state = _fold(changes)
    assert state.registry.to_dict() == target.to_dict()
    # They change no allow-list: the policy a verifier uses is the same without them.
    assert state.registry.apply(Policy()) == _registry().apply(Policy())

    later = Registry.from_dict(target.to_dict())
    later.remove_worker("w-2")
    later.prices = {}
    later.unban_address("0:" + "ee" * 32)
    removals = diff(target, later)
    assert {(e.entry_id, e.allowed) for e in removals} == {
        ("prices:network", False),
        ("worker:w-2", False),
        ("banned-address:0:" + "ee" * 32, False),
    }
    assert _fold(removals, state).registry.to_dict() == later.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"price_per_token": 0}, "positive"),
        ({"worker_fee_per_token": 101}, "negative commission"),
        ({"prompt_bps": -1}, "0.."),
        ({"cached_bps": "1e3"}, "integer"),
        ({"reasoning_bps": 10**16}, "0.."),
        ({"surprise": 1}, "unknown"),
    ],
)
def test_a_bad_price_list_is_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Registry().set_prices({**PRICES, **change})


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> str:
    p = unique_name("reg") + "."
    apply_topics(kafka_bootstrap, [default_catalog()["attestation.registry"]], prefix=p)
    return p


async def test_cli_writes_the_topic_and_round_trips_a_file(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    kafka = ["--bootstrap", kafka_bootstrap, "--prefix", prefix]

    def run(*args: str) -> str:
        result = runner.invoke(registry_app, [*args, *kafka])
        assert result.exit_code == 0, result.output
        return result.output

    # The CLI runs its own event loop (asyncio.run), so it goes to a thread here.
    await asyncio.to_thread(run, "add-image", "ab" * 32)
    await asyncio.to_thread(run, "add-model", "qwen", "cd" * 32)
    out = await asyncio.to_thread(run, "allow-tcb", "OutOfDate")
    assert "registry version 3" in out
    shown = json.loads(await asyncio.to_thread(run, "show"))
    assert shown["image_hashes"] == ["ab" * 32] and shown["models"] == {"qwen": "cd" * 32}

    exported = tmp_path / "reg.json"
    await asyncio.to_thread(run, "export", str(exported))
    doc = json.loads(exported.read_text())
    doc["image_hashes"] = ["ef" * 32]
    exported.write_text(json.dumps(doc))
    out = await asyncio.to_thread(run, "import", str(exported))
    assert "remove image:" + "ab" * 32 in out and "allow  image:" + "ef" * 32 in out

    state = await read_registry(kafka_bootstrap, prefix=prefix)
    assert state.registry.image_hashes == {"ef" * 32}
    assert state.entries["image:" + "ab" * 32].allowed is False
    assert state.version == 5

    bad = await asyncio.to_thread(runner.invoke, registry_app, ["add-image", "nothex", *kafka])
    assert bad.exit_code == 2 and "image hash" in bad.output
