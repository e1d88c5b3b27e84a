"""The Telegram bot end to end: a user on a stand-in Bot API server (tests/support/telegram_api),
the bot speaking to it through aiogram's real HTTP session, and the real network behind it."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from support.bus_dump import every_record
from support.telegram_api import BOT_USERNAME, FakeBotApi

from cocoon.billing.stream_handlers import GrantPolicy
from cocoon.billing.stream_replay import read_ledger
from cocoon.network.local import TELEGRAM_TRIAL_NANOTON
from cocoon.telegram.answers import STOPPED_NOTE
from cocoon.telegram.service import TelegramService
from cocoon.telegram.settings import Settings
from cocoon.telegram.texts import say, ton

NANOTON_PER_STAR = 10_000_000
# Each test waits for up to a few answers from the CPU model, which a loaded machine slows.
pytestmark = pytest.mark.timeout(900)
# The CPU model writes a short answer in a few seconds; far slower on a loaded 2-core machine.
ANSWER_TIMEOUT_S = 240


@pytest.fixture(scope="module")
async def telegram(network, kafka_bootstrap) -> AsyncIterator[tuple[FakeBotApi, TelegramService]]:
    api = FakeBotApi()
    await api.start()
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        grpc_health_port=0,
        metrics_port=0,
        telegram_token=api.token,
        telegram_api_url=api.url,
        gateway_url=network.gateway_url,
        gateway_api_key=network.telegram_api_key,
        telegram_trial_nanoton=TELEGRAM_TRIAL_NANOTON,
        telegram_nanoton_per_star=NANOTON_PER_STAR,
        telegram_requests_per_minute=30,
        telegram_max_tokens=48,
        telegram_refunds=True,
        # Sealed by the bot itself (the default), trusting what `cocoon up` pins for its gateway.
        telegram_client_config_file=network.client_config_path,
    )
    service = TelegramService(settings)
    await service.start()
    stopping = asyncio.Event()
    running = asyncio.create_task(service.run(stopping))
    try:
        yield api, service
    finally:
        stopping.set()
        await asyncio.wait_for(running, 30)
        await service.close()
        await api.stop()


def text_of(call: Any) -> str:
    return str(call.params.get("text", ""))


async def reply_to(api: FakeBotApi, user: int, text: str, expect: str, timeout_s: float = 30):
    """Send `text` as `user` and wait for a message to them containing `expect`."""
    api.say(user, text)
    return await api.wait_for(
        lambda c: (
            c.method == "sendMessage" and int(c.params["chat_id"]) == user and expect in text_of(c)
        ),
        timeout_s,
    )


async def until_balance(
    service: TelegramService, account: str, wanted: int, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while (service.balances.of(account) or (None,))[0] != wanted:
        assert time.monotonic() < deadline, f"{account}: {service.balances.of(account)}"
        await asyncio.sleep(0.1)


async def until_served(
    service: TelegramService, user: int, count: int, chat: int | None = None
) -> None:
    """Wait until `user` has had `count` answers, whole or stopped, and their chat is idle."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    chat = user if chat is None else chat
    while len(service.cocoon.served.get(user, ())) < count or chat in service.cocoon.active:
        assert time.monotonic() < deadline, f"no answer for {user} in {ANSWER_TIMEOUT_S} s"
        await asyncio.sleep(0.1)


async def test_commands_a_streamed_answer_and_what_it_cost(telegram, network):
    api, service = telegram
    user = 1001
    menu = api.sent("setMyCommands")
    assert menu and "balance" in menu[0].params["commands"]
    await reply_to(api, user, "/start", say("welcome")[:30])
    await api.wait_for(lambda c: "free trial" in text_of(c))
    await until_balance(service, f"tg-{user}", TELEGRAM_TRIAL_NANOTON)
    await reply_to(api, user, "/balance", ton(TELEGRAM_TRIAL_NANOTON))

    api.say(user, "Write a haiku about Kafka")
    await until_served(service, user, 1)
    final = api.sent("sendMessage", user)[-1]
    drafts = api.sent("sendMessageDraft", user)
    assert drafts and all(d.params["can_stop"] in ("true", True) for d in drafts)
    assert len({d.params["draft_id"] for d in drafts}) == 1
    # Each draft extends the one before: the answer as it was written, then the final message.
    texts = [text_of(d) for d in drafts]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert text_of(final).startswith(texts[-1].strip()[:20])
    typing = api.sent("sendChatAction", user)
    assert typing and typing[0].at < drafts[0].at and typing[0].params["action"] == "typing"

    # The bot sealed the prompt itself, to a worker it verified, and kept its signed receipt.
    served = service.cocoon.served[user][-1]
    assert served.worker is not None and served.worker["accepted"]
    assert served.receipt is not None and served.receipt["request_id"] == served.request_id
    usage = await reply_to(api, user, "/usage", say("usage_header"))
    assert "about" in text_of(usage) and "list price" in text_of(usage)
    assert f"receipt signed by {served.receipt['worker_id']}" in text_of(usage)
    verify = await reply_to(api, user, "/verify", "Your last answer: request ")
    request_id = text_of(verify).split("request ")[1].split(",")[0]
    assert request_id == served.request_id
    assert say("path_client") in text_of(verify)
    assert f"Enclave: worker {served.receipt['worker_id']}" in text_of(verify)
    assert f"TDX TCB status: {served.worker['tcb_status']}" in text_of(verify)
    shown = json.loads(text_of(verify).split(say("verify_receipt"))[1])
    assert shown == served.receipt  # the whole receipt, signature included, for anyone to check
    # The user's account paid for the answer, from its trial, for the receipt's tokens.
    entries = await read_ledger(network_bootstrap(network), prefix=prefix(), client_id="tg-test")
    charge = next(e for e in entries if e.entry_id == f"charge:{request_id}")
    assert charge.meta["client_id"] == f"tg-{user}" and charge.meta["charge"] > 0
    # What the admission grant still holds comes back only when the grant closes: its usable
    # time (counted from the request, not the answer) and clock skew after, once billing ticks.
    grant_closes_s = GrantPolicy.usable_ms / 1000 + GrantPolicy.clock_skew_ms / 1000 + 30
    await until_balance(
        service, f"tg-{user}", TELEGRAM_TRIAL_NANOTON - charge.meta["charge"], grant_closes_s
    )


async def test_every_command_answers(telegram):
    api, service = telegram
    user = 1010
    await reply_to(api, user, "/start", say("welcome")[:30])
    service.cocoon.conversations.add_turn(user, "an earlier question", "an earlier answer")
    for command, expect in (
        ("/usage", say("usage_empty")),
        ("/verify", say("verify_none")),
        ("/help", "/model chooses"),
        ("/privacy", say("privacy_client_sealed")[2:60]),
        ("/settings", "Conversation memory"),
        ("/paysupport", say("paysupport_refunds")[:40]),
        ("/new", say("new")),
    ):
        await reply_to(api, user, command, expect)
    assert service.cocoon.conversations.history(user) == []

    choose = await reply_to(api, user, "/model", "Choose a model")
    [[button]] = eval_markup(choose)["inline_keyboard"]
    api.press(user, user, 1, button["callback_data"])
    await api.wait_for(lambda c: c.method == "answerCallbackQuery" and "Model set" in text_of(c))


async def test_stop_mid_answer_pays_only_for_what_was_produced(telegram, network):
    api, service = telegram
    user = 1002
    await reply_to(api, user, "/start", say("welcome")[:30])
    await until_balance(service, f"tg-{user}", TELEGRAM_TRIAL_NANOTON)
    service.cocoon.max_tokens = 400  # a long answer, to stop
    try:
        api.say(user, "Count from 1 to 500, one number per line.")
        first = await api.wait_for(
            lambda c: c.method == "sendMessageDraft" and int(c.params["chat_id"]) == user,
            ANSWER_TIMEOUT_S,
        )
        api.stop_generation(user, int(first.params["draft_id"]))
        final = await api.wait_for(
            lambda c: c.method == "sendMessage" and STOPPED_NOTE.strip() in text_of(c), 60
        )
    finally:
        service.cocoon.max_tokens = 48
    assert int(final.params["chat_id"]) == user
    served = service.cocoon.served[user][-1]
    assert served.stopped and served.request_id

    deadline = time.monotonic() + 60
    while True:
        entries = await read_ledger(network_bootstrap(network), prefix=prefix(), client_id="tg-s")
        ids = {e.entry_id: e for e in entries}
        if f"charge:{served.request_id}" in ids:
            break
        assert time.monotonic() < deadline, "the stopped request was never charged"
        await asyncio.sleep(0.5)
    charge = ids[f"charge:{served.request_id}"]
    assert charge.meta["completed"] is False
    assert 0 < charge.meta["completion_tokens"] < 400


async def test_stars_payment_delivered_twice_is_credited_once(telegram, network):
    api, service = telegram
    user = 1003
    await reply_to(api, user, "/start", say("welcome")[:30])
    await until_balance(service, f"tg-{user}", TELEGRAM_TRIAL_NANOTON)
    api.say(user, "/topup")
    invoice = await api.wait_for(
        lambda c: c.method == "sendInvoice" and int(c.params["chat_id"]) == user
    )
    assert invoice.params["currency"] == "XTR" and not invoice.params.get("provider_token")
    charge_id = f"stxtest{uuid.uuid4().hex}"
    await api.pay(user, invoice, charge_id, deliveries=2)
    stars = eval_prices(invoice)
    credited = TELEGRAM_TRIAL_NANOTON + stars * NANOTON_PER_STAR
    await until_balance(service, f"tg-{user}", credited)
    await asyncio.sleep(2)  # room for a second credit to show, if there were one
    assert service.balances.of(f"tg-{user}")[0] == credited
    confirmations = [c for c in api.sent("sendMessage", user) if "Payment received" in text_of(c)]
    assert len(confirmations) == 1
    entries = await read_ledger(network_bootstrap(network), prefix=prefix(), client_id="tg-p")
    topups = [e for e in entries if e.kind == "topup" and e.meta["reference"] == charge_id]
    assert len(topups) == 1 and topups[0].meta["paid_amount"] == stars


async def test_a_refund_gives_the_stars_back_once_and_takes_the_credit_back_once(telegram, network):
    api, service = telegram
    user = 1008
    account = f"tg-{user}"
    await reply_to(api, user, "/start", say("welcome")[:30])
    await until_balance(service, account, TELEGRAM_TRIAL_NANOTON)
    paid = await pay_once(api, user, f"stxrefund{uuid.uuid4().hex}")
    await until_balance(service, account, TELEGRAM_TRIAL_NANOTON + paid.nanoton)

    # Pressed twice (a user impatient, or a bot restarted between asking and refunding): the
    # Stars go back once, the balance loses the payment's credit once, the user is told once.
    api.press(user, user, 1, paid.refund_data)
    await api.wait_for(lambda c: c.method == "sendMessage" and "Refunded" in text_of(c), 60)
    since = len(api.calls)
    api.press(user, user, 1, paid.refund_data)
    await api.wait_for(lambda c: c.method == "refundStarPayment", 60, since=since)
    assert api.refunded == {paid.charge_id}
    await until_balance(service, account, TELEGRAM_TRIAL_NANOTON)
    await asyncio.sleep(2)  # room for a second debit or message, if there were one
    assert service.balances.of(account)[0] == TELEGRAM_TRIAL_NANOTON
    assert len([c for c in api.sent("sendMessage", user) if "Refunded" in text_of(c)]) == 1
    entries = await read_ledger(network_bootstrap(network), prefix=prefix(), client_id="tg-r")
    refunds = [e for e in entries if e.kind == "refund" and e.meta["client_id"] == account]
    assert len(refunds) == 1 and refunds[0].meta["reference"] == paid.charge_id

    # Telegram refuses the next one: the credit is restored, so nothing is lost either way.
    second = await pay_once(api, user, f"stxrefund{uuid.uuid4().hex}")
    await until_balance(service, account, TELEGRAM_TRIAL_NANOTON + second.nanoton)
    api.refusing_refunds = True
    try:
        api.press(user, user, 1, second.refund_data)
        await api.wait_for(lambda c: "did not accept the refund" in text_of(c), 60)
    finally:
        api.refusing_refunds = False
    await until_balance(service, account, TELEGRAM_TRIAL_NANOTON + second.nanoton)
    assert second.charge_id not in api.refunded

    # Someone else's payment: refused by billing, nothing moves.
    api.press(user + 1, user + 1, 1, paid.refund_data)
    await api.wait_for(lambda c: "cannot be refunded" in text_of(c), 60)


@dataclass(frozen=True)
class Paid:
    charge_id: str
    nanoton: int
    refund_data: str


async def pay_once(api: FakeBotApi, user: int, charge_id: str) -> Paid:
    """Pay the first invoice /topup offers; the confirmation carries the refund button."""
    since = len(api.calls)
    api.say(user, "/topup")
    invoice = await api.wait_for(
        lambda c: c.method == "sendInvoice" and int(c.params["chat_id"]) == user, since=since
    )
    await api.pay(user, invoice, charge_id)
    confirmation = await api.wait_for(
        lambda c: "Payment received" in text_of(c) and int(c.params["chat_id"]) == user,
        since=since,
    )
    [[button]] = eval_markup(confirmation)["inline_keyboard"]
    assert button["text"] == say("refund_button")
    return Paid(charge_id, eval_prices(invoice) * NANOTON_PER_STAR, button["callback_data"])


async def test_no_balance_is_told_how_to_top_up(telegram):
    api, _ = telegram
    await reply_to(api, 1004, "Hello there", "/topup adds funds", timeout_s=60)


async def test_groups_answer_only_when_mentioned_and_edit_at_most_once_a_second(telegram):
    api, service = telegram
    group = {"id": -100_555, "type": "supergroup", "title": "g"}
    user = 1006
    await reply_to(api, user, "/start", say("welcome")[:30])
    await until_balance(service, f"tg-{user}", TELEGRAM_TRIAL_NANOTON)
    api.say(user, "just chatting, not to the bot", chat=group)
    api.say(user, f"@{BOT_USERNAME} name three colours", chat=group)
    await until_served(service, user, 1, group["id"])
    calls = [c for c in api.calls if int(c.params.get("chat_id", 0)) == group["id"]]
    final = calls[-1]
    assert final.method == "editMessageText" and "reply_markup" not in final.params, [
        (c.method, text_of(c)[:80]) for c in calls
    ]
    assert text_of(final).strip()
    posted = api.sent("sendMessage", group["id"])
    assert len(posted) == 1  # one message, edited: the unaddressed one got no answer
    edits = [c.at for c in api.sent("editMessageText", group["id"])][:-1]  # live edits
    gaps = [b - a for a, b in zip([posted[0].at, *edits], edits, strict=False)]
    assert all(gap >= 0.95 for gap in gaps), gaps
    assert api.sent("sendMessageDraft", group["id"]) == []


async def test_limits_and_a_blocked_user(telegram):
    api, _service = telegram
    user = 1007
    await reply_to(api, user, "/start", say("welcome")[:30])
    await reply_to(api, user, "x" * 5000, "too long")
    api.blocked_chats.add(1008)
    before = len(api.calls)
    api.say(1008, "/start")
    await api.wait_for(lambda c: int(c.params.get("chat_id", 0)) == 1008)
    await asyncio.sleep(2)
    to_blocked = [c for c in api.calls[before:] if int(c.params.get("chat_id", 0)) == 1008]
    assert len(to_blocked) <= 2  # no retry storm against a blocked user


async def test_privacy_canary_through_the_bot(telegram, kafka_bootstrap):
    api, service = telegram
    user = 1009
    await reply_to(api, user, "/start", say("welcome")[:30])
    await until_balance(service, f"tg-{user}", TELEGRAM_TRIAL_NANOTON)
    canary = f"CANARY-{uuid.uuid4().hex}"
    api.say(user, f"Repeat this code exactly: {canary}")
    await api.wait_for(
        lambda c: (
            c.method == "sendMessage"
            and int(c.params["chat_id"]) == user
            and bool(service.cocoon.served.get(user))
        ),
        ANSWER_TIMEOUT_S,
    )
    answer = service.cocoon.conversations.history(user)[-1]["content"]
    blobs = await every_record(kafka_bootstrap, prefix())
    needles = [canary.encode(), canary[7:23].encode()]
    text = answer.encode()
    needles += [text[i : i + 24] for i in range(0, max(1, len(text) - 24), 8) if len(text) >= 24]
    assert not [n for n in needles for blob in blobs if n in blob], "plaintext on the bus"


# ---- helpers ------------------------------------------------------------------------------


def prefix() -> str:
    return os.environ["COCOON_TOPIC_PREFIX"]


def network_bootstrap(network: Any) -> str:
    return network.bootstrap


def eval_markup(call: Any) -> dict[str, Any]:
    markup = call.params["reply_markup"]
    return json.loads(markup) if isinstance(markup, str) else markup


def eval_prices(call: Any) -> int:
    prices = call.params["prices"]
    prices = json.loads(prices) if isinstance(prices, str) else prices
    return int(prices[0]["amount"])
