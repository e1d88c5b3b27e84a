"""Showing an answer while the model writes it.

Private chats get a message draft (`sendMessageDraft`) updated as tokens arrive, with Telegram's
own stop button (`can_stop`); the final message is sent when the answer ends. Groups have no
drafts: one message is edited at most once a second (Telegram's limit for a chat is about one
message a second), with an inline Stop button. Until the first token the chat shows "typing".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiogram import Bot
from aiogram.enums import ChatAction
from aiogram.exceptions import TelegramRetryAfter
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from cocoon.telegram.gateway import Delta, Finished, Started
from cocoon.telegram.text import split_message, tail_within

log = logging.getLogger(__name__)

TYPING_EVERY_S = 4.5  # Telegram shows a chat action for 5 s
STOP_CALLBACK_PREFIX = "stop:"
STOPPED_NOTE = "\n\n[stopped]"


@dataclass
class Outcome:
    text: str
    finished: Finished | None
    stopped: bool
    request_id: str = ""
    first_token_s: float | None = None
    updates: int = 0


@dataclass
class AnswerView:
    """One answer being shown; `stop()` ends the generation (the network cancels it)."""

    bot: Bot
    chat_id: int
    private: bool
    draft_id: int
    min_interval_s: float
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    _message_id: int | None = None
    _shown: str = ""
    _last_update: float = 0.0

    def stop(self) -> None:
        self.stop_event.set()

    async def show(self, deltas: AsyncIterator[Started | Delta | Finished]) -> Outcome:
        """Consume `deltas`, update the chat, send the final message(s)."""
        started = time.monotonic()
        outcome = Outcome("", None, False)
        typing = asyncio.create_task(self._typing())
        stop_wait = asyncio.create_task(self.stop_event.wait())
        try:
            while True:
                step = asyncio.ensure_future(anext(deltas))
                done, _ = await asyncio.wait({step, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await step
                    outcome.stopped = True
                    break
                try:
                    item = step.result()
                except StopAsyncIteration:
                    break
                if isinstance(item, Started):
                    outcome.request_id = item.request_id
                    continue
                if isinstance(item, Finished):
                    outcome.finished = item
                    break
                if outcome.first_token_s is None:
                    outcome.first_token_s = time.monotonic() - started
                    typing.cancel()
                outcome.text += item.text
                if await self._update(outcome.text):
                    outcome.updates += 1
        finally:
            typing.cancel()
            stop_wait.cancel()
            # Closing the stream disconnects from the gateway, which cancels on the worker.
            await deltas.aclose()  # type: ignore[attr-defined]
        await self._finish(outcome)
        return outcome

    async def _typing(self) -> None:
        while True:
            with contextlib.suppress(TelegramRetryAfter):
                await self.bot.send_chat_action(self.chat_id, ChatAction.TYPING)
            await asyncio.sleep(TYPING_EVERY_S)

    def _stop_button(self) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(
                        text="Stop", callback_data=f"{STOP_CALLBACK_PREFIX}{self.draft_id}"
                    )
                ]
            ]
        )

    async def _update(self, text: str) -> bool:
        """Show `text` so far, unless the last update was too recent. True if shown."""
        now = time.monotonic()
        if now - self._last_update < self.min_interval_s or not text.strip():
            return False
        shown = tail_within(text)
        try:
            if self.private:
                await self.bot.send_message_draft(
                    chat_id=self.chat_id, draft_id=self.draft_id, text=shown, can_stop=True
                )
            elif self._message_id is None:
                message = await self.bot.send_message(
                    self.chat_id, shown, reply_markup=self._stop_button()
                )
                self._message_id = message.message_id
            elif shown != self._shown:
                await self.bot.edit_message_text(
                    text=shown,
                    chat_id=self.chat_id,
                    message_id=self._message_id,
                    reply_markup=self._stop_button(),
                )
        except TelegramRetryAfter as exc:
            # Flood control: skip updates until Telegram allows the next one.
            self._last_update = now + exc.retry_after
            return False
        self._last_update, self._shown = now, shown
        return True

    async def _finish(self, outcome: Outcome) -> None:
        text = outcome.text.strip() or "(no answer)"
        if outcome.stopped:
            text += STOPPED_NOTE
        parts = split_message(text)
        if self._message_id is not None:
            first, *rest = parts
            await _with_retry(
                lambda: self.bot.edit_message_text(
                    text=first, chat_id=self.chat_id, message_id=self._message_id
                )
            )
        else:
            rest = parts
        for part in rest:
            await _with_retry(lambda part=part: self.bot.send_message(self.chat_id, part))


async def _with_retry(call: Callable, attempts: int = 3):  # type: ignore[type-arg]
    """A final message must arrive: wait out flood control (429 retry_after) and retry."""
    for attempt in range(attempts):
        try:
            return await call()
        except TelegramRetryAfter as exc:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(exc.retry_after)
    return None
