"""A toncenter v2-compatible HTTP API client (httpx), returning validated, typed values.

Only the methods billing needs: getTransactions, sendBoc, runGetMethod (seqno),
getAddressInformation, getMasterchainInfo. Everything coming back is checked here (numbers are
numbers, addresses parse, hashes are base64 of 32 bytes), so the rest of billing never sees a
malformed value from the network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Any

import httpx
from tonsdk.boc import Cell

from cocoon.billing.money import INT64_MAX, BillingError
from cocoon.billing.ton.address import parse_address


class TonApiError(BillingError):
    """The TON API refused a call or answered something malformed."""

    def __init__(self, message: str, code: int | None = None) -> None:
        self.code = code
        super().__init__(f"TON API: {message}" + (f" (code {code})" if code else ""))


@dataclass(frozen=True, slots=True)
class TonMessage:
    source: str | None  # raw address; None for external messages
    destination: str | None
    value: int
    hash: str  # base64 of the message cell hash
    comment: str | None  # text comment (op 0), if the body is one
    body_kind: str  # "empty", "text", "binary"


@dataclass(frozen=True, slots=True)
class TonTransaction:
    lt: int
    hash: str  # base64
    utime: int
    in_msg: TonMessage | None
    out_msgs: tuple[TonMessage, ...]
    fee: int

    @property
    def tx_id(self) -> str:
        return f"{self.lt}:{base64.b64decode(self.hash).hex()}"


@dataclass(frozen=True, slots=True)
class AddressInfo:
    balance: int
    state: str  # "active", "uninitialized", "frozen"
    last_lt: int
    last_hash: str


def _int(value: Any, what: str) -> int:
    # toncenter encodes 64-bit numbers as decimal strings.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TonApiError(f"{what} is not a number: {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise TonApiError(f"{what} is not a number: {value!r}") from None
    if number < 0 or number > 2 * INT64_MAX:
        raise TonApiError(f"{what} out of range: {value!r}")
    return number


def _hash(value: Any, what: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise TonApiError(f"{what} is not a base64 32-byte hash: {value!r}")
    return value


def _addr(value: Any, what: str) -> str | None:
    if value in (None, ""):
        return None
    try:
        return parse_address(value)
    except BillingError as exc:
        raise TonApiError(f"{what}: {exc}") from None


def decode_comment(body: bytes) -> tuple[str, str | None]:
    """("text", comment) for an op-0 UTF-8 comment body BOC, else ("binary"/"empty", None)."""
    if not body:
        return "empty", None
    try:
        cell = Cell.one_from_boc(body)
    except Exception:
        return "binary", None
    data = bytearray()
    while True:
        if cell.bits.length % 8:
            return "binary", None
        data += bytes(cell.bits.array)[: cell.bits.length // 8]
        if not cell.refs:
            break
        cell = cell.refs[0]
    if len(data) == 0:
        return "empty", None
    if len(data) < 4 or data[:4] != b"\0\0\0\0":
        return "binary", None
    try:
        return "text", data[4:].decode("utf-8")
    except UnicodeDecodeError:
        return "binary", None


def _message(raw: Any, what: str) -> TonMessage:
    if not isinstance(raw, dict):
        raise TonApiError(f"{what} is not an object")
    data = raw.get("msg_data") or {}
    kind, comment = "empty", None
    if data.get("@type") == "msg.dataText":
        try:
            comment = base64.b64decode(data.get("text", ""), validate=True).decode("utf-8")
            kind = "text"
        except (binascii.Error, UnicodeDecodeError):
            kind = "binary"
    elif data.get("@type") == "msg.dataRaw" and data.get("body"):
        try:
            kind, comment = decode_comment(base64.b64decode(data["body"], validate=True))
        except binascii.Error:
            kind = "binary"
    return TonMessage(
        source=_addr(raw.get("source"), f"{what}.source"),
        destination=_addr(raw.get("destination"), f"{what}.destination"),
        value=_int(raw.get("value", "0"), f"{what}.value"),
        hash=_hash(raw.get("hash"), f"{what}.hash"),
        comment=comment,
        body_kind=kind,
    )


def parse_transaction(raw: Any) -> TonTransaction:
    if not isinstance(raw, dict) or not isinstance(raw.get("transaction_id"), dict):
        raise TonApiError(f"malformed transaction: {str(raw)[:200]}")
    tid = raw["transaction_id"]
    in_msg = raw.get("in_msg")
    return TonTransaction(
        lt=_int(tid.get("lt"), "transaction lt"),
        hash=_hash(tid.get("hash"), "transaction hash"),
        utime=_int(raw.get("utime", 0), "utime"),
        in_msg=_message(in_msg, "in_msg") if in_msg else None,
        out_msgs=tuple(_message(m, "out_msg") for m in raw.get("out_msgs") or ()),
        fee=_int(raw.get("fee", "0"), "fee"),
    )


class TonApi:
    """Async toncenter v2 client. Retries transport errors, 429 and non-JSON 5xx (a proxy in
    front of the node) a few times; a definite refusal (ok=false) is raised at once."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = client or httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout
        )
        self._retries = retries
        self._backoff = backoff_s

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, *, params: dict | None = None, body: dict | None = None):
        last: Exception | None = None
        for attempt in range(self._retries + 1):
            try:
                if body is None:
                    response = await self._client.get(method, params=params)
                else:
                    response = await self._client.post(method, json=body)
            except httpx.TransportError as exc:
                last = exc
            else:
                transient = response.status_code == 429 or (
                    response.status_code >= 500
                    and "json" not in response.headers.get("content-type", "")
                )
                if not transient:
                    return self._unwrap(response)
                last = TonApiError(f"HTTP {response.status_code}", response.status_code)
            if attempt < self._retries:
                await asyncio.sleep(self._backoff * 2**attempt)
        raise TonApiError(f"{method} failed after {self._retries + 1} attempts: {last}")

    @staticmethod
    def _unwrap(response: httpx.Response) -> Any:
        try:
            payload = response.json()
        except ValueError:
            raise TonApiError(
                f"non-JSON answer ({response.status_code})", response.status_code
            ) from None
        if not isinstance(payload, dict) or not payload.get("ok"):
            error = payload.get("error") if isinstance(payload, dict) else payload
            code = payload.get("code") if isinstance(payload, dict) else None
            raise TonApiError(str(error), code or response.status_code)
        return payload.get("result")

    async def get_transactions(
        self,
        address: str,
        *,
        limit: int = 50,
        lt: int | None = None,
        hash: str | None = None,
        to_lt: int | None = None,
    ) -> list[TonTransaction]:
        """Newest first, starting at (lt, hash) inclusive when given, down to to_lt exclusive."""
        params: dict[str, Any] = {"address": parse_address(address), "limit": limit}
        if lt is not None:
            params.update(lt=str(lt), hash=hash)
        if to_lt is not None:
            params["to_lt"] = str(to_lt)
        result = await self._call("getTransactions", params=params)
        if not isinstance(result, list):
            raise TonApiError("getTransactions did not return a list")
        return [parse_transaction(t) for t in result]

    async def iter_transactions_since(self, address: str, after_lt: int) -> list[TonTransaction]:
        """All transactions with lt > after_lt, oldest first (pages through the history)."""
        found: list[TonTransaction] = []
        cursor: tuple[int, str] | None = None
        while True:
            lt, tx_hash = cursor if cursor else (None, None)
            page = await self.get_transactions(
                address, limit=50, lt=lt, hash=tx_hash, to_lt=after_lt
            )
            if cursor and page and (page[0].lt, page[0].hash) == cursor:
                page = page[1:]  # v2 pagination repeats the starting transaction
            page = [t for t in page if t.lt > after_lt]
            if not page:
                break
            found.extend(page)
            cursor = (page[-1].lt, page[-1].hash)
        found.sort(key=lambda t: t.lt)
        return found

    async def send_boc(self, boc: bytes) -> None:
        await self._call("sendBoc", body={"boc": base64.b64encode(boc).decode()})

    async def get_seqno(self, address: str) -> int:
        """The wallet's seqno; 0 for a wallet not deployed yet."""
        result = await self._call(
            "runGetMethod", body={"address": parse_address(address), "method": "seqno", "stack": []}
        )
        if not isinstance(result, dict):
            raise TonApiError("runGetMethod did not return an object")
        if result.get("exit_code") not in (0, 1):
            return 0  # uninitialised or frozen: no contract code to answer
        stack = result.get("stack") or []
        if not stack or not isinstance(stack[0], list) or stack[0][0] != "num":
            raise TonApiError(f"seqno: unexpected stack {stack!r}")
        try:
            return int(stack[0][1], 16)
        except (TypeError, ValueError):
            raise TonApiError(f"seqno is not a number: {stack[0][1]!r}") from None

    async def get_address_information(self, address: str) -> AddressInfo:
        result = await self._call(
            "getAddressInformation", params={"address": parse_address(address)}
        )
        if not isinstance(result, dict):
            raise TonApiError("getAddressInformation did not return an object")
        last = result.get("last_transaction_id") or {}
        return AddressInfo(
            balance=_int(result.get("balance"), "balance"),
            state=str(result.get("state")),
            last_lt=_int(last.get("lt", "0"), "last lt"),
            last_hash=str(last.get("hash", "")),
        )

    async def get_masterchain_seqno(self) -> int:
        result = await self._call("getMasterchainInfo")
        if not isinstance(result, dict) or not isinstance(result.get("last"), dict):
            raise TonApiError("getMasterchainInfo: malformed answer")
        return _int(result["last"].get("seqno"), "masterchain seqno")
