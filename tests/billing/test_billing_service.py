"""The billing service on the real broker: holds, receipts, releases, restart from the ledger.

Prices in every test: 100 nanoTON per adjusted token, worker fee 80, cached prompt tokens at
0.5x. A request with max_tokens 100 and a 400-byte prompt holds (100 + 400) x 100 = 50,000.
A receipt of 300 prompt (100 cached), 50 completion tokens costs (200 + 50 + 50) x 100 = 30,000:
24,000 to the worker, 6,000 commission, 20,000 of the hold released.
"""

from __future__ import annotations

import asyncio

from billing_service_support import assignment, network, outcome, receipt, request, running
from typer.testing import CliRunner

from cocoon.attestation.registry_topic import publish_registry
from cocoon.billing.audit import audit
from cocoon.billing.cli import app
from cocoon.billing.service import build
from cocoon.billing.stream_replay import read_ledger
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.request_ids import is_co_partitioned, new_request_id
from cocoon.core.telemetry import install_memory_exporter

RUNNER = CliRunner()
HOLD = 50_000
CHARGE, FEE, COMMISSION = 30_000, 24_000, 6_000
PRICE_LIST = {  # the registry's form of the test prices
    "price_per_token": 100,
    "worker_fee_per_token": 80,
    "prompt_bps": 10_000,
    "cached_bps": 5_000,
    "completion_bps": 10_000,
    "reasoning_bps": 10_000,
}


async def cli(*args: str) -> str:
    # In a thread: the CLI runs its own event loop.
    result = await asyncio.to_thread(RUNNER.invoke, app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def rid(account: str = "alice") -> str:
    """A request id as the gateway mints it: co-partitioned with its account."""
    return new_request_id(account)


async def test_grant_holds_and_refusals_carry_the_exact_available(kafka_bootstrap, unique_name):
    async with (
        network(kafka_bootstrap, unique_name, grants="alice=120000") as net,
        running(net.settings),
    ):
        first, big, stranger = rid(), rid(), rid("nobody")
        await net.send("inference.requests", request(first, "alice"))
        held = (await net.until(lambda: net.seen.reservations.get(first)))[0]
        assert (held["status"], held["amount_nanoton"], held["reject_reason"]) == (
            "HELD",
            HOLD,
            None,
        )
        assert await net.until(lambda: net.balance("alice") == (70_000, HOLD))

        # Needs (1000 + 400) x 100 = 140,000 with 70,000 spendable.
        await net.send("inference.requests", request(big, "alice", max_tokens=1000))
        refused = (await net.until(lambda: net.seen.reservations.get(big)))[0]
        assert refused["status"] == "REJECTED"
        assert refused["reject_reason"] == "INSUFFICIENT_FUNDS"
        assert refused["available_nanoton"] == 70_000
        assert refused["amount_nanoton"] == 140_000  # what was needed: shortfall 70,000

        await net.send("inference.requests", request(stranger, "nobody"))
        unknown = (await net.until(lambda: net.seen.reservations.get(stranger)))[0]
        assert (unknown["status"], unknown["reject_reason"]) == ("REJECTED", "UNKNOWN_ACCOUNT")

        # An id the gateway did not mint for the account's partition: refused, nothing held.
        stray = next(
            r for r in (rid("bob") for _ in range(100)) if not is_co_partitioned(r, "alice")
        )
        await net.send("inference.requests", request(stray, "alice"))
        refused = (await net.until(lambda: net.seen.reservations.get(stray)))[0]
        assert (refused["status"], refused["reject_reason"]) == (
            "REJECTED",
            "REQUEST_NOT_CO_PARTITIONED",
        )

        # A replayed request holds once: the same HELD answer, no second hold.
        await net.send("inference.requests", request(first, "alice"))
        await net.until(lambda: len(net.seen.reservations[first]) == 2)
        assert net.seen.reservations[first][1]["amount_nanoton"] == HOLD
        assert net.seen.causes("hold:") == [f"hold:{first}"]
        assert net.balance("alice") == (70_000, HOLD)


async def test_signed_receipt_captures_once_and_a_forged_one_is_rejected(
    kafka_bootstrap, unique_name
):
    worker, forger = WorkerKeys.generate(), WorkerKeys.generate()
    async with network(kafka_bootstrap, unique_name, grants="alice=1000000") as net:
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))
        async with running(net.settings):
            paid, forged = rid(), rid()
            for r in (paid, forged):
                await net.send("inference.requests", request(r, "alice"))
            await net.until(lambda: net.balance("alice") == (1_000_000 - 2 * HOLD, 2 * HOLD))

            signed = receipt(worker, paid, "w-1")
            await net.send("usage.receipts", signed)
            after = (1_000_000 - HOLD - CHARGE, HOLD)
            assert await net.until(lambda: net.balance("alice") == after)
            assert await net.until(lambda: net.balance("worker:w-1") == (FEE, 0))
            assert await net.until(lambda: net.balance("network:commission") == (COMMISSION, 0))

            # The same receipt again, and a second receipt for the paid request: no new charge.
            await net.send("usage.receipts", signed)
            again = receipt(worker, paid, "w-1", completion=10)
            await net.send("usage.receipts", again)
            # Signed by a key that is not in w-1's verdict: never charged.
            await net.send("usage.receipts", receipt(forger, forged, "w-1"))
            await net.until(lambda: len(net.seen.causes("reject:")) == 2)
            # More cached than prompt tokens: not a receipt billing can judge; dead-lettered.
            await net.send(
                "usage.receipts", {**receipt(worker, forged, "w-1"), "cached_prompt_tokens": 999}
            )
            letter = await net.until(lambda: net.seen.dead_letters)
            assert letter[0]["reason"] == "INVALID_VALUE" and "cached" in letter[0]["error"]

        entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
        reasons = sorted(e.meta["reason"] for e in entries if e.kind == "receipt_rejected")
        assert reasons == ["bad_signature", "second_receipt_for_request"]
        charges = [e for e in entries if e.kind == "charge"]
        assert [(c.meta["request_id"], c.meta["charge"]) for c in charges] == [(paid, CHARGE)]
        assert charges[0].meta["cached_prompt_tokens"] == 100
        assert net.balance("alice") == after  # the forged request's hold is still open
        assert net.balance("worker:w-1") == (FEE, 0)
        assert audit(entries) == []

        # `cocoon billing` reads the same topic.
        where = ["--bootstrap", kafka_bootstrap, "--prefix", net.prefix]
        shown = await cli("balance", "alice", *where)
        assert f"available  {after[0]} nanoTON" in shown and f"held       {HOLD} nanoTON" in shown
        assert f"available  {FEE} nanoTON" in await cli("balance", "worker:w-1", *where)
        rows = (await cli("statement", "alice", "--from", "2000-01-01", *where)).splitlines()
        charge_row = next(r for r in rows if paid in r)
        assert charge_row.split()[2:] == [
            "charge",
            paid,
            "m",
            "300",
            "100",
            "50",
            "0",
            "1000",
            "100",
            f"-{CHARGE}",
            "w-1",
        ]
        assert any("deposit" in r and "1000000" in r for r in rows)
        assert not any(
            paid in r
            for r in (await cli("statement", "alice", "--to", "2000-01-01", *where)).splitlines()
        )
        listing = await cli("ledger", "--account", "alice", *where)
        assert f"charge:{paid}" in listing and f"hold:{forged}" in listing
        assert (
            await asyncio.to_thread(RUNNER.invoke, app, ["balance", "bob", *where])
        ).exit_code == 1


async def test_outcome_without_receipt_and_deadline_release_the_hold(kafka_bootstrap, unique_name):
    async with (
        network(kafka_bootstrap, unique_name, grants="alice=1000000", outcome_grace_s=0.3) as net,
        running(net.settings) as billing,
    ):
        worker = WorkerKeys.generate()
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))
        await net.until(lambda: billing.keys.current_key("w-1"))  # else its outcome is refused
        failed, abandoned = rid(), rid()
        await net.send("inference.requests", request(failed, "alice"))
        # Its deadline leaves billing time to read it first: one that arrives past its deadline
        # is ignored, and under load (three suites on two cores) 1.5 s did not.
        await net.send("inference.requests", request(abandoned, "alice", deadline_s=4))
        await net.until(lambda: net.balance("alice") == (1_000_000 - 2 * HOLD, 2 * HOLD))

        await net.send("inference.outcomes", outcome(worker, failed, "w-1"))
        await net.until(lambda: f"release:{failed}" in net.seen.causes("release:"))
        # Nobody reports anything about `abandoned`: its deadline (+ 0 s grace) releases it.
        await net.until(lambda: f"release:{abandoned}" in net.seen.causes("release:"), 15)
        assert await net.until(lambda: net.balance("alice") == (1_000_000, 0))
        assert net.seen.causes("charge:") == []


async def test_a_forged_outcome_releases_nothing(kafka_bootstrap, unique_name):
    """Another attested worker (or anyone) ending w-1's request in w-1's name: a FAILED outcome
    would release the hold before w-1's receipt comes, and w-1 would work for nothing. Billing
    dead-letters it with the reason; the hold stays, and the real receipt charges as usual."""
    worker, other = WorkerKeys.generate(), WorkerKeys.generate()
    async with (
        network(kafka_bootstrap, unique_name, grants="alice=1000000", outcome_grace_s=0.3) as net,
        running(net.settings) as billing,
    ):
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))
        await net.send("attestation.verdicts", net.attestor.verdict("w-2", other))
        await net.until(lambda: billing.keys.current_key("w-1") and billing.keys.current_key("w-2"))
        target = rid()
        await net.send("inference.requests", request(target, "alice"))
        await net.until(lambda: net.balance("alice") == (1_000_000 - HOLD, HOLD))

        forged = outcome(other, target, "w-1")  # signed by w-2's attested key
        await net.send("inference.outcomes", forged)
        await net.send("inference.outcomes", forged.model_copy(update={"signature": None}))
        await net.send("inference.outcomes", outcome(other, target, "w-9"))  # no verdict at all
        letters = await net.until(lambda: len(net.seen.dead_letters) >= 3 and net.seen.dead_letters)
        assert sorted(letter["error"].split(": ")[1] for letter in letters) == [
            "bad_record_signature",
            "unsigned_record",
            "untrusted_worker",
        ]
        assert {letter["source_topic"] for letter in letters} == {"inference.outcomes"}
        await asyncio.sleep(1.0)  # > the outcome grace: a believed outcome would release now
        assert net.seen.causes("release:") == []
        assert net.balance("alice") == (1_000_000 - HOLD, HOLD)

        await net.send("usage.receipts", receipt(worker, target, "w-1"))
        assert await net.until(lambda: net.balance("alice") == (1_000_000 - CHARGE, 0))
        assert await net.until(lambda: net.balance("worker:w-1") == (FEE, 0))


async def test_a_new_instance_rebuilds_the_same_state_from_the_ledger(kafka_bootstrap, unique_name):
    worker = WorkerKeys.generate()
    async with network(kafka_bootstrap, unique_name, grants="alice=1000000") as net:
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))
        paid, open_hold = rid(), rid()
        async with running(net.settings) as first:
            for r in (paid, open_hold):
                await net.send("inference.requests", request(r, "alice"))
            await net.until(lambda: open_hold in net.seen.reservations)
            await net.send("usage.receipts", receipt(worker, paid, "w-1"))
            await net.until(lambda: net.seen.causes("charge:"))
            before = first.processor.engine.ledger.balances()
            holds_before = {h.request_id for h in first.processor.engine.open_holds()}
        seen_reservations = sum(len(v) for v in net.seen.reservations.values())

        async with running(net.settings) as second:
            engine = second.processor.engine
            assert engine.ledger.balances() == before  # the dev grant was not applied twice
            assert {h.request_id for h in engine.open_holds()} == holds_before == {open_hold}
            # The rebuilt instance still captures against the hold it did not open itself.
            await net.send("usage.receipts", receipt(worker, open_hold, "w-1"))
            await net.until(lambda: len(net.seen.causes("charge:")) == 2)

        # Inputs resumed from committed offsets: no request was decided a second time.
        assert sum(len(v) for v in net.seen.reservations.values()) == seen_reservations
        assert net.balance("alice") == (1_000_000 - 2 * CHARGE, 0)
        assert net.balance("worker:w-1") == (2 * FEE, 0)
        entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
        assert [e.entry_id for e in entries if e.kind == "deposit"] == ["deposit:dev-grant:alice"]
        assert audit(entries, require_no_open_holds=True) == []


async def test_an_idle_instance_fenced_by_a_newer_one_fails_at_the_rebalance(
    kafka_bootstrap, unique_name
):
    """A second instance with the same transactional id fences the first as it starts, and its
    consumer joins the group. The first must fail then, not at its next record: with no traffic
    it would otherwise sit fenced on partitions the new instance waits for."""
    async with network(kafka_bootstrap, unique_name) as net:
        first, second = build(net.settings), build(net.settings)
        stopping = asyncio.Event()
        await first.start()
        first_run = asyncio.create_task(first.run(stopping))
        runs = [first_run]
        try:
            await net.until(first.consumer.assignment, 30)
            await second.start()  # init_transactions fences the first
            second_run = asyncio.create_task(second.run(stopping))
            runs.append(second_run)
            await asyncio.wait({first_run}, timeout=45)
            assert first_run.done(), "the fenced instance is still running"
            failure = first_run.exception()
            assert failure is not None and "Fenced" in repr(failure), repr(failure)
            assert not second_run.done()  # the newer instance carries on
            await net.until(second.consumer.assignment, 30)
        finally:
            stopping.set()
            await asyncio.wait(runs, timeout=15)
            await first.close()
            await second.close()


async def test_a_receipt_sent_in_time_captures_even_if_billing_restarts_past_the_deadline(
    kafka_bootstrap, unique_name
):
    worker = WorkerKeys.generate()
    async with network(kafka_bootstrap, unique_name, grants="alice=1000000") as net:
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))
        late, abandoned = rid(), rid()
        async with running(net.settings):
            for r in (late, abandoned):
                await net.send("inference.requests", request(r, "alice", deadline_s=2.0))
            await net.until(lambda: abandoned in net.seen.reservations)
        # Billing is down. The worker's receipt lands before the deadline; the deadline (+ 0 s
        # grace) passes before billing is back.
        await net.send("usage.receipts", receipt(worker, late, "w-1"))
        await asyncio.sleep(2.5)
        async with running(net.settings):
            await net.until(lambda: f"release:{abandoned}" in net.seen.causes("release:"))
            await net.until(lambda: net.seen.causes("charge:") or net.seen.causes("reject:"))
        assert net.seen.causes("charge:") == [f"charge:{late}"]
        assert net.seen.causes("reject:") == []
        assert net.balance("alice") == (1_000_000 - CHARGE, 0)


async def test_only_the_current_attempt_is_charged_or_releases_the_hold(
    kafka_bootstrap, unique_name
):
    """The scheduler placed each request again (attempt 2) after attempt 1's lease ran out.

    Attempt 1's worker woke up late: its receipt (the gateway dropped that stream, the client got
    none of it) is refused, its outcome does not release the hold, and attempt 2 pays. The same
    holds for an instance started after the placements were read (it re-reads them).
    """
    w1, w2 = WorkerKeys.generate(), WorkerKeys.generate()
    async with network(
        kafka_bootstrap, unique_name, grants="alice=1000000", outcome_grace_s=0.3
    ) as net:
        for worker_id, keys in (("w-1", w1), ("w-2", w2)):
            await net.send("attestation.verdicts", net.attestor.verdict(worker_id, keys))
        late_receipt, late_outcome, across_restart = rid(), rid(), rid()
        async with running(net.settings):
            for r in (late_receipt, late_outcome, across_restart):
                await net.send("inference.requests", request(r, "alice"))
            # As in the network: the scheduler places a request once its hold is published.
            await net.until(lambda: across_restart in net.seen.reservations)
            for r in (late_receipt, late_outcome, across_restart):
                await net.send("inference.assignments", assignment(r, "w-1", 1))
                await net.send("inference.assignments", assignment(r, "w-2", 2))

            stale = receipt(w1, late_receipt, "w-1", completion=3, completed=False)
            await net.send("usage.receipts", stale)
            await net.send("inference.outcomes", outcome(w1, late_outcome, "w-1", "CANCELLED"))
            await net.until(lambda: net.seen.causes("reject:"))
            await asyncio.sleep(1.0)  # > outcome grace: attempt 1's outcome must not release
            for r in (late_receipt, late_outcome):
                await net.send("usage.receipts", receipt(w2, r, "w-2", attempt=2))
            await net.until(lambda: len(net.seen.causes("charge:")) == 2)

        async with running(net.settings):  # knows the placements only by re-reading them
            await net.send("usage.receipts", receipt(w1, across_restart, "w-1"))
            await net.until(lambda: len(net.seen.causes("reject:")) == 2)
            await net.send("usage.receipts", receipt(w2, across_restart, "w-2", attempt=2))
            await net.until(lambda: len(net.seen.causes("charge:")) == 3)

        entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
        charges = {e.meta["request_id"]: e.meta["worker_id"] for e in entries if e.kind == "charge"}
        assert charges == {late_receipt: "w-2", late_outcome: "w-2", across_restart: "w-2"}
        rejected = [
            (e.meta["request_id"], e.meta["reason"])
            for e in entries
            if e.kind == "receipt_rejected"
        ]
        assert sorted(rejected) == sorted(
            [(late_receipt, "superseded_attempt"), (across_restart, "superseded_attempt")]
        )
        assert net.seen.causes("release:") == []
        assert net.balance("alice") == (1_000_000 - 3 * CHARGE, 0)
        assert net.balance("worker:w-2") == (3 * FEE, 0)
        assert audit(entries, require_no_open_holds=True) == []


async def test_prices_and_worker_coefficients_come_from_the_registry(kafka_bootstrap, unique_name):
    """Written with the operator's path (`cocoon registry set-prices` / `set-worker`)."""
    worker = WorkerKeys.generate()
    async with network(kafka_bootstrap, unique_name, grants="alice=1000000") as net:
        await net.send("attestation.verdicts", net.attestor.verdict("w-1", worker))

        async def registry(change) -> None:
            await publish_registry(kafka_bootstrap, change, prefix=net.prefix, updated_by="test")

        async with running(net.settings) as billing:
            old = rid()
            await net.send("inference.requests", request(old, "alice"))
            await net.until(lambda: old in net.seen.reservations)
            assert net.seen.reservations[old][-1]["amount_nanoton"] == HOLD  # settings' prices

            await registry(lambda r: r.set_prices({**PRICE_LIST, "price_per_token": 300}))
            await net.until(lambda: billing.processor.engine.prices.price_per_token == 300)
            new = rid()
            await net.send("inference.requests", request(new, "alice"))
            await net.until(lambda: new in net.seen.reservations)
            assert net.seen.reservations[new][-1]["amount_nanoton"] == 3 * HOLD

            # The old hold is charged at the prices it was taken at, the new one at 300 per token.
            for r in (old, new):
                await net.send("usage.receipts", receipt(worker, r, "w-1"))
            await net.until(lambda: len(net.seen.causes("charge:")) == 2)
            # The fee per token is unchanged.
            await net.until(lambda: net.balance("worker:w-1") == (2 * FEE, 0))
            await net.until(lambda: net.balance("alice") == (1_000_000 - CHARGE - 3 * CHARGE, 0))

            # A registry coefficient for w-1 other than its receipts' is refused, not charged.
            await registry(lambda r: r.set_worker("w-1", coefficient=1500))
            await net.until(lambda: billing.processor.engine.prices.coefficient_of("w-1") == 1500)
            mismatched = rid()
            await net.send("inference.requests", request(mismatched, "alice"))
            await net.until(lambda: mismatched in net.seen.reservations)
            await net.send("usage.receipts", receipt(worker, mismatched, "w-1"))
            await net.until(lambda: net.seen.causes("reject:"))

        entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
        (rejected,) = [e for e in entries if e.kind == "receipt_rejected"]
        assert rejected.meta["reason"] == "coefficient_not_registry_price"
        holds = {
            e.meta["request_id"]: e.meta["prices"]["price_per_token"]
            for e in entries
            if e.kind == "hold"
        }
        assert holds == {old: 100, new: 300, mismatched: 300}


async def test_the_reservation_continues_the_request_trace(kafka_bootstrap, unique_name):
    exporter = install_memory_exporter()
    async with (
        network(kafka_bootstrap, unique_name, grants="alice=1000000") as net,
        running(net.settings),
    ):
        r = rid()
        await net.send("inference.requests", request(r, "alice"))  # in a PRODUCER span
        await net.until(lambda: r in net.seen.reservations)
    spans = exporter.get_finished_spans()
    sent = next(s for s in spans if s.name.endswith("inference.requests send"))
    reserved = next(s for s in spans if s.name.endswith("billing.reservations send"))
    assert reserved.context.trace_id == sent.context.trace_id
    consumed = next(s for s in spans if s.context.span_id == reserved.parent.span_id)
    assert consumed.name.endswith("inference.requests process")
    # Ledger and balance records get no span each (several per receipt, nobody follows them).
    assert not [s for s in spans if s.name.endswith(("billing.ledger send", "balances send"))]
