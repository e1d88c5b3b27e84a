"""The bot's pure parts: message splitting, conversation memory, limits, Stars payments."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cocoon.telegram import payments
from cocoon.telegram.conversation import Conversations, estimate_tokens
from cocoon.telegram.limits import UserLimits
from cocoon.telegram.text import split_message, tail_within, utf16_len


def test_a_long_answer_splits_at_paragraphs_then_lines_then_words():
    paragraph = "word " * 300  # 1,500 characters
    text = "\n\n".join([paragraph.strip()] * 4)
    parts = split_message(text)
    assert len(parts) == 2 and all(utf16_len(p) <= 4096 for p in parts)
    assert parts[0].endswith("word") and not parts[1].startswith("\n")
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())


def test_a_split_never_cuts_a_surrogate_pair():
    text = "a" + "😀" * 3000  # each emoji is two UTF-16 units
    parts = split_message(text)
    assert "".join(parts) == text
    assert all(utf16_len(p) <= 4096 for p in parts)


@given(st.text(min_size=0, max_size=12_000))
def test_splitting_keeps_every_character_within_the_limit(text: str):
    parts = split_message(text, limit=500)
    assert all(utf16_len(p) <= 500 for p in parts)
    # Only whitespace at the cut points may go.
    assert "".join("".join(parts).split()) == "".join(text.split())


def test_a_draft_shows_the_tail_of_a_long_answer():
    text = "x" * 5000
    assert tail_within(text) == text[-len(tail_within(text)) :]
    assert utf16_len(tail_within(text)) <= 4096


def test_conversation_memory_keeps_the_newest_turns_within_the_budget():
    memory = Conversations(budget_tokens=20)
    memory.add_turn(1, "a" * 20, "b" * 20)  # 5 + 5 tokens
    memory.add_turn(1, "c" * 20, "d" * 20)
    memory.add_turn(1, "e" * 20, "f" * 20)  # 30 tokens in all: the first turn goes
    assert [m["content"][0] for m in memory.history(1)] == ["c", "d", "e", "f"]
    sent = memory.with_prompt(1, "g" * 40)  # 10 tokens for the prompt leaves 10 for history
    assert [m["content"][0] for m in sent] == ["e", "f", "g"]
    assert memory.history(2) == []
    memory.clear(1)
    assert memory.history(1) == [] and estimate_tokens("") == 1


def test_rate_limit_and_daily_cap_per_user():
    now = [1_000_000.0]
    limits = UserLimits(per_minute=2, daily_token_cap=100, clock=lambda: now[0])
    assert limits.retry_after(7) is None and limits.retry_after(7) is None
    wait = limits.retry_after(7)
    assert wait is not None and 29 < wait <= 30
    assert limits.retry_after(8) is None  # another user is not affected
    now[0] += 30
    assert limits.retry_after(7) is None
    limits.record_usage(7, 60)
    assert not limits.over_daily_cap(7)
    limits.record_usage(7, 40)
    assert limits.over_daily_cap(7) and not limits.over_daily_cap(8)
    now[0] += 86_400  # a new day
    assert not limits.over_daily_cap(7)


def test_a_payment_is_identified_by_telegram_charge_id_only():
    a = payments.stars_topup("tg-1", "charge/with:odd chars", 50, 10_000_000)
    b = payments.stars_topup("tg-1", "charge/with:odd chars", 50, 10_000_000)
    assert a.topup_id == b.topup_id and a.topup_id.startswith("stars-") and ":" not in a.topup_id
    assert a.amount_nanoton == 500_000_000 and a.paid_amount == 50
    assert a.reference == "charge/with:odd chars" and a.source == "TELEGRAM_STARS"
    assert payments.stars_topup("tg-1", "other", 50, 1).topup_id != a.topup_id


def test_pre_checkout_accepts_only_our_invoices_for_the_payer():
    packs = [50, 250]
    good = payments.invoice_payload("tg-5", 50)
    assert payments.precheck_problem(good, "XTR", 50, "tg-5", packs) is None
    assert payments.precheck_problem(good, "USD", 50, "tg-5", packs)
    assert payments.precheck_problem(good, "XTR", 49, "tg-5", packs)
    assert payments.precheck_problem(good, "XTR", 50, "tg-6", packs)
    assert payments.precheck_problem("nonsense", "XTR", 50, "tg-5", packs)
    stale = payments.invoice_payload("tg-5", 75)  # an offer that no longer exists
    assert payments.precheck_problem(stale, "XTR", 75, "tg-5", packs)
