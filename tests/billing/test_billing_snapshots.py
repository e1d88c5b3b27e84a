"""Restarts from a snapshot (`billing.snapshots`) plus the ledger after it, on the real broker.

Same prices as test_billing_service.py: each request holds 50,000; each receipt charges 30,000.
"""

from __future__ import annotations

import uuid

from billing_service_support import network, receipt, request, running

from cocoon.billing.audit import audit
from cocoon.billing.stream_handlers import Processor
from cocoon.billing.stream_replay import read_ledger
from cocoon.billing.stream_snapshot import read_snapshot
from cocoon.core.crypto.keys import WorkerKeys

HOLD, CHARGE, FEE = 50_000, 30_000, 24_000


def rid() -> str:
    return str(uuid.uuid4())


def full_replay(entries, service) -> Processor:
    """What a start without snapshots rebuilds (the whole ledger, as before snapshots)."""
    return Processor(
        service.registry.prices,
        service.verify,
        entries,
        hold_grace_ms=0,
        outcome_grace_ms=0,
        attested_address=service.keys.payout_address,
    )


async def test_a_restart_restores_the_snapshot_and_replays_only_the_ledger_after_it(
    kafka_bootstrap, unique_name
):
    worker, forger = WorkerKeys.generate(), WorkerKeys.generate()
    async with network(kafka_bootstrap, unique_name, grants="alice=10000000") as net:
        settings = net.settings.model_copy(update={"snapshot_every_entries": 5})
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))
        paid, held = [rid() for _ in range(6)], [rid() for _ in range(3)]
        async with running(settings) as first:
            for r in paid + held:
                await net.send("inference.requests", request(r, "alice"))
            await net.until(lambda: all(r in net.seen.reservations for r in paid + held))
            receipts = {r: receipt(worker, r, "w-1") for r in paid}
            for r in paid:
                await net.send("usage.receipts", receipts[r])
            await net.send("usage.receipts", receipt(forger, held[0], "w-1"))
            await net.until(lambda: len(net.seen.causes("charge:")) == len(paid))
            await net.until(lambda: len(net.seen.causes("reject:")) == 1)
            before = first.processor.state()
            total = len(first.processor.engine.ledger)

        snapshot = await read_snapshot(
            kafka_bootstrap, settings.transactional_id, prefix=net.prefix
        )
        assert snapshot is not None and 5 <= snapshot.seq <= total
        async with running(settings) as second:
            # Restored, not replayed: the snapshot's entries are not read again.
            assert second.restored == (snapshot.seq, total - snapshot.seq)
            # Exactly the state the first instance had, and the one a full replay builds:
            # balances, open holds, settled requests, the rejection, earnings, balance records.
            assert second.processor.state() == before
            entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
            assert len(entries) == total
            assert full_replay(entries, second).state() == before
            # It goes on from there: the open hold it restored captures; a receipt it already
            # charged is a duplicate, not a second charge.
            await net.send("usage.receipts", receipt(worker, held[1], "w-1"))
            await net.send("usage.receipts", receipts[paid[0]])
            await net.until(lambda: len(net.seen.causes("charge:")) == len(paid) + 1)

        assert net.seen.causes("reject:") == [net.seen.causes("reject:")[0]]
        alice = 10_000_000 - (len(paid) + 1) * CHARGE - 2 * HOLD
        assert net.balance("alice") == (alice, 2 * HOLD)
        assert net.balance("worker:w-1") == ((len(paid) + 1) * FEE, 0)
        assert audit(await read_ledger(kafka_bootstrap, prefix=net.prefix)) == []
