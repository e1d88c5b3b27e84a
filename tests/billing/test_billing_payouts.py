"""Payouts against the pytvm-backed node: batched, confirmed, and never paid twice, even when the
payout process is SIGKILLed between signing and confirmation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from billing_support import Workers
from payout_process import PRICES, THRESHOLD
from ton_support import TON

from cocoon.billing.audit import audit
from cocoon.billing.engine import BillingEngine
from cocoon.billing.journal import FileJournal
from cocoon.billing.money import BillingError
from cocoon.billing.pricing import Usage
from cocoon.billing.ton.api import TonApi, TonApiError
from cocoon.billing.ton.payouts import PayoutRow, PayoutService, PayoutStore
from cocoon.billing.ton.wallet import (
    HIGHLOAD_MAX_ORDERS,
    HighloadPayoutWallet,
    Order,
    PayoutWallet,
    payout_wallet,
)
from cocoon.network.ton_chain import TonNode

HERE = Path(__file__).parent
DESTS = {"w1": "0:" + "a1" * 32, "w2": "0:" + "b2" * 32, "w3": "0:" + "c3" * 32}


def earn(engine: BillingEngine, workers: Workers, worker: str, tokens: int, n: int) -> None:
    """Real client requests captured from signed receipts give the worker its earnings."""
    rid = f"{worker}-req-{n}"
    engine.open_hold(rid, "acct", max_tokens=tokens, prompt_size=10, max_coefficient=1000,
                     expires_at_ms=10**12)  # fmt: skip
    engine.capture(workers.receipt(rid, worker, Usage(10, 0, tokens, 0)))


def funded_engine(tmp_path: Path, workers: Workers) -> tuple[BillingEngine, FileJournal]:
    journal = FileJournal(tmp_path / "ledger.jsonl")
    engine = BillingEngine(PRICES, workers.verifier(), sink=journal)
    engine.open_account("acct")
    engine.credit_deposit("1:aa", 100 * TON, "acct")
    return engine, journal


@pytest.fixture
def workers() -> Workers:
    w = Workers()
    for worker in DESTS:
        w.add(worker)
    return w


@pytest.fixture(params=["v4r2", "highload-v2"])
def kind(request) -> str:
    """Every payout rule holds for both wallets (docs/billing.md)."""
    return request.param


@pytest.fixture
def node():
    with TonNode(block_interval=0.03) as n:
        yield n


async def settle(service: PayoutService, node: TonNode, rounds: int = 40):
    import asyncio

    reports = []
    for _ in range(rounds):
        reports.append(await service.step())
        if not service.store.batches("signed", "sent") and not service.store.payouts("planned"):
            return reports
        await asyncio.sleep(0.05)
    raise AssertionError(f"payouts did not settle: {reports[-3:]}")


async def test_batch_of_workers_is_paid_once_and_the_ledger_follows(tmp_path, node, workers, kind):
    engine, _ = funded_engine(tmp_path, workers)
    earn(engine, workers, "w1", 1000, 1)  # 0.8 TON: above the threshold
    earn(engine, workers, "w2", 2000, 1)  # 1.6 TON
    earn(engine, workers, "w3", 100, 1)  # 0.088 TON: below, waits
    wallet = payout_wallet(kind, os.urandom(32))
    node.fund(wallet.address, 10 * TON)
    api = TonApi(node.url)
    store = PayoutStore(tmp_path / "payouts.sqlite")
    service = PayoutService(engine, api, wallet, store, DESTS.get, threshold=THRESHOLD)
    await settle(service, node)
    w1, w2 = 808_000_000, 1_608_000_000  # (10 prompt + tokens) x 0.0008 TON
    assert node.balance(DESTS["w1"]) == w1 and node.balance(DESTS["w2"]) == w2
    assert node.balance(DESTS["w3"]) == 0
    assert engine.ledger.balance("ton:payouts") == w1 + w2
    assert engine.earnings("w1") == 0 and engine.earnings("w3") == 88_000_000
    assert [b.status for b in store.batches()] == ["confirmed"]  # one external message, 2 orders
    assert audit(engine.ledger, require_no_open_holds=True) == []
    # More steps change nothing.
    await service.step()
    assert node.balance(DESTS["w1"]) == w1 and len(node.sent_bocs) == 1
    await api.aclose()


async def test_lost_message_expires_and_is_signed_again_once(tmp_path, node, workers, kind):
    engine, _ = funded_engine(tmp_path, workers)
    earn(engine, workers, "w1", 1000, 1)
    wallet = payout_wallet(kind, os.urandom(32))
    node.fund(wallet.address, 10 * TON)
    api = TonApi(node.url)
    store = PayoutStore(tmp_path / "payouts.sqlite")
    service = PayoutService(engine, api, wallet, store, DESTS.get, threshold=THRESHOLD,
                            ttl_s=60, expiry_margin_s=30, clock=node.now)  # fmt: skip
    node.lose_next_sends = 2  # the first send and the first re-send vanish
    first = await service.step()
    assert first.signed and node.balance(DESTS["w1"]) == 0
    await service.step()  # not expired yet: re-sends the same bytes (lost again)
    assert node.sent_bocs[0] == node.sent_bocs[1]
    node.advance_time(91)  # past valid_until + margin: the old message can never land
    with pytest.raises(TonApiError, match="not accepted"):
        await api.send_boc(node.sent_bocs[0])
    report = await service.step()
    assert report.expired == [first.signed] and report.signed not in (None, first.signed)
    await settle(service, node)
    assert node.balance(DESTS["w1"]) == 808_000_000
    assert [b.status for b in store.batches()] == ["expired", "confirmed"]
    assert audit(engine.ledger) == []
    await api.aclose()


async def test_unpayable_workers_keep_their_earnings(tmp_path, node, workers):
    engine, _ = funded_engine(tmp_path, workers)
    earn(engine, workers, "w1", 1000, 1)
    earn(engine, workers, "w2", 1000, 1)
    wallet = PayoutWallet(os.urandom(32))
    node.fund(wallet.address, TON // 2)  # too little for any transfer above the threshold
    api = TonApi(node.url)
    store = PayoutStore(tmp_path / "payouts.sqlite")
    bad = {"w1": "EQnot-an-address", "w2": DESTS["w2"]}
    service = PayoutService(engine, api, wallet, store, bad.get, threshold=THRESHOLD)
    report = await service.step()
    assert "malformed TON address" in report.skipped["w1"]
    assert engine.earnings("w1") == 808_000_000
    assert report.signed is None and node.sent_bocs == []
    assert engine.ledger.balance("payouts:pending") == 808_000_000  # w2 waits, not lost
    assert audit(engine.ledger) == []
    await api.aclose()


async def test_nothing_is_signed_unless_the_ledger_move_is_made_durable_first(
    tmp_path, node, workers
):
    engine, _ = funded_engine(tmp_path, workers)
    earn(engine, workers, "w1", 1000, 1)
    wallet = PayoutWallet(os.urandom(32))
    node.fund(wallet.address, 10 * TON)
    api = TonApi(node.url)
    store = PayoutStore(tmp_path / "payouts.sqlite")
    durable: list[float] = []

    async def fenced() -> None:  # what the Kafka service's commit does once it is fenced
        raise RuntimeError("ProducerFenced")

    service = PayoutService(engine, api, wallet, store, DESTS.get, threshold=THRESHOLD,
                            before_sign=fenced)  # fmt: skip
    with pytest.raises(RuntimeError, match="ProducerFenced"):
        await service.step()
    assert node.sent_bocs == [] and store.batches() == []  # planned, never signed

    async def commit() -> None:
        durable.append(engine.ledger.balance("payouts:pending"))

    service = PayoutService(engine, api, wallet, store, DESTS.get, threshold=THRESHOLD,
                            before_sign=commit)  # fmt: skip
    await settle(service, node)
    assert durable[0] == 808_000_000  # the move was in the ledger when it was made durable
    assert node.balance(DESTS["w1"]) == 808_000_000
    await api.aclose()


def run_payout_process(node: TonNode, workdir: Path, seed: bytes, crash_at: str, kind: str):
    return subprocess.run(
        [sys.executable, str(HERE / "payout_process.py"), node.url, str(workdir), seed.hex(),
         json.dumps(DESTS), crash_at, kind],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("crash_at", ["signed", "sent"])
def test_sigkill_between_signing_and_confirmation_never_pays_twice(tmp_path, node, workers,
                                                                    crash_at, kind):  # fmt: skip
    engine, journal = funded_engine(tmp_path, workers)
    earn(engine, workers, "w1", 1000, 1)
    earn(engine, workers, "w2", 3000, 1)
    journal.close()
    seed = os.urandom(32)
    address = payout_wallet(kind, seed).address
    node.fund(address, 20 * TON)

    killed = run_payout_process(node, tmp_path, seed, crash_at, kind)
    assert killed.returncode == -9, killed.stderr
    store = PayoutStore(tmp_path / "payouts.sqlite")
    [batch] = store.batches()
    assert batch.status == crash_at  # committed before the process died
    assert len(node.sent_bocs) == (0 if crash_at == "signed" else 1)

    for _ in range(40):  # restart from persisted state until everything settled
        done = run_payout_process(node, tmp_path, seed, "none", kind)
        assert done.returncode == 0, done.stderr
        if not store.batches("signed", "sent") and not store.payouts("planned"):
            break
    assert node.balance(DESTS["w1"]) == 808_000_000
    assert node.balance(DESTS["w2"]) == 2_408_000_000
    wallet_txs = node.transactions(address)
    paid = [m for t in wallet_txs for m in t["out_msgs"]]
    assert len(paid) == 2  # exactly one transfer per worker reached the chain
    assert {b.status for b in store.batches()} == {"confirmed"}

    final = BillingEngine.replay(FileJournal(tmp_path / "ledger.jsonl").entries(), PRICES,
                                 workers.verifier())  # fmt: skip
    assert final.ledger.balance("ton:payouts") == 808_000_000 + 2_408_000_000
    assert final.ledger.balance("payouts:pending") == 0
    assert final.earnings("w1") == final.earnings("w2") == 0
    assert audit(final.ledger, require_no_open_holds=True) == []


@pytest.mark.parametrize("orders", [1, 3, 4])
async def test_a_first_transfer_deploys_the_wallet_and_carries_up_to_four_orders(node, orders):
    # tonsdk alone inlined the state init and the body into one cell of up to 6 refs at seqno 0:
    # a first batch of 3 or 4 payouts could never be sent.
    wallet = PayoutWallet(os.urandom(32))
    node.fund(wallet.address, 10 * TON)
    dests = [f"0:{n + 1:02x}" + "f0" * 31 for n in range(orders)]
    transfer = wallet.sign(0, [Order(d, 1000 + n, f"p{n}") for n, d in enumerate(dests)],
                           node.now() + 60)  # fmt: skip
    node.send_boc(transfer.boc)
    node.produce_block()
    api = TonApi(node.url)
    assert await api.get_seqno(wallet.address) == 1
    for n, d in enumerate(dests):
        [tx] = await api.iter_transactions_since(d, 0)
        assert tx.in_msg.value == 1000 + n
    await api.aclose()


async def test_a_planned_payout_whose_earnings_were_lost_is_cancelled_not_fatal(
    tmp_path, node, workers
):
    # Another instance planned it on earnings that never got committed (it was fenced): the
    # replayed ledger cannot fund it. It was never signed, so it is dropped, and the earnings
    # that are in the ledger are paid by a new payout.
    engine, _ = funded_engine(tmp_path, workers)
    earn(engine, workers, "w1", 1000, 1)  # 808_000_000 in the ledger
    store = PayoutStore(tmp_path / "payouts.sqlite")
    store.add_payout(PayoutRow("w1.1", "w1", DESTS["w1"], 900_000_000, "planned", None, None), 1)
    wallet = PayoutWallet(os.urandom(32))
    node.fund(wallet.address, 10 * TON)
    api = TonApi(node.url)
    service = PayoutService(engine, api, wallet, store, DESTS.get, threshold=THRESHOLD)
    await settle(service, node)
    assert [(p.payout_id, p.status) for p in store.payouts()] == [
        ("w1.1", "cancelled"),
        ("w1.2", "confirmed"),
    ]
    assert node.balance(DESTS["w1"]) == 808_000_000 and engine.earnings("w1") == 0
    assert audit(engine.ledger) == []
    await api.aclose()


async def test_a_large_payout_run_goes_out_in_as_few_messages_as_the_wallet_allows(
    tmp_path, node, kind
):
    workers = Workers()
    destinations = {}
    for i in range(85):
        workers.add(f"x{i}")
        destinations[f"x{i}"] = f"0:{i + 1:064x}"
    engine, _ = funded_engine(tmp_path, workers)
    for i in range(85):
        earn(engine, workers, f"x{i}", 1000, 1)
    wallet = payout_wallet(kind, os.urandom(32))
    node.fund(wallet.address, 100 * TON)
    api = TonApi(node.url)
    store = PayoutStore(tmp_path / "payouts.sqlite")
    service = PayoutService(engine, api, wallet, store, destinations.get, threshold=THRESHOLD)
    await settle(service, node, rounds=200)
    assert all(node.balance(d) == 808_000_000 for d in destinations.values())
    batches = store.batches()
    assert len(batches) == -(-85 // wallet.max_orders)  # v4r2: 22 messages; highload: 2
    assert {b.status for b in batches} == {"confirmed"}
    paid = [m for t in node.transactions(wallet.address) for m in t["out_msgs"]]
    assert len(paid) == 85
    assert engine.ledger.balance("ton:payouts") == 85 * 808_000_000
    assert audit(engine.ledger, require_no_open_holds=True) == []
    await api.aclose()


async def test_a_highload_first_transfer_deploys_and_carries_its_most_orders(node):
    wallet = HighloadPayoutWallet(os.urandom(32))
    node.fund(wallet.address, 10 * TON)
    dests = [f"0:{n + 1:064x}" for n in range(HIGHLOAD_MAX_ORDERS)]
    orders = [Order(d, 1000 + n, f"cocoon payout x{n}.1") for n, d in enumerate(dests)]
    with pytest.raises(BillingError, match="1 to 80 orders"):
        wallet.sign(1, [*orders, orders[0]], node.now() + 60, deploy=True)
    node.send_boc(wallet.sign(1, orders, node.now() + 60, deploy=True).boc)
    node.produce_block()
    assert [node.balance(d) for d in dests] == [1000 + n for n in range(HIGHLOAD_MAX_ORDERS)]


async def test_each_receipt_is_paid_to_the_address_it_was_earned_under(tmp_path, node, workers):
    """Earnings follow the payout address of the verdict that verified each receipt: a worker
    that re-attests with a new address is paid the old earnings at the old one; earnings under
    no attested address go to the registry's; nothing goes to a banned address."""
    attested: dict[str, str | None] = {"w1": None, "w2": None}
    journal = FileJournal(tmp_path / "ledger.jsonl")
    engine = BillingEngine(PRICES, workers.verifier(), sink=journal, attested_address=attested.get)
    engine.open_account("acct")
    engine.credit_deposit("1:aa", 100 * TON, "acct")
    first, second, banned = "0:" + "e1" * 32, "-1:" + "e2" * 32, "0:" + "e3" * 32
    earn(engine, workers, "w1", 1000, 1)  # under a verdict with no address: the registry's
    attested["w1"] = first
    earn(engine, workers, "w1", 2000, 2)
    attested["w1"] = second  # re-attested with another address
    earn(engine, workers, "w1", 3000, 3)
    attested["w2"] = banned
    earn(engine, workers, "w2", 1000, 1)
    assert engine.earnings_by_address("w1") == {
        "": 808_000_000,
        first: 1_608_000_000,
        second: 2_408_000_000,
    }
    wallet = PayoutWallet(os.urandom(32))
    node.fund(wallet.address, 20 * TON)
    store = PayoutStore(tmp_path / "payouts.sqlite")
    # The registry names an address for w1 (and, wrongly, for w2): it only gets w1's
    # unattested earnings, never what was earned under an attested address.
    registry = {"w1": DESTS["w1"], "w2": DESTS["w2"]}
    service = PayoutService(
        engine, TonApi(node.url), wallet, store, registry.get, threshold=THRESHOLD,
        banned={banned}.__contains__,
    )  # fmt: skip
    reports = await settle(service, node)
    assert node.balance(DESTS["w1"]) == 808_000_000
    assert node.balance(first) == 1_608_000_000
    assert node.balance(second) == 2_408_000_000
    assert node.balance(banned) == 0 and node.balance(DESTS["w2"]) == 0
    assert engine.earnings("w1") == 0
    assert engine.earnings_by_address("w2") == {banned: 808_000_000}
    assert any("banned" in r.skipped.get("w2", "") for r in reports)
    assert audit(engine.ledger) == []
    # A restart replays the same ledger and store: nothing more is paid.
    replayed = BillingEngine.replay(journal.entries(), PRICES, workers.verifier())
    assert replayed.earnings_by_address("w1") == {} and audit(replayed.ledger) == []


def test_a_payout_cannot_draw_on_earnings_under_another_address(tmp_path, workers):
    attested = {"w1": "0:" + "e1" * 32}
    engine = BillingEngine(PRICES, workers.verifier(), attested_address=attested.get)
    engine.open_account("acct")
    engine.credit_deposit("1:aa", 100 * TON, "acct")
    earn(engine, workers, "w1", 1000, 1)
    with pytest.raises(BillingError, match="exceeds the 0 earned under no attested address"):
        engine.start_payout("w1.1", "w1", 808_000_000)
    with pytest.raises(BillingError, match="exceeds"):
        engine.start_payout("w1.1", "w1", 808_000_001, earned_under="0:" + "e1" * 32)
    assert engine.start_payout("w1.1", "w1", 808_000_000, earned_under="0:" + "e1" * 32)
