"""`cocoon worker status` and `cocoon worker audit` against a real broker and the TON node double.

The records are billing's and attestation's as they appear on the bus (written here, the way
those services write them); the receipts are really signed and kept in the worker's own file;
the payouts are real wallet transfers run by TON's emulator (cocoon.network.ton_chain). Two
faults are injected: billing never credits one receipt, and one payout it records never reaches
the chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocoon.billing.ton.wallet import Order, payout_wallet
from cocoon.core.bus import BusProducer
from cocoon.core.bus.admin import apply_topics
from cocoon.core.catalog import dead_letter_spec, default_catalog
from cocoon.core.contracts import Topic
from cocoon.core.crypto import UsageReceipt, WorkerKeys, sign_receipt
from cocoon.network.ton_chain import TonNode
from cocoon.worker_proxy.cli import app
from cocoon.worker_proxy.config import WorkerConfig
from cocoon.worker_proxy.receipts_log import ReceiptLog

TOPICS = [
    Topic.ATTESTATION_VERDICTS,
    Topic.BILLING_EARNINGS,
    Topic.WORKER_HEARTBEATS,
    Topic.SCHEDULER_STANDINGS,
]
TON = 10**9
HOUR_MS = 3_600_000


def receipt(keys: WorkerKeys, worker_id: str, completion: int, at_ms: int):
    request_id = str(uuid.uuid4())
    return sign_receipt(
        keys,
        UsageReceipt(
            receipt_id=f"{request_id}:1",
            request_id=request_id,
            attempt=1,
            worker_id=worker_id,
            model="smollm2-135m-instruct",
            prompt_tokens=10,
            cached_prompt_tokens=0,
            completion_tokens=completion,
            reasoning_tokens=0,
            coefficient=1000,
            completed=True,
            started_at=at_ms - 500,
            finished_at=at_ms,
        ),
    )


def earning(worker_id: str, kind: str, amount: int, cause: str, request_id: str | None, at: int):
    return {
        "entry_id": f"{kind.lower()}:{cause}@worker:{worker_id}",
        "worker_id": worker_id,
        "kind": kind,
        "amount_nanoton": amount,
        "request_id": request_id,
        "payout_address": None,
        "created_at": at,
    }


def verdict(worker_id: str, address: str, now_ms: int) -> dict:
    return {
        "verdict_id": f"vd-{uuid.uuid4().hex[:8]}",
        "worker_id": worker_id,
        "evidence_id": "ev-1",
        "status": "TRUSTED",
        "reason": None,
        "image_hash": bytes(32),
        "models": ["smollm2-135m-instruct"],
        "signing_key": bytes(32),
        "hpke_public_key": None,
        "hpke_suite": None,
        "tcb_status": "UpToDate",
        "registry_version": 1,
        "issued_at": now_ms,
        "expires_at": now_ms + 6 * HOUR_MS,
        "attestor_key_id": "att-test",
        "signature": bytes(64),
        "payout_address": address,
    }


def pay(node: TonNode, wallet, seqno: int, address: str, amount: int, payout_id: str) -> None:
    order = Order(address, amount, f"cocoon payout {payout_id}")
    node.send_boc(wallet.sign(seqno, [order], valid_until=node.now() + 60).boc)
    deadline = time.monotonic() + 30
    while node.balance(address) < amount and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def prefix(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> str:
    prefix = f"wa-{uuid.uuid4().hex[:8]}."
    specs = [default_catalog()[t] for t in TOPICS]
    apply_topics(kafka_bootstrap, specs + [dead_letter_spec(s) for s in specs], prefix=prefix)
    monkeypatch.setenv("COCOON_TOPIC_PREFIX", prefix)
    return prefix


async def publish(bootstrap: str, prefix: str, records: list[tuple[str, dict]]) -> None:
    async with BusProducer(bootstrap, prefix=prefix) as producer:
        for topic, value in records:
            await producer.send(topic, value)


def test_audit_finds_a_receipt_never_credited_and_a_payout_never_arrived(
    kafka_bootstrap: str, prefix: str, kafka_credentials, tmp_path: Path, monkeypatch
) -> None:
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    address = "0:" + os.urandom(32).hex()
    keys = WorkerKeys.generate()
    now = int(time.time() * 1000)
    earlier = now - 2 * HOUR_MS
    signed = [receipt(keys, worker_id, n, earlier) for n in (40, 60, 25)]
    log = ReceiptLog(tmp_path / "receipts.jsonl", address)
    for r in signed:
        log.append(r)
    fee = {r.receipt.request_id: 2 * TON * r.receipt.completion_tokens // 100 for r in signed}
    credited = signed[:2]  # fault 1: billing drops the third receipt
    paid = sum(fee[r.receipt.request_id] for r in credited)
    records = [(Topic.ATTESTATION_VERDICTS, verdict(worker_id, address, now))]
    credits = [
        earning(worker_id, "CREDIT", fee[rid], f"rcpt:{rid}:1", rid, earlier)
        for rid in (r.receipt.request_id for r in credited)
    ]
    payout = earning(worker_id, "PAYOUT", -paid, "p-1", None, earlier)
    records += [(Topic.BILLING_EARNINGS, e) for e in (*credits, payout)]
    # Read twice (a reader restarted mid-topic): each movement still counts once.
    records.append(records[-1])
    asyncio.run(publish(kafka_bootstrap, prefix, records))

    config = tmp_path / "worker.toml"
    WorkerConfig(
        worker_id=worker_id,
        payout_address=address,
        model="smollm2-135m-instruct",
        engine_url="http://127.0.0.1:8080/v1",
        coefficient=1000,
        max_active_requests=4,
        kafka_bootstrap=kafka_bootstrap,
        receipts_file=str(log.path),
    ).write(config)
    # As a GPU owner runs them: with the owner's principal only (not the admin's).
    owner = kafka_credentials.env("worker-owner", prefix) if kafka_credentials else {}
    runner = CliRunner()

    def invoke(args: list[str]):
        with monkeypatch.context() as as_owner:
            for name, value in owner.items():
                as_owner.setenv(name, value)
            return runner.invoke(app, args)

    status = invoke(["status", "--config", str(config), "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.output)
    assert shown["verdict"] == "TRUSTED" and shown["payout_address"] == address
    assert shown["tcb_status"] == "UpToDate" and shown["expires_at"]
    assert shown["requests_served"] == 3 and shown["completion_tokens"] == 125
    assert shown["earned_nanoton"] == paid and shown["paid_nanoton"] == paid
    assert shown["requests_credited"] == 2 and shown["pending_nanoton"] == 0
    table = invoke(["status", "--config", str(config)])
    assert table.exit_code == 0 and f"{paid:,} nanoTON" in table.output

    with TonNode() as node:
        wallet = payout_wallet("v4r2", os.urandom(32))
        node.fund(wallet.address, 100 * TON)
        first = fee[credited[0].receipt.request_id]
        pay(node, wallet, 0, address, first, "p-1")  # fault 2: only part of p-1 arrives
        audit_args = ["audit", "--config", str(config), "--ton-api-url", node.url, "--json"]
        audit_args += ["--threshold", str(TON // 10), "--delay", "60", "--grace", "60"]
        result = invoke(audit_args)
        assert result.exit_code == 1, result.output
        findings = {f["kind"]: f for f in json.loads(result.output)}
        assert set(findings) == {"receipt_not_credited", "credit_not_paid", "payout_not_on_chain"}
        assert findings["receipt_not_credited"]["request_id"] == signed[2].receipt.request_id
        assert findings["payout_not_on_chain"]["amount_nanoton"] == paid - first
        assert findings["credit_not_paid"]["amount_nanoton"] == paid - first

        # The rest arrives and billing credits the dropped receipt: nothing is missing any more.
        pay(node, wallet, 1, address, paid - first, "p-1b")
        rid = signed[2].receipt.request_id
        late = [(Topic.BILLING_EARNINGS, earning(worker_id, "CREDIT", 1, f"r:{rid}", rid, now))]
        asyncio.run(publish(kafka_bootstrap, prefix, late))
        result = invoke(audit_args)
        assert result.exit_code == 0 and json.loads(result.output) == [], result.output


def test_an_owner_who_changed_address_is_audited_and_shown_at_both_addresses(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """Earnings made under the first address are paid there, those after the re-attestation at
    the second: the audit and `status --ton-api-url` look at both, not at the configured one."""
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    old, new = ("0:" + os.urandom(32).hex() for _ in range(2))
    keys = WorkerKeys.generate()
    now = int(time.time() * 1000)
    earlier = now - 2 * HOUR_MS
    before, after = receipt(keys, worker_id, 40, earlier), receipt(keys, worker_id, 60, earlier)
    ReceiptLog(tmp_path / "receipts.jsonl", old).append(before)
    ReceiptLog(tmp_path / "receipts.jsonl", new).append(after)
    fee = {
        r.receipt.request_id: 2 * TON * r.receipt.completion_tokens // 100 for r in (before, after)
    }
    records = [
        (Topic.ATTESTATION_VERDICTS, verdict(worker_id, old, earlier)),
        (Topic.ATTESTATION_VERDICTS, verdict(worker_id, new, now)),
    ]
    for n, signed in enumerate((before, after)):
        rid = signed.receipt.request_id
        credit = earning(worker_id, "CREDIT", fee[rid], f"r:{rid}", rid, earlier)
        payout = earning(worker_id, "PAYOUT", -fee[rid], f"p-{n}", None, earlier)
        records += [(Topic.BILLING_EARNINGS, credit), (Topic.BILLING_EARNINGS, payout)]
    asyncio.run(publish(kafka_bootstrap, prefix, records))
    config = tmp_path / "worker.toml"
    WorkerConfig(
        worker_id=worker_id,
        payout_address=new,  # the host's configuration now names only the new address
        model="smollm2-135m-instruct",
        engine_url="http://127.0.0.1:8080/v1",
        coefficient=1000,
        max_active_requests=4,
        kafka_bootstrap=kafka_bootstrap,
        receipts_file=str(tmp_path / "receipts.jsonl"),
    ).write(config)
    runner = CliRunner()

    with TonNode() as node:
        wallet = payout_wallet("v4r2", os.urandom(32))
        node.fund(wallet.address, 100 * TON)
        pay(node, wallet, 0, old, fee[before.receipt.request_id], "p-0")
        pay(node, wallet, 1, new, fee[after.receipt.request_id], "p-1")
        audit_args = ["audit", "--config", str(config), "--ton-api-url", node.url, "--json"]
        audit_args += ["--threshold", "1", "--delay", "60", "--grace", "60"]
        result = runner.invoke(app, audit_args)
        assert result.exit_code == 0 and json.loads(result.output) == [], result.output

        status_args = ["status", "--config", str(config), "--json", "--ton-api-url", node.url]
        status = runner.invoke(app, status_args)
        assert status.exit_code == 0, status.output
        shown = json.loads(status.output)
        assert shown["payout_address"] == new and shown["payout_addresses"] == [old, new]
        assert shown["confirmed_on_chain_nanoton"] == sum(fee.values())
        assert shown["payouts_on_chain"] == 2
