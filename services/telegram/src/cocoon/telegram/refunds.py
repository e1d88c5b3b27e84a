"""Stars refunds: billing takes the credit back first, then the bot refunds the payment.

The order keeps the money exact. A user asks (the button under a payment's confirmation); the bot
publishes a `billing.topups` record of kind REFUND; billing debits the whole credit if the balance
still holds it and answers on `billing.refunds`. Only a DEBITED answer makes the bot call
`refundStarPayment`, and its offset is committed only after Telegram answered, so a bot that dies
in between refunds on restart, where Telegram's `CHARGE_ALREADY_REFUNDED` tells a repeat from a
first time. If Telegram refuses the refund for good, the credit is restored (a new top-up derived
from the refunded one), so the user never loses both the Stars and the balance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

from cocoon.core.bus.consumer import BusConsumer, Message
from cocoon.core.codec import models
from cocoon.core.contracts import Topic
from cocoon.telegram.payments import PublishTopUp, restored_credit
from cocoon.telegram.texts import say, ton

log = logging.getLogger(__name__)

REFUNDS_TOPIC = Topic.BILLING_REFUNDS
# Telegram's answer when the charge was refunded already: a repeat after a restart.
ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"
# Telegram or the network failing for a while: asked again, from the same record.
TRANSIENT = (TelegramNetworkError, TelegramRetryAfter, TelegramServerError)
RETRY_DELAY_S = 2.0


class RefundDesk:
    """Acts on billing's refund answers for this bot's accounts."""

    def __init__(
        self,
        bot: Bot,
        account_prefix: str,
        publish_topup: PublishTopUp,
    ) -> None:
        self.bot = bot
        self.account_prefix = account_prefix
        self.publish_topup = publish_topup

    async def run(self, consumer: BusConsumer, stopping: asyncio.Event) -> None:
        """Handle `consumer`'s records (with `on_record` as its handler) until `stopping`."""
        while not stopping.is_set():
            try:
                await consumer.poll_once()
            except TRANSIENT as exc:
                # The consumer rewound to the record: it is handled again after the pause.
                delay = getattr(exc, "retry_after", RETRY_DELAY_S)
                log.warning("refund: Telegram unavailable (%s); again in %s s", exc, delay)
                await asyncio.sleep(delay)

    async def on_record(self, message: Message) -> None:
        refund = message.value
        assert isinstance(refund, models.Refund)
        if not refund.account_id.startswith(self.account_prefix):
            return  # another front end's account
        user_id = int(refund.account_id.removeprefix(self.account_prefix))
        if refund.status != models.RefundStatus.DEBITED:
            await self._tell(user_id, say("refund_refused", reason=refund.reason))
            return
        try:
            await self.bot.refund_star_payment(
                user_id=user_id, telegram_payment_charge_id=refund.reference
            )
        except TelegramBadRequest as exc:
            if ALREADY_REFUNDED in exc.message:
                return  # refunded before a restart; the user was told then
            log.error("refund of %s refused by Telegram: %s", refund.topup_id, exc.message)
            await self.publish_topup(restored_credit(refund))
            await self._tell(user_id, say("refund_failed", amount=ton(refund.amount_nanoton)))
            return
        await self._tell(
            user_id,
            say("refunded", stars=refund.paid_amount, amount=ton(refund.amount_nanoton)),
        )

    async def _tell(self, user_id: int, text: str) -> None:
        with contextlib.suppress(TelegramForbiddenError):  # blocked by the user: it stands
            await self.bot.send_message(user_id, text)
