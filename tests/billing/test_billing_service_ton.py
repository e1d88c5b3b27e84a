"""The Kafka billing service with TON on: deposits credited and workers paid, on the ledger.

The chain is the pytvm-backed node double (cocoon.network.ton_chain): the wallet contract's
real code checks every signature and seqno. Prices as in test_billing_service.py: a receipt of
300 prompt (100 cached) and 50 completion tokens earns the worker 24,000 nanoTON.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from billing_service_support import network, receipt, request, running
from ton_support import TON, UserWallet, deployed_wallet

from cocoon.attestation.registry_topic import publish_registry
from cocoon.billing.audit import audit
from cocoon.billing.stream_replay import read_ledger
from cocoon.billing.ton.wallet import PayoutWallet
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.request_ids import co_partitioned_id
from cocoon.network.ton_chain import TonNode

FEE = 24_000
THRESHOLD = 40_000  # two receipts' fees
DESTINATION = "0:" + "d1" * 32
ATTESTED = "0:" + "a7" * 32  # w-2's own address, in its verdict; w-2 has no registry entry


@pytest.fixture
def node():
    with TonNode(block_interval=0.05) as n:
        yield n


async def test_deposits_are_credited_and_earnings_paid_out_once(
    kafka_bootstrap, unique_name, node, tmp_path, monkeypatch
):
    deposit_wallet = deployed_wallet(node, TON, testnet=True)
    payout_seed = os.urandom(32)
    payout_wallet = PayoutWallet(payout_seed, testnet=True)
    node.fund(payout_wallet.address, 10 * TON)
    secret = tmp_path / "wallet.hex"
    secret.write_text(payout_seed.hex())
    for name, value in {
        "COCOON_TON_NETWORK": "testnet",
        "COCOON_TON_API_URL": node.url,
        "COCOON_TON_DEPOSIT_ADDRESS": deposit_wallet.address,
        "COCOON_TON_WALLET_SECRET_FILE": str(secret),
        "COCOON_TON_CONFIRMATIONS": "1",
        "COCOON_TON_PAYOUT_THRESHOLD": str(THRESHOLD),
    }.items():
        monkeypatch.setenv(name, value)

    worker, joined = WorkerKeys.generate(), WorkerKeys.generate()
    async with network(kafka_bootstrap, unique_name, grants="alice=1000000") as net:
        net.settings = net.settings.model_copy(
            update={"ton_poll_seconds": 0.2, "payout_store": tmp_path / "payouts.sqlite"}
        )
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))
        verdict = net.attestor.verdict("w-2", joined, payout_address=ATTESTED)
        await net.send("attestation.verdicts", verdict)
        await publish_registry(
            kafka_bootstrap,
            lambda r: r.set_worker("w-1", coefficient=1000, payout_address=DESTINATION),
            prefix=net.prefix,
            updated_by="test",
        )
        async with running(net.settings):
            # A client tops up with a transfer whose comment names its account.
            UserWallet(node).send(deposit_wallet.address, 2 * TON, "alice", bounceable=True)
            await net.until(lambda: net.seen.causes("deposit:") != ["deposit:dev-grant:alice"], 20)

            rids = [co_partitioned_id(f"r-{n}-{os.urandom(3).hex()}", "alice") for n in range(4)]
            for rid in rids:
                await net.send("inference.requests", request(rid, "alice"))
            await net.until(lambda: all(r in net.seen.reservations for r in rids))
            for rid, (keys, w) in zip(rids, [(worker, "w-1"), (joined, "w-2")] * 2, strict=True):
                await net.send("usage.receipts", receipt(keys, rid, w))
            # The earnings cross the threshold: one payout each, confirmed on chain; w-2 is
            # paid to the address its verdict attests, with no registry entry of its own.
            await net.until(lambda: len(net.seen.causes("payout-confirmed:")) == 2, 30)
            await net.until(lambda: net.balance("worker:w-1") == (0, 0))
            await net.until(lambda: net.balance("worker:w-2") == (0, 0))
            assert node.balance(DESTINATION) == 2 * FEE
            assert node.balance(ATTESTED) == 2 * FEE

        entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
        kinds = [e.kind for e in entries]
        assert kinds.count("payout") == kinds.count("payout_confirmed") == 2
        charges = {e.meta["worker_id"]: e.meta.get("payout_address") for e in entries
                   if e.kind == "charge"}  # fmt: skip
        assert charges == {"w-1": None, "w-2": ATTESTED}
        deposits = [e for e in entries if e.kind == "deposit"]
        assert sorted(e.meta["amount"] for e in deposits) == [1_000_000, 2 * TON]
        assert net.balance("alice")[0] == 1_000_000 + 2 * TON - 4 * 30_000
        assert audit(entries, require_no_open_holds=True) == []

        # Each worker's owner sees its side of those entries on billing.earnings, and nothing
        # of the account that paid: the fees credited under the attested address, the payout.
        await net.until(lambda: len(net.seen.earnings) == 6)
        earnings = {(e["worker_id"], e["kind"], e["amount_nanoton"], e["payout_address"])
                    for e in net.seen.earnings}  # fmt: skip
        assert earnings == {
            ("w-1", "CREDIT", FEE, None),
            ("w-1", "PAYOUT", -2 * FEE, None),
            ("w-2", "CREDIT", FEE, ATTESTED),
            ("w-2", "PAYOUT", -2 * FEE, ATTESTED),
        }
        credited = [e["request_id"] for e in net.seen.earnings if e["kind"] == "CREDIT"]
        assert sorted(credited) == sorted(rids)
        assert not any("alice" in str(e) for e in net.seen.earnings)

        # A new instance with the same payout store pays nothing again.
        sent_before = len(node.sent_bocs)
        async with running(net.settings):
            await asyncio.sleep(1.5)  # several TON steps (0.2 s) over new blocks
        assert len(node.sent_bocs) == sent_before
        assert node.balance(DESTINATION) == 2 * FEE
        assert node.balance(ATTESTED) == 2 * FEE
