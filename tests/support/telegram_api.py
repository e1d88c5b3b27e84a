"""A Bot API server for tests: Telegram has no offline server, so this one stands in for it.

It speaks the Bot API's HTTP protocol (`POST /bot<token>/<method>`, form or JSON parameters,
`{"ok": ..., "result" | "error_code", "description"}` answers) for the methods Cocoon's bot uses,
checks their parameters as https://core.telegram.org/bots/api documents them (required fields,
types, lengths, Stars invoices), answers as Telegram does (Message objects, 400/403/429 errors),
records every call, and lets a test play the users: messages, button presses, payments.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_ID = 7_000_000_001
BOT_USERNAME = "cocoon_test_bot"
CHAT_ACTIONS = {
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
}
COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")


class ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float


@dataclass
class FakeBotApi:
    token: str = "123456:TEST-token"
    calls: list[Call] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    blocked_chats: set[int] = field(default_factory=set)
    flood: dict[str, int] = field(default_factory=dict)  # method -> retry_after, once
    # Stars payments made (charge id -> (user id, Stars)) and the charge ids refunded.
    charges: dict[str, tuple[int, int]] = field(default_factory=dict)
    refunded: set[str] = field(default_factory=set)
    refusing_refunds: bool = False  # every refund fails as Telegram fails an invalid one
    _update_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _message_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _texts: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    url: str = ""

    # ---- server ------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await _params(request)
        self.calls.append(Call(method, params, time.monotonic()))
        self._changed.set()
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        try:
            if (retry := self.flood.pop(method, None)) is not None:
                raise ApiError(429, f"Too Many Requests: retry after {retry}", retry)
            result = await handler(params)
        except ApiError as exc:
            return _error(exc.code, exc.description, exc.retry_after)
        return web.json_response({"ok": True, "result": result})

    # ---- methods -----------------------------------------------------------------------

    async def _m_getMe(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._bot_user()

    async def _m_deleteWebhook(self, p: dict[str, Any]) -> bool:
        return True

    async def _m_getUpdates(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        offset = _int(p, "offset", required=False)
        if offset:
            # Confirms every update below the offset: Telegram never sends them again.
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        timeout = min(_int(p, "timeout", required=False) or 0, 5)
        if not self.updates and timeout:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        limit = _int(p, "limit", required=False) or 100
        return self.updates[:limit]

    async def _m_setMyCommands(self, p: dict[str, Any]) -> bool:
        commands = _json(p, "commands")
        if not isinstance(commands, list) or not 1 <= len(commands) <= 100:
            raise ApiError(400, "Bad Request: commands must be a list of 1-100 BotCommand")
        for c in commands:
            if not COMMAND_RE.match(c.get("command", "")):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(c.get("description", "")) <= 256:
                raise ApiError(400, "Bad Request: command description must be 1-256 chars")
        return True

    async def _m_sendChatAction(self, p: dict[str, Any]) -> bool:
        self._chat(p)
        if p.get("action") not in CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    async def _m_sendMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(p)
        text = _text(p, minimum=1)
        _markup(p)
        return self._new_message(chat, text, p.get("reply_markup"))

    async def _m_sendMessageDraft(self, p: dict[str, Any]) -> bool:
        chat = self._chat(p)
        if chat <= 0:
            raise ApiError(400, "Bad Request: drafts can be sent to private chats only")
        if _int(p, "draft_id") == 0:
            raise ApiError(400, "Bad Request: draft_id must be non-zero")
        _text(p, minimum=0)
        return True

    async def _m_editMessageText(self, p: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(p)
        message_id = _int(p, "message_id")
        text = _text(p, minimum=1)
        markup = _markup(p)
        old = self._texts.get((chat, message_id))
        if old is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        if old == (text, json.dumps(markup, sort_keys=True)):
            raise ApiError(400, "Bad Request: message is not modified")
        self._texts[(chat, message_id)] = (text, json.dumps(markup, sort_keys=True))
        return {**self._message_object(chat, message_id, text), "edit_date": int(time.time())}

    async def _m_sendInvoice(self, p: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(p)
        for name, low, high in (("title", 1, 32), ("description", 1, 255)):
            if not low <= len(p.get(name, "")) <= high:
                raise ApiError(400, f"Bad Request: invoice {name} must be {low}-{high} characters")
        if not 1 <= len(p.get("payload", "").encode()) <= 128:
            raise ApiError(400, "Bad Request: invoice payload must be 1-128 bytes")
        prices = _json(p, "prices")
        if p.get("currency") == "XTR":
            if p.get("provider_token"):
                raise ApiError(400, "Bad Request: provider_token must be empty for Stars")
            if not isinstance(prices, list) or len(prices) != 1:
                raise ApiError(400, "Bad Request: Stars invoices take exactly one price")
        if not all(isinstance(x.get("amount"), int) and x["amount"] > 0 for x in prices):
            raise ApiError(400, "Bad Request: price amounts must be positive integers")
        message = self._new_message(chat, "", None)
        message["invoice"] = {
            "title": p["title"],
            "description": p["description"],
            "start_parameter": "",
            "currency": p["currency"],
            "total_amount": sum(x["amount"] for x in prices),
        }
        message["_payload"] = p["payload"]
        return message

    async def _m_answerPreCheckoutQuery(self, p: dict[str, Any]) -> bool:
        if not p.get("pre_checkout_query_id"):
            raise ApiError(400, "Bad Request: pre_checkout_query_id is required")
        ok = _bool(p, "ok")
        if not ok and not p.get("error_message"):
            raise ApiError(400, "Bad Request: error_message is required when ok is False")
        return True

    async def _m_refundStarPayment(self, p: dict[str, Any]) -> bool:
        user_id = _int(p, "user_id")
        charge_id = p.get("telegram_payment_charge_id")
        if not charge_id:
            raise ApiError(400, "Bad Request: telegram_payment_charge_id is required")
        charge = self.charges.get(charge_id)
        if charge is None or charge[0] != user_id or self.refusing_refunds:
            raise ApiError(400, "Bad Request: CHARGE_ID_INVALID")
        if charge_id in self.refunded:
            raise ApiError(400, "Bad Request: CHARGE_ALREADY_REFUNDED")
        self.refunded.add(charge_id)
        return True

    async def _m_answerCallbackQuery(self, p: dict[str, Any]) -> bool:
        if not p.get("callback_query_id"):
            raise ApiError(400, "Bad Request: callback_query_id is required")
        return True

    # ---- what users do -----------------------------------------------------------------

    def _push(self, kind: str, payload: dict[str, Any]) -> int:
        update_id = next(self._update_ids)
        self.updates.append({"update_id": update_id, kind: payload})
        self._wake.set()
        return update_id

    def user(self, user_id: int, lang: str = "en") -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": f"U{user_id}", "language_code": lang}

    def say(
        self,
        user_id: int,
        text: str,
        *,
        chat: dict[str, Any] | None = None,
        reply_to_bot: bool = False,
    ) -> int:
        chat = chat or {"id": user_id, "type": "private", "first_name": f"U{user_id}"}
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": self.user(user_id),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        if reply_to_bot:
            message["reply_to_message"] = self._message_object(chat["id"], 1, "earlier")
        return self._push("message", message)

    def press(self, user_id: int, chat_id: int, message_id: int, data: str) -> int:
        message = self._message_object(chat_id, message_id, "")
        query = {
            "id": f"cb{next(self._update_ids)}",
            "from": self.user(user_id),
            "chat_instance": "ci",
            "data": data,
            "message": message,
        }
        return self._push("callback_query", query)

    def stop_generation(self, chat_id: int, draft_id: int) -> int:
        chat = {"id": chat_id, "type": "private"}
        return self._push("stopped_message_generation", {"chat": chat, "draft_id": draft_id})

    async def pay(
        self, user_id: int, invoice: Call, charge_id: str, *, deliveries: int = 1
    ) -> None:
        """Pay an invoice the bot sent: pre-checkout (answered within 10 s, or the payment
        fails), then the successful payment, delivered `deliveries` times."""
        payload, amount = invoice.params["payload"], _json(invoice.params, "prices")[0]["amount"]
        query_id = f"pcq{next(self._update_ids)}"
        query = {
            "id": query_id,
            "from": self.user(user_id),
            "currency": "XTR",
            "total_amount": amount,
            "invoice_payload": payload,
        }
        self._push("pre_checkout_query", query)
        answer = await self.wait_for(
            lambda c: (
                c.method == "answerPreCheckoutQuery"
                and c.params["pre_checkout_query_id"] == query_id
            ),
            timeout_s=10,
        )
        if not _bool(answer.params, "ok"):
            raise AssertionError(f"pre-checkout refused: {answer.params.get('error_message')}")
        payment = {
            "currency": "XTR",
            "total_amount": amount,
            "invoice_payload": payload,
            "telegram_payment_charge_id": charge_id,
            "provider_payment_charge_id": "",
        }
        self.charges[charge_id] = (user_id, amount)
        message_id = next(self._message_ids)
        for _ in range(deliveries):
            message = {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": {"id": user_id, "type": "private"},
                "from": self.user(user_id),
                "successful_payment": payment,
            }
            self._push("message", message)

    # ---- inspection --------------------------------------------------------------------

    def sent(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method
            and (chat_id is None or int(c.params.get("chat_id", 0)) == chat_id)
        ]

    async def wait_for(self, predicate: Any, timeout_s: float = 30.0, *, since: int = 0) -> Call:
        """The first call matching `predicate` among those from index `since` on."""
        deadline = time.monotonic() + timeout_s
        seen = since
        while True:
            for call in self.calls[seen:]:
                if predicate(call):
                    return call
            seen = len(self.calls)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                recent = [(c.method, c.params.get("text", "")[:60]) for c in self.calls[-10:]]
                raise AssertionError(f"no such call within {timeout_s} s; last calls: {recent}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    # ---- helpers -----------------------------------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "Cocoon",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _chat(self, p: dict[str, Any]) -> int:
        chat = _int(p, "chat_id")
        if chat in self.blocked_chats:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _message_object(self, chat: int, message_id: int, text: str) -> dict[str, Any]:
        kind = "private" if chat > 0 else "group"
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat, "type": kind},
            "from": self._bot_user(),
            "text": text,
        }

    def _new_message(self, chat: int, text: str, markup: Any) -> dict[str, Any]:
        message_id = next(self._message_ids)
        markup_obj = json.loads(markup) if isinstance(markup, str) else markup
        self._texts[(chat, message_id)] = (text, json.dumps(markup_obj, sort_keys=True))
        return self._message_object(chat, message_id, text)


async def _params(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        return dict(await request.json())
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _error(code: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=code)


def _int(p: dict[str, Any], name: str, *, required: bool = True) -> int:
    value = p.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"Bad Request: parameter {name} is required")
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"Bad Request: {name} must be an integer") from None


def _bool(p: dict[str, Any], name: str) -> bool:
    value = p.get(name)
    if isinstance(value, bool):
        return value
    if value in ("true", "True", "1"):
        return True
    if value in ("false", "False", "0"):
        return False
    raise ApiError(400, f"Bad Request: {name} must be a Boolean")


def _json(p: dict[str, Any], name: str) -> Any:
    value = p.get(name)
    if value is None:
        raise ApiError(400, f"Bad Request: parameter {name} is required")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ApiError(400, f"Bad Request: can't parse {name} JSON object") from None
    return value


def _text(p: dict[str, Any], *, minimum: int) -> str:
    text = p.get("text", "")
    units = len(str(text).encode("utf-16-le")) // 2
    if minimum and not str(text).strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if units > 4096:
        raise ApiError(400, "Bad Request: message is too long")
    return str(text)


def _markup(p: dict[str, Any]) -> Any:
    markup = p.get("reply_markup")
    if markup is None:
        return None
    value = _json(p, "reply_markup")
    for row in value.get("inline_keyboard", []):
        for button in row:
            if not button.get("text"):
                raise ApiError(400, "Bad Request: inline keyboard button text is empty")
            data = button.get("callback_data")
            if data is not None and not 1 <= len(data.encode()) <= 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return value
