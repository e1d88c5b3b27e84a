"""Telegram Stars and trial top-ups on billing.topups: each credited once, whatever arrives."""

from __future__ import annotations

from billing_service_support import network, running

from cocoon.billing.audit import audit
from cocoon.billing.stream_replay import read_ledger
from cocoon.core.codec import models
from cocoon.core.codec.timestamps import now_millis


def topup(topup_id: str, account: str, amount: int, source: str = "TELEGRAM_STARS") -> models.TopUp:
    return models.TopUp(
        topup_id=topup_id,
        account_id=account,
        amount_nanoton=amount,
        source=source,
        paid_amount=50 if source == "TELEGRAM_STARS" else 0,
        reference=topup_id.removeprefix("stars-"),
        created_at=now_millis(),
    )


async def test_a_payment_delivered_twice_and_across_a_restart_is_credited_once(
    kafka_bootstrap, unique_name
):
    async with network(kafka_bootstrap, unique_name) as net:
        async with running(net.settings):
            await net.send("billing.topups", topup("trial-tg-1", "tg-1", 1_000, "TRIAL"))
            await net.send("billing.topups", topup("stars-abc", "tg-1", 50_000))
            await net.send("billing.topups", topup("stars-abc", "tg-1", 50_000))
            await net.until(lambda: net.balance("tg-1") == (51_000, 0))
        # A new instance, and Telegram delivering the same payment once more.
        async with running(net.settings) as second:
            await net.send("billing.topups", topup("stars-abc", "tg-1", 50_000))
            await net.send("billing.topups", topup("stars-def", "tg-1", 7))
            await net.until(lambda: net.balance("tg-1") == (51_007, 0))
            assert second.processor.engine.available("tg-1") == 51_007
        entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
        topups = sorted(e.entry_id for e in entries if e.kind == "topup")
        assert topups == ["topup:stars-abc", "topup:stars-def", "topup:trial-tg-1"]
        assert audit(entries) == []


async def test_a_bad_topup_is_dead_lettered_and_moves_nothing(kafka_bootstrap, unique_name):
    async with network(kafka_bootstrap, unique_name) as net:
        async with running(net.settings):
            await net.send("billing.topups", topup("stars:has-colon", "tg-2", 10))
            await net.send("billing.topups", topup("stars-ok", "tg-2", 10))
            await net.until(lambda: net.balance("tg-2") == (10, 0))
            await net.until(lambda: net.seen.dead_letters)
        [dead] = net.seen.dead_letters
        assert dead["reason"] == "INVALID_VALUE" and "top-up id" in dead["error"]
        entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
        assert [e.entry_id for e in entries if e.kind == "topup"] == ["topup:stars-ok"]


def refund_ask(topup_id: str, account: str) -> models.TopUp:
    return models.TopUp(
        topup_id=topup_id,
        account_id=account,
        amount_nanoton=0,
        source="TELEGRAM_STARS",
        paid_amount=0,
        reference="",
        created_at=now_millis(),
        kind=models.TopUpKind.REFUND,
    )


async def test_a_refund_takes_the_whole_credit_back_once_and_only_while_unspent(
    kafka_bootstrap, unique_name
):
    async with network(kafka_bootstrap, unique_name) as net:
        async with running(net.settings):
            await net.send("billing.topups", topup("trial-tg-3", "tg-3", 1_000, "TRIAL"))
            await net.send("billing.topups", topup("stars-one", "tg-3", 50_000))
            await net.send("billing.topups", topup("stars-other", "tg-4", 70_000))
            await net.until(lambda: net.balance("tg-3") == (51_000, 0))
            # Another account's payment, a trial, and an unknown id: refused, nothing moves.
            for ask in ("stars-other", "trial-tg-3", "stars-none"):
                await net.send("billing.topups", refund_ask(ask, "tg-3"))
            await net.until(lambda: len(net.seen.refunds) == 3)
            assert {r["status"] for r in net.seen.refunds} == {"REFUSED"}
            assert all("no refundable payment" in r["reason"] for r in net.seen.refunds)
            # Asked twice (the bot crashed before acting on the answer): debited once, answered
            # the same way both times, with what Telegram needs to refund the payment.
            await net.send("billing.topups", refund_ask("stars-one", "tg-3"))
            await net.send("billing.topups", refund_ask("stars-one", "tg-3"))
            await net.until(lambda: len(net.seen.refunds) == 5)
            first, second = net.seen.refunds[3:]
            assert first == second | {"decided_at": first["decided_at"]}
            assert first["status"] == "DEBITED" and first["amount_nanoton"] == 50_000
            assert first["paid_amount"] == 50 and first["reference"] == "one"
            await net.until(lambda: net.balance("tg-3") == (1_000, 0))
        # Across a restart the refund is remembered: asked again, answered the same, no debit.
        async with running(net.settings):
            await net.send("billing.topups", refund_ask("stars-one", "tg-3"))
            await net.until(lambda: len(net.seen.refunds) == 6)
            assert net.seen.refunds[5]["status"] == "DEBITED"
        entries = await read_ledger(kafka_bootstrap, prefix=net.prefix)
        assert [e.entry_id for e in entries if e.kind == "refund"] == ["refund:stars-one"]
        assert audit(entries) == []
