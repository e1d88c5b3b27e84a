"""Restarts from a snapshot (`billing.snapshots`) plus the ledger after it, on the real broker.

Same prices as test_billing_service.py: each request holds 50,000; each receipt charges 30,000.
"""

from __future__ import annotations

from billing_service_support import network, receipt, request, running

from cocoon.billing.audit import audit
from cocoon.billing.stream_handlers import Processor
from cocoon.billing.stream_replay import read_ledger, read_ledger_from
from cocoon.billing.stream_snapshot import (
    SNAPSHOT_RECORD,
    SNAPSHOTS_TOPIC,
    read_snapshot,
    snapshot_records,
)
from cocoon.core.codec.timestamps import now_millis
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.request_ids import new_request_id

HOLD, CHARGE, FEE = 50_000, 30_000, 24_000


def rid(account: str = "alice") -> str:
    """A request id as the gateway mints it: co-partitioned with its account."""
    return new_request_id(account)


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


async def test_a_request_whose_hold_a_snapshot_lost_is_dead_lettered_and_billing_goes_on(
    kafka_bootstrap, unique_name
):
    """A snapshot in which a held request is neither open nor settled (the state the chaos
    test once crashed in with a KeyError): its replay is dead-lettered with the reason, and
    billing keeps serving."""
    worker = WorkerKeys.generate()
    async with network(kafka_bootstrap, unique_name, grants="alice=10000000") as net:
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))
        paid = rid()
        asked = request(paid, "alice")  # sent again below, byte for byte (a replay)
        async with running(net.settings) as first:
            await net.send("inference.requests", asked)
            await net.send("usage.receipts", receipt(worker, paid, "w-1"))
            await net.until(lambda: net.seen.causes("charge:"))
            state = first.processor.state()
        # The newest snapshot, with every entry (no tail), but `paid` no longer settled.
        ends = (await read_ledger_from(kafka_bootstrap, prefix=net.prefix)).ends
        del state["engine"]["closed"][paid]
        owner, seq = net.settings.transactional_id, state["engine"]["ledger"]["count"]
        for record in snapshot_records(owner, seq, state, ends, now_millis()):
            await net.producer.send(SNAPSHOTS_TOPIC, record, record=SNAPSHOT_RECORD)

        async with running(net.settings) as second:
            assert second.restored == (seq, 0)
            await net.send("inference.requests", asked)
            letter = (await net.until(lambda: net.seen.dead_letters))[0]
            assert letter["reason"] == "INVALID_VALUE"
            assert f"hold:{paid} is in the ledger, but the request is neither" in letter["error"]
            nxt = rid()
            await net.send("inference.requests", request(nxt, "alice"))
            held = await net.until(lambda: net.seen.reservations.get(nxt))
            assert [r["status"] for r in held] == ["HELD"]
        assert net.seen.causes("hold:") == sorted([f"hold:{paid}", f"hold:{nxt}"])
