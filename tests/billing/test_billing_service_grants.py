"""Admission grants through the billing service on the real broker.

Same prices as test_billing_service.py: a request with max_tokens 100 and a 400-byte prompt holds
50,000; the standard receipt costs 30,000 (24,000 fee, 6,000 commission).
"""

from __future__ import annotations

import asyncio

from billing_service_support import network, receipt, request, running

from cocoon.billing.audit import audit
from cocoon.billing.stream_replay import read_ledger
from cocoon.core.crypto.keys import WorkerKeys
from cocoon.core.request_ids import new_request_id

HOLD, CHARGE = 50_000, 30_000


def rid(account: str = "alice") -> str:
    """A request id as the gateway mints it: co-partitioned with its account."""
    return new_request_id(account)


def grant_settings(net, usable_s: float = 1.5):
    return net.settings.model_copy(
        update={"grant_usable_seconds": usable_s, "clock_skew_seconds": 0.2}
    )


async def trusted_worker(net) -> WorkerKeys:
    keys = WorkerKeys.generate()
    await net.send("attestation.verdicts", net.attestor.verdict("w1", keys))
    return keys


async def test_requests_admitted_against_a_grant_are_held_from_it_and_the_rest_comes_back(
    kafka_bootstrap, unique_name
):
    async with (
        network(kafka_bootstrap, unique_name, grants="alice=1000000") as net,
        running(grant_settings(net)),
    ):
        keys = await trusted_worker(net)
        asking, first, second = rid(), rid(), rid()
        await net.send("inference.requests", request(asking, "alice", grant_ask_requests=4))
        held = (await net.until(lambda: net.seen.reservations.get(asking)))[0]
        assert (held["status"], held["amount_nanoton"]) == ("HELD", HOLD)
        granted = await net.until(lambda: [g for g in net.seen.grants if g["asked_by"] == asking])
        g = granted[0]
        assert (g["status"], g["gateway_id"]) == ("GRANTED", "gw-test")
        assert g["amount_nanoton"] == 4 * HOLD
        assert (g["price_per_token"], g["max_bps"]) == (100, 10_000)
        # Grant and the asking request's hold are both held; nothing else moved.
        assert await net.until(lambda: net.balance("alice") == (1_000_000 - 5 * HOLD, 5 * HOLD))

        # Two requests the gateway admitted itself: no reservation, holds carved from the grant.
        for r in (first, second):
            await net.send("inference.requests", request(r, "alice", grant_id=g["grant_id"]))
        carved = {f"hold:{first}", f"hold:{second}"}
        await net.until(lambda: carved <= set(net.seen.causes("hold:")))
        await net.send("usage.receipts", receipt(keys, first, "w1"))
        await net.until(lambda: f"charge:{first}" in net.seen.causes("charge:"))
        await net.send("usage.receipts", receipt(keys, asking, "w1"))
        await net.send("usage.receipts", receipt(keys, second, "w1"))

        # When the grant's time is up, billing returns exactly what no request used.
        closed = await net.until(
            lambda: [c for c in net.seen.grants if c["status"] == "CLOSED"], timeout_s=20
        )
        assert closed[0]["grant_id"] == g["grant_id"]
        assert closed[0]["amount_nanoton"] == 4 * HOLD - 2 * HOLD
        assert first not in net.seen.reservations and second not in net.seen.reservations
        assert await net.until(lambda: net.balance("alice") == (1_000_000 - 3 * CHARGE, 0))

    entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
    assert audit(entries, require_no_open_holds=True) == []


async def test_a_receipt_read_before_its_granted_request_waits_for_it(kafka_bootstrap, unique_name):
    async with (
        network(kafka_bootstrap, unique_name, grants="alice=1000000") as net,
        running(grant_settings(net, usable_s=30)),
    ):
        keys = await trusted_worker(net)
        asking, early, never = rid(), rid(), rid()
        await net.send("inference.requests", request(asking, "alice", grant_ask_requests=4))
        g = (await net.until(lambda: net.seen.grants))[0]
        # The worker's receipt lands before billing has read the request it is for (the
        # scheduler placed it straight from inference.requests): it must not be refused.
        await net.send("usage.receipts", receipt(keys, early, "w1"))
        await net.send("usage.receipts", receipt(keys, never, "w1"))
        await asyncio.sleep(0.1)
        await net.send("inference.requests", request(early, "alice", grant_id=g["grant_id"]))
        await net.until(lambda: f"charge:{early}" in net.seen.causes("charge:"))
        # A receipt whose request never comes is refused once the requests are read past it.
        rejected = await net.until(lambda: net.seen.causes("reject:"))
        assert len(rejected) == 1
        assert net.seen.causes("charge:") == [f"charge:{early}"]


async def test_an_ask_without_the_funds_is_refused_and_moves_nothing(kafka_bootstrap, unique_name):
    async with (
        network(kafka_bootstrap, unique_name, grants="bob=120000") as net,
        running(grant_settings(net, usable_s=30)),
    ):
        asking = rid("bob")
        # 120,000 - 50,000 = 70,000 left; a grant may take half of it: not one hold's worth.
        await net.send("inference.requests", request(asking, "bob", grant_ask_requests=4))
        refused = (await net.until(lambda: net.seen.grants))[0]
        assert (refused["status"], refused["amount_nanoton"]) == ("REFUSED", 0)
        assert await net.until(lambda: net.balance("bob") == (70_000, HOLD))


async def test_a_gateway_returns_a_grant_before_its_time_is_up(kafka_bootstrap, unique_name):
    async with (
        network(kafka_bootstrap, unique_name, grants="carol=1000000") as net,
        running(grant_settings(net, usable_s=30)),
    ):
        asking, again, returning = rid("carol"), rid("carol"), rid("carol")
        await net.send("inference.requests", request(asking, "carol", grant_ask_requests=2))
        g = (await net.until(lambda: net.seen.grants))[0]
        assert g["amount_nanoton"] == 2 * HOLD
        await net.send("inference.requests", request(again, "carol", grant_id=g["grant_id"]))
        # The gateway retires the grant on its next request: the rest comes back at once,
        # long before the grant's time is up.
        await net.send(
            "inference.requests", request(returning, "carol", grant_return_id=g["grant_id"])
        )
        closed = await net.until(lambda: [c for c in net.seen.grants if c["status"] == "CLOSED"])
        assert closed[0]["amount_nanoton"] == HOLD
        await net.until(lambda: net.seen.reservations.get(returning))
        assert await net.until(lambda: net.balance("carol") == (1_000_000 - 3 * HOLD, 3 * HOLD))
