"""Deposit watcher against the pytvm-backed node: exactly once, after confirmations, never lost."""

from __future__ import annotations

import pytest
from billing_support import Workers, engine_with
from ton_support import TON, UserWallet, deployed_wallet

from cocoon.billing.audit import audit
from cocoon.billing.engine import BillingEngine
from cocoon.billing.ton.api import TonApi
from cocoon.billing.ton.deposits import DepositWatcher
from cocoon.network.ton_chain import TonNode


@pytest.fixture
def node():
    with TonNode(block_interval=None) as n:
        yield n


@pytest.fixture
async def api(node):
    client = TonApi(node.url)
    yield client
    await client.aclose()


@pytest.fixture
def engine() -> BillingEngine:
    e = engine_with(Workers())
    e.open_account("acct-1")
    e.open_account("acct-2")
    return e


@pytest.fixture
def deposit_address(node) -> str:
    # The deposit wallet is a real deployed v4r2 wallet (so bounceable transfers are accepted).
    wallet = deployed_wallet(node, TON)
    node.produce_block()
    return wallet.address


async def test_credit_after_confirmations_exactly_once_across_repolls_and_restart(
    node, api, engine, deposit_address
):
    user = UserWallet(node)
    watcher = DepositWatcher(api, engine, deposit_address, confirmations=2)
    user.send(deposit_address, 3 * TON, "acct-1", bounceable=True)
    assert await watcher.poll() == []  # seen, not yet confirmed
    node.produce_block()
    assert await watcher.poll() == []
    node.produce_block()
    [credit] = await watcher.poll()
    assert (credit.client_id, credit.amount, credit.credited_now) == ("acct-1", 3 * TON, True)
    assert engine.available("acct-1") == 3 * TON
    assert await watcher.poll() == []
    # A fresh watcher that lost its cursor re-reads the whole history: nothing is credited twice.
    forgetful = DepositWatcher(api, engine, deposit_address, confirmations=0)
    forgetful.cursor_lt = 0
    again = await forgetful.poll()
    assert [o.credited_now for o in again] == [False]
    # A restarted watcher resumes after the last credited transaction.
    restarted = DepositWatcher(api, engine, deposit_address, confirmations=0)
    assert restarted.cursor_lt == credit_lt(engine)
    assert engine.available("acct-1") == 3 * TON
    assert audit(engine.ledger) == []


def credit_lt(engine) -> int:
    [entry] = [e for e in engine.ledger if e.kind == "deposit"]
    return int(entry.entry_id.split(":")[1])


async def test_unknown_malformed_or_missing_comments_are_held_unclaimed(
    node, api, engine, deposit_address
):
    user = UserWallet(node)
    user.send(deposit_address, 1 * TON, "nobody-here")
    user.send(deposit_address, 2 * TON, "not an id!")
    user.send(deposit_address, 3 * TON, b"\xde\xad\xbe\xef")  # binary body, no text op
    user.send(deposit_address, 4 * TON)  # no comment at all
    user.send(deposit_address, 5 * TON, " acct-2 ")
    watcher = DepositWatcher(api, engine, deposit_address, confirmations=0)
    outcomes = await watcher.poll()
    reasons = [(o.client_id, o.amount // TON, o.reason) for o in outcomes]
    assert reasons == [
        (None, 1, "unknown account 'nobody-here'"),
        (None, 2, "comment is not an account id: 'not an id!'"),
        (None, 3, "body is not a text comment"),
        (None, 4, "no comment"),
        ("acct-2", 5, ""),
    ]
    assert engine.ledger.balance("unclaimed") == 10 * TON
    assert engine.available("acct-2") == 5 * TON
    # Nothing is lost: an operator assigns the unknown one once its owner is known.
    engine.open_account("nobody-here")
    engine.claim_unclaimed(outcomes[0].deposit_id.removeprefix("deposit:"), "nobody-here")
    assert engine.available("nobody-here") == TON
    assert engine.ledger.balance("ton:deposits") == -15 * TON
    assert audit(engine.ledger) == []


async def test_a_bounced_transfer_is_not_credited(node, api, engine):
    undeployed = "0:" + "44" * 32  # bounceable transfer to a wallet that does not exist yet
    user = UserWallet(node)
    user.send(undeployed, 2 * TON, "acct-1", bounceable=True)
    node.produce_block()
    assert node.balance(undeployed) == 0  # the node bounced it back
    watcher = DepositWatcher(api, engine, undeployed, confirmations=0)
    assert await watcher.poll() == []
    assert engine.available("acct-1") == 0
