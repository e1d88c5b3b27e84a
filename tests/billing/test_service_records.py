"""Billing's Kafka records and settings, without a broker: ledger records round-trip to the exact
entries, settings refuse what would mis-bill, verdicts give keys only when the pinned key signed."""

from __future__ import annotations

import pytest
from billing_service_support import Attestor
from pydantic import ValidationError

from cocoon.billing.ledger import Entry
from cocoon.billing.service import Settings, parse_grants
from cocoon.billing.stream import entry_from_record, ledger_records, order_entries
from cocoon.billing.stream_verdicts import VerdictKeys
from cocoon.core import codec
from cocoon.core.bus.broadcast import BroadcastRecord
from cocoon.core.crypto.keys import WorkerKeys

CHARGE = Entry(
    "charge:r-1",
    "charge",
    (
        ("holds:alice", -50_000),
        ("client:alice", 20_000),
        ("worker:w-1", 24_000),
        ("network:commission", 6_000),
    ),
    1_764_000_000_000,
    {"request_id": "r-1", "client_id": "alice", "worker_id": "w-1", "charge": 30_000},
)


def test_a_charge_becomes_one_record_per_owner_and_comes_back_exactly():
    records = ledger_records(CHARGE, seq=7)
    by_account = {r["account_id"]: r for r in records}
    assert set(by_account) == {"alice", "worker:w-1", "network:commission"}
    alice = by_account["alice"]
    assert (alice["kind"], alice["account_kind"]) == ("CHARGE", "CLIENT")
    assert (alice["available_delta_nanoton"], alice["held_delta_nanoton"]) == (20_000, -50_000)
    assert by_account["worker:w-1"]["kind"] == "WORKER_CREDIT"
    assert by_account["network:commission"]["kind"] == "COMMISSION"
    for record in records:
        # Through the real codec, as on the topic.
        _, decoded = codec.decode(codec.encode("cocoon.billing.LedgerEntry", record))
        seq, entry = entry_from_record(decoded)
        assert seq == 7 and entry == CHARGE


def test_replay_order_is_the_ledger_order_once_per_entry():
    opened = Entry("open:alice", "account_opened", (), 0, {"client_id": "alice"})
    (open_record,) = ledger_records(opened, seq=0)
    assert open_record["account_id"] == "alice" and open_record["kind"] == "ADJUSTMENT"
    found = [entry_from_record(r) for r in ledger_records(CHARGE, 1)] + [
        entry_from_record(open_record)
    ]
    assert order_entries(found) == [opened, CHARGE]


def test_dev_grants_parse_strictly():
    assert parse_grants("demo=1000000000000, bob=5;") == {"demo": 10**12, "bob": 5}
    assert parse_grants("") == {}
    for bad in ("demo", "demo=1.5", "demo=-1", "de mo=1", f"demo={2**63}"):
        with pytest.raises(ValueError):
            parse_grants(bad)


def test_settings_need_the_pinned_key_and_sane_prices(monkeypatch):
    monkeypatch.delenv("COCOON_ATTESTATION_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("COCOON_ATTESTATION_PUBLIC_KEY_FILE", raising=False)
    key = Attestor().public.hex()
    with pytest.raises(ValidationError, match="public key is required"):
        Settings()
    with pytest.raises(ValidationError, match="commission would be negative"):
        Settings(attestation_public_key=key, worker_fee_per_token_nanoton=101)
    with pytest.raises(ValidationError, match="dev grant"):
        Settings(attestation_public_key=key, dev_grants="demo=lots")
    monkeypatch.setenv("COCOON_DEV_GRANTS", "demo=7")
    assert Settings(attestation_public_key=key).grants() == {"demo": 7}


def _record(worker_id: str, verdict) -> BroadcastRecord:
    value = None if verdict is None else verdict.to_avro()
    return BroadcastRecord("attestation.verdicts", worker_id, "v", value, 0, [])


def test_only_verdicts_signed_by_the_pinned_key_give_a_worker_its_key():
    attestor, forger, keys = Attestor(), Attestor(), WorkerKeys.generate()
    mirror = VerdictKeys(attestor.public)
    mirror.on_record(_record("w-1", forger.verdict("w-1", keys)))
    assert mirror.current_key("w-1") is None
    mirror.on_record(_record("w-1", attestor.verdict("w-1", keys)))
    assert mirror.current_key("w-1") == keys.public.signing_key
    # Filed under another worker's key: not w-2's verdict.
    mirror.on_record(_record("w-2", attestor.verdict("w-1", keys)))
    assert mirror.current_key("w-2") is None
    mirror.on_record(_record("w-1", attestor.verdict("w-1", keys, status="REVOKED")))
    assert mirror.current_key("w-1") is None
    mirror.on_record(_record("w-1", attestor.verdict("w-1", keys)))
    mirror.on_record(_record("w-1", None))  # tombstone
    assert mirror.current_key("w-1") is None
    later = VerdictKeys(attestor.public, clock=lambda: 4_000_000_000.0)  # long after expiry
    later.on_record(_record("w-1", attestor.verdict("w-1", keys)))
    assert later.current_key("w-1") is None
