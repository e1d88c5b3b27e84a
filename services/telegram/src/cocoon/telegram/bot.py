"""The bot's behaviour: commands, chat, payments. Transport-free (polling or webhook: service.py).

Each Telegram user is one billing account (`<prefix><user id>`, opened on first use by billing).
Answers are generated in background tasks so that the update loop stays free: the loop waits only
for what must be done before Telegram may forget an update (a payment's credit on the bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramForbiddenError
from aiogram.filters import Command, CommandStart
from aiogram.types import (
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
    MessageGenerationStopped,
    PreCheckoutQuery,
)

from cocoon.core.holds import COEFFICIENT_ONE
from cocoon.telegram import payments
from cocoon.telegram.answers import STOP_CALLBACK_PREFIX, AnswerView
from cocoon.telegram.balances import Balances
from cocoon.telegram.conversation import Conversations
from cocoon.telegram.gateway import GatewayClient, GatewayError, Model
from cocoon.telegram.limits import UserLimits
from cocoon.telegram.settings import Settings
from cocoon.telegram.texts import COMMANDS, say, ton

log = logging.getLogger(__name__)

MODEL_CALLBACK_PREFIX = "model:"
MODELS_TTL_S = 30.0
RECENT_REQUESTS = 10


@dataclass(frozen=True)
class Served:
    request_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    stopped: bool
    at: float
    # Client-sealed answers: the worker's signed usage receipt (checked against its attested key)
    # and how the bot verified that worker.
    receipt: dict[str, Any] | None = None
    worker: dict[str, Any] | None = None


class CocoonBot:
    def __init__(
        self,
        settings: Settings,
        gateway: GatewayClient,
        balances: Balances,
        publish_topup: payments.PublishTopUp,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.balances = balances
        self.publish_topup = publish_topup
        self.conversations = Conversations(settings.telegram_context_tokens)
        self.limits = UserLimits(
            settings.telegram_requests_per_minute, settings.telegram_daily_token_cap
        )
        self.max_tokens = settings.telegram_max_tokens
        self.chosen_model: dict[int, str] = {}
        self.served: dict[int, deque[Served]] = {}
        self.active: dict[int, AnswerView] = {}  # chat id -> the answer being written
        self.tasks: set[asyncio.Task[None]] = set()
        self.blocked: set[int] = set()  # users who blocked the bot: no more messages to them
        self._trialled: set[str] = set()
        self._credited: set[str] = set()  # top-up ids already confirmed to their payer
        self._models: tuple[float, list[Model]] = (0.0, [])

    def account(self, user_id: int) -> str:
        return f"{self.settings.telegram_account_prefix}{user_id}"

    # ---- set-up ------------------------------------------------------------------------

    async def register_commands(self, bot: Bot) -> None:
        for lang, commands in COMMANDS.items():
            menu = [BotCommand(command=name, description=text) for name, text in commands.items()]
            await bot.set_my_commands(menu, language_code=None if lang == "en" else lang)

    def router(self) -> Router:
        router = Router(name="cocoon")
        router.message.register(self.on_start, CommandStart())
        for name in ("help", "privacy", "new", "model", "balance", "topup", "usage", "verify"):
            router.message.register(getattr(self, f"on_{name}"), Command(name))
        router.message.register(self.on_settings, Command("settings"))
        router.message.register(self.on_paysupport, Command("paysupport"))
        router.message.register(self.on_payment, F.successful_payment)
        router.message.register(self.on_text, F.text)
        router.callback_query.register(
            self.on_model_chosen, F.data.startswith(MODEL_CALLBACK_PREFIX)
        )
        router.callback_query.register(
            self.on_stop_pressed, F.data.startswith(STOP_CALLBACK_PREFIX)
        )
        router.callback_query.register(
            self.on_refund_pressed, F.data.startswith(payments.REFUND_CALLBACK_PREFIX)
        )
        router.stopped_message_generation.register(self.on_generation_stopped)
        router.pre_checkout_query.register(self.on_pre_checkout)
        return router

    async def close(self) -> None:
        for view in self.active.values():
            view.stop()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    # ---- commands ----------------------------------------------------------------------

    async def on_start(self, message: Message) -> None:
        assert message.from_user is not None
        await message.answer(say("welcome"))
        amount = self.settings.telegram_trial_nanoton
        account = self.account(message.from_user.id)
        # A new user (billing has no balance for them yet) gets the trial; billing credits the id
        # trial-<account> once ever, so a repeat after a restart credits nothing.
        if amount and account not in self._trialled and self.balances.of(account) is None:
            await self.publish_topup(payments.trial_topup(account, amount))
            self._trialled.add(account)
            await message.answer(say("trial", amount=ton(amount)))

    async def on_help(self, message: Message) -> None:
        await message.answer(say("help"))

    async def on_privacy(self, message: Message) -> None:
        sealed_by = self.settings.telegram_sealing
        await message.answer(say("privacy", transport=say(f"privacy_{sealed_by}_sealed")))

    async def on_new(self, message: Message) -> None:
        self.conversations.clear(message.chat.id)
        await message.answer(say("new"))

    async def on_settings(self, message: Message) -> None:
        assert message.from_user is not None
        model = await self._model_for(message.from_user.id)
        budget = self.settings.telegram_context_tokens
        await message.answer(say("settings", model=model or "none available", budget=budget))

    async def on_paysupport(self, message: Message) -> None:
        refunds = say("paysupport_refunds" if self.settings.telegram_refunds else "paysupport_no")
        contact = self.settings.telegram_support_contact
        await message.answer(say("paysupport", contact=contact) + " " + refunds)

    async def on_model(self, message: Message) -> None:
        listed = await self._models_listed()
        if not listed:
            await message.answer(say("no_models"))
            return
        price = self.settings.telegram_price_per_token_nanoton
        rows = [
            [
                InlineKeyboardButton(
                    text=f"{m.id} — {ton(price * m.min_coefficient)}",  # x1000 tokens / 1000
                    callback_data=f"{MODEL_CALLBACK_PREFIX}{m.id}"[:64],
                )
            ]
            for m in listed
        ]
        await message.answer(
            say("choose_model"), reply_markup=InlineKeyboardMarkup(inline_keyboard=rows)
        )

    async def on_model_chosen(self, query: CallbackQuery) -> None:
        assert query.data is not None
        model = query.data.removeprefix(MODEL_CALLBACK_PREFIX)
        if model not in {m.id for m in await self._models_listed()}:
            await query.answer(say("no_models"), show_alert=True)
            return
        self.chosen_model[query.from_user.id] = model
        await query.answer(say("model_set", model=model))

    async def on_balance(self, message: Message) -> None:
        assert message.from_user is not None
        balance = self.balances.of(self.account(message.from_user.id))
        if balance is None:
            await message.answer(say("balance_unknown"))
            return
        available, held = balance
        await message.answer(say("balance", available=ton(available), held=ton(held)))

    async def on_usage(self, message: Message) -> None:
        assert message.from_user is not None
        served = self.served.get(message.from_user.id)
        if not served:
            await message.answer(say("usage_empty"))
            return
        price = self.settings.telegram_price_per_token_nanoton
        lines = [say("usage_header")]
        for s in reversed(served):
            prompt, completion, coefficient = s.prompt_tokens, s.completion_tokens, COEFFICIENT_ONE
            if s.receipt is not None:  # the worker's signed counts, as billing charges them
                prompt, completion = s.receipt["prompt_tokens"], s.receipt["completion_tokens"]
                coefficient = s.receipt["coefficient"]
            cost = (prompt + completion) * price * coefficient // COEFFICIENT_ONE
            notes = (" (stopped)" if s.stopped else "") + (
                f", receipt signed by {s.receipt['worker_id']}" if s.receipt is not None else ""
            )
            lines.append(
                f"{time.strftime('%H:%M', time.gmtime(s.at))} {s.model}: {prompt}+"
                f"{completion} tokens, about {ton(cost)} at list price{notes}"
            )
        await message.answer("\n".join(lines))

    async def on_verify(self, message: Message) -> None:
        assert message.from_user is not None
        served = self.served.get(message.from_user.id)
        if not served:
            await message.answer(say("verify_none"))
            return
        last = served[-1]
        text = say(
            "verify",
            request_id=last.request_id,
            model=last.model,
            prompt=last.prompt_tokens,
            completion=last.completion_tokens,
            path=say("path_client") if last.worker is not None else say("path_gateway"),
        )
        if last.worker is not None:
            text += "\n\n" + enclave_text(last.worker)
        if last.receipt is not None:
            receipt = json.dumps(last.receipt, indent=1, sort_keys=True)
            text += "\n\n" + say("verify_receipt") + "\n" + receipt
        await message.answer(text)

    # ---- payments ----------------------------------------------------------------------

    async def on_topup(self, message: Message) -> None:
        assert message.from_user is not None
        account = self.account(message.from_user.id)
        rate = self.settings.telegram_nanoton_per_star
        await message.answer(say("topup", rate=ton(rate)))
        for offer in payments.offers(self.settings.telegram_star_packs, rate):
            await message.answer_invoice(
                title=say("invoice_title", stars=offer.stars),
                description=say("invoice_description", amount=ton(offer.nanoton)),
                payload=payments.invoice_payload(account, offer.stars),
                currency=payments.STARS_CURRENCY,
                prices=[LabeledPrice(label=f"{offer.stars} Stars", amount=offer.stars)],
            )

    async def on_pre_checkout(self, query: PreCheckoutQuery) -> None:
        # Telegram waits 10 s for this answer: it is decided from the payload alone.
        problem = payments.precheck_problem(
            query.invoice_payload,
            query.currency,
            query.total_amount,
            self.account(query.from_user.id),
            self.settings.telegram_star_packs,
        )
        if problem is None:
            await query.answer(ok=True)
        else:
            await query.answer(ok=False, error_message=problem)

    async def on_payment(self, message: Message) -> None:
        payment = message.successful_payment
        assert payment is not None and message.from_user is not None
        parsed = payments.parse_payload(payment.invoice_payload)
        account = self.account(message.from_user.id)
        if parsed is None or parsed[0] != account or payment.currency != payments.STARS_CURRENCY:
            log.error("payment %s with a foreign payload", payment.telegram_payment_charge_id)
            return
        topup = payments.stars_topup(
            account,
            payment.telegram_payment_charge_id,
            payment.total_amount,
            self.settings.telegram_nanoton_per_star,
        )
        # Awaited before the update counts as handled: if this fails or the bot dies first,
        # Telegram delivers the update again, and billing credits the same topup_id once.
        await self.publish_topup(topup)
        if topup.topup_id not in self._credited:  # a redelivered update is not news
            self._credited.add(topup.topup_id)
            markup = None
            if self.settings.telegram_refunds:
                data = payments.REFUND_CALLBACK_PREFIX + topup.topup_id
                button = InlineKeyboardButton(text=say("refund_button"), callback_data=data)
                markup = InlineKeyboardMarkup(inline_keyboard=[[button]])
            text = say("credited", amount=ton(topup.amount_nanoton))
            await message.answer(text, reply_markup=markup)

    async def on_refund_pressed(self, query: CallbackQuery) -> None:
        """Ask billing to take the payment's credit back; refunds.py refunds it once debited."""
        assert query.data is not None
        if not self.settings.telegram_refunds:
            await query.answer(say("refunds_off"), show_alert=True)
            return
        topup_id = query.data.removeprefix(payments.REFUND_CALLBACK_PREFIX)
        await self.publish_topup(payments.refund_ask(topup_id, self.account(query.from_user.id)))
        await query.answer(say("refund_asked"))

    # ---- chat --------------------------------------------------------------------------

    def _addressed(self, message: Message, bot_username: str | None, bot_id: int) -> str | None:
        """The prompt in `message` if it is for the bot, else None (groups: mention or reply)."""
        text = message.text or ""
        if message.chat.type == ChatType.PRIVATE:
            return text
        mention = f"@{bot_username}" if bot_username else None
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == bot_id:
            return text
        if mention and mention.lower() in text.lower():
            start = text.lower().index(mention.lower())
            return (text[:start] + text[start + len(mention) :]).strip()
        return None

    async def on_text(self, message: Message, bot: Bot) -> None:
        assert message.from_user is not None
        if message.text and message.text.startswith("/"):
            return  # an unknown command is not a prompt
        me = await bot.me()
        prompt = self._addressed(message, me.username, me.id)
        if not prompt:
            return
        user = message.from_user.id
        limit = self.settings.telegram_max_prompt_chars
        if len(prompt) > limit:
            await message.reply(say("too_long", length=len(prompt), limit=limit))
            return
        if (wait := self.limits.retry_after(user)) is not None:
            await message.reply(say("rate_limited", seconds=int(wait) + 1))
            return
        if self.limits.over_daily_cap(user):
            await message.reply(say("daily_cap", tokens=self.settings.telegram_daily_token_cap))
            return
        if message.chat.id in self.active:
            await message.reply(say("busy"))
            return
        model = await self._model_for(user)
        if model is None:
            await message.reply(say("no_models"))
            return
        private = message.chat.type == ChatType.PRIVATE
        view = AnswerView(
            bot,
            message.chat.id,
            private,
            draft_id=secrets.randbelow(2**31 - 1) + 1,
            min_interval_s=(
                self.settings.telegram_draft_interval_seconds
                if private
                else self.settings.telegram_group_edit_interval_seconds
            ),
        )
        self.active[message.chat.id] = view
        task = asyncio.create_task(self._answer(message, view, user, model, prompt))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(
        self, message: Message, view: AnswerView, user: int, model: str, prompt: str
    ) -> None:
        chat = message.chat.id
        try:
            messages = self.conversations.with_prompt(chat, prompt)
            deltas = self.gateway.chat(self.account(user), model, messages, self.max_tokens)
            outcome = await view.show(deltas)
            if outcome.text:
                self.conversations.add_turn(chat, prompt, outcome.text)
            if outcome.finished is not None:
                f = outcome.finished
                self.limits.record_usage(user, f.prompt_tokens + f.completion_tokens)
                self._remember(
                    user,
                    Served(
                        f.request_id,
                        model,
                        f.prompt_tokens,
                        f.completion_tokens,
                        outcome.stopped,
                        time.time(),
                        receipt=f.receipt,
                        worker=f.worker,
                    ),
                )
            elif outcome.stopped:
                # Billed from the worker's receipt for what it produced; the count is billing's.
                self._remember(user, Served(outcome.request_id, model, 0, 0, True, time.time()))
        except GatewayError as exc:
            await self._tell(message, _failure_text(exc))
        except TelegramForbiddenError:
            # The user blocked the bot: stop here, retry nothing.
            self.blocked.add(user)
            log.info("user %s blocked the bot", user)
        except Exception:
            log.exception("answer in chat %s failed", chat)
            await self._tell(message, say("failed", code="internal_error"))
        finally:
            self.active.pop(chat, None)

    async def _tell(self, message: Message, text: str) -> None:
        with contextlib.suppress(TelegramForbiddenError):
            await message.answer(text)

    def _remember(self, user: int, served: Served) -> None:
        self.served.setdefault(user, deque(maxlen=RECENT_REQUESTS)).append(served)

    async def on_generation_stopped(self, event: MessageGenerationStopped) -> None:
        view = self.active.get(event.chat.id)
        if view is not None and view.draft_id == event.draft_id:
            view.stop()

    async def on_stop_pressed(self, query: CallbackQuery) -> None:
        assert query.data is not None
        chat = query.message.chat.id if query.message else None
        view = self.active.get(chat) if chat is not None else None
        draft = query.data.removeprefix(STOP_CALLBACK_PREFIX)
        if view is not None and str(view.draft_id) == draft:
            view.stop()
        await query.answer()

    # ---- models ------------------------------------------------------------------------

    async def _models_listed(self) -> list[Model]:
        fetched_at, listed = self._models
        if time.monotonic() - fetched_at > MODELS_TTL_S or not listed:
            try:
                listed = await self.gateway.models()
            except GatewayError:
                log.warning("could not list the models", exc_info=True)
                return listed
            self._models = (time.monotonic(), listed)
        return listed

    async def _model_for(self, user: int) -> str | None:
        listed = {m.id for m in await self._models_listed()}
        for choice in (self.chosen_model.get(user), self.settings.telegram_default_model):
            if choice and choice in listed:
                return choice
        return min(listed) if listed else None


def enclave_text(worker: dict[str, Any]) -> str:
    """Which enclave answered, as the bot verified it (cocoon.client's WorkerCheck)."""
    root = worker.get("root") or "unknown"
    if worker.get("development_root"):
        root += " (a development root, not Intel's: a test network)"
    return say(
        "verify_enclave",
        worker=worker.get("worker_id"),
        tcb=worker.get("tcb_status") or "unknown",
        advisories=", ".join(worker.get("advisory_ids") or ()) or "none",
        image=worker.get("image_hash") or "unknown",
        root=root,
        fmspc=worker.get("fmspc") or "unknown",
    )


def _failure_text(error: GatewayError) -> str:
    if error.status == 402:
        return say("insufficient")
    if error.status == 503:
        return say("all_busy")
    return say("failed", code=error.code)
