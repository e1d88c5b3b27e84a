"""An emulated TON chain: toncenter v2 HTTP API over TON's real transaction emulator.

`cocoon up --ton` runs it as the development network's chain (billing's deposits and payouts,
`cocoon worker audit`), and the tests use it as the TON node: the one documented test boundary
in billing. It must behave like a node, so:

* every message runs through `pytvm`'s TransactionEmulator (TON's own libemulator): the wallet
  contract's real code checks the Ed25519 signature, the seqno and valid_until, and produces the
  outgoing transfers; the node then delivers those to their destinations (also emulated), so
  balances, lt, hashes and comments are what a chain would produce;
* `sendBoc` parses the BOC and runs the external message against the current state first, and
  refuses it as a liteserver does ("External message was not accepted"); accepted messages wait
  for the next block, where they run again against the state of that moment;
* blocks are produced by a ticker thread (or by `produce_block()`); the masterchain seqno
  advances once per block, which is what billing counts confirmations against.

Faults a real network has, on demand: `lose_next_sends` accepts a BOC and silently drops it,
`fail_next_requests` answers non-JSON 503s. Time is the wall clock plus `advance_time()`.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

with warnings.catch_warnings():
    # pytvm imports pkg_resources (setuptools<81), which warns on import.
    warnings.simplefilter("ignore")
    from pytvm.transaction_emulator import TransactionEmulator
    from pytvm.tvm_emulator import TvmEmulator
    from pytvm.utils import DEFAULT_CONFIG_BOC

from pytoniq_core import Address, Cell
from pytoniq_core.tlb import CurrencyCollection
from pytoniq_core.tlb.account import (
    Account,
    AccountState,
    AccountStorage,
    ShardAccount,
    StorageExtraInfo,
    StorageInfo,
    StorageUsed,
)
from pytoniq_core.tlb.transaction import MessageAny, Transaction


class NodeError(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def _raw(address: Address) -> str:
    return address.to_str(is_user_friendly=False)


def _friendly(address: Address | None) -> str:
    if address is None:
        return ""
    return address.to_str(is_user_friendly=True, is_bounceable=True, is_url_safe=True)


def _parse_address(text: Any) -> Address:
    try:
        return Address(str(text))
    except Exception:
        raise NodeError(416, f"Incorrect address: {text!r}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _uninit(address: Address, balance: int, now: int) -> ShardAccount:
    # The construction platform-notes found to work with pytvm 0.0.14 / pytoniq-core 0.1.x.
    return ShardAccount(
        Account(
            address,
            StorageInfo(StorageUsed(0, 0), StorageExtraInfo("storage_extra_none"), now, None),
            # No extra currencies: pytoniq-core serialises None so, though it annotates a dict.
            AccountStorage(
                0,
                CurrencyCollection(balance, None),  # type: ignore[arg-type]
                AccountState("account_uninit"),
            ),
        ),
        bytes(32),
        0,
    )


def _storage(acc: _Acc) -> AccountStorage:
    """An account's storage; every account this node keeps was created with one (`_uninit`)."""
    account = acc.state.account
    if account is None:
        raise NodeError(500, f"account {_raw(acc.address)} has no state")
    return account.storage


def _message_cells(tx: Transaction) -> tuple[Cell | None, list[Cell]]:
    """The in/out message cells exactly as stored in the transaction (hashes must match)."""
    messages = tx.cell.refs[0].begin_parse()
    in_cell = messages.load_ref() if messages.load_bit() else None
    outs = messages.load_dict(15, value_deserializer=lambda src: src.load_ref())
    return in_cell, [outs[i] for i in sorted(outs)] if outs else []


def _msg_data(body: Cell | None) -> dict[str, Any]:
    if body is None or (len(body.bits) == 0 and not body.refs):
        return {"@type": "msg.dataRaw", "body": "", "init_state": ""}
    s = body.begin_parse()
    if len(body.bits) >= 32 and s.preload_uint(32) == 0:
        s.skip_bits(32)
        try:
            text = s.load_snake_bytes().decode("utf-8")
            return {"@type": "msg.dataText", "text": _b64(text.encode())}
        except Exception:
            pass
    return {"@type": "msg.dataRaw", "body": _b64(body.to_boc()), "init_state": ""}


def _message_json(cell: Cell) -> dict[str, Any]:
    msg = MessageAny.deserialize(cell.begin_parse())
    info = msg.info
    data = _msg_data(msg.body)
    value = info.value_coins if msg.is_internal else 0
    text = ""
    if data["@type"] == "msg.dataText":
        text = base64.b64decode(data["text"]).decode()
    return {
        "@type": "raw.message",
        "hash": _b64(cell.hash),
        "source": _friendly(getattr(info, "src", None)) if msg.is_internal else "",
        "destination": _friendly(info.dest) if not msg.is_external_out else "",
        "value": str(value),
        "fwd_fee": str(getattr(info, "fwd_fee", 0) or 0),
        "ihr_fee": str(getattr(info, "ihr_fee", 0) or 0),
        "created_lt": str(getattr(info, "created_lt", 0) or 0),
        "body_hash": _b64(msg.body.hash) if msg.body is not None else "",
        "msg_data": data,
        "message": text,
    }


@dataclass
class _Tx:
    lt: int
    hash: bytes
    utime: int
    json: dict[str, Any]
    mc_seqno: int


@dataclass
class _Acc:
    address: Address
    state: ShardAccount
    txs: list[_Tx] = field(default_factory=list)  # oldest first


class TonNode:
    """Start with `with TonNode() as node:`; `node.url` is the toncenter v2 base URL."""

    def __init__(self, *, block_interval: float | None = 0.05, port: int = 0) -> None:
        self._port = port  # 0: any free port
        self._lock = threading.RLock()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pytvm loads libemulator via pkg_resources here
            self._emulator = TransactionEmulator()
        self._config = Cell.one_from_boc(DEFAULT_CONFIG_BOC)
        self._accounts: dict[str, _Acc] = {}
        self._queue: list[Cell] = []
        self._lt = 1_000_000
        self.mc_seqno = 1
        self._offset = 0
        self._block_interval = block_interval
        self._stop = threading.Event()
        self.lose_next_sends = 0
        self.fail_next_requests = 0
        self.sent_bocs: list[bytes] = []
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> TonNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        node = self

        class Handler(_Handler):
            pass

        Handler.node = node
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        serve.start()
        self._threads.append(serve)
        if self._block_interval:
            ticker = threading.Thread(target=self._tick, daemon=True)
            ticker.start()
            self._threads.append(ticker)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v2"

    def _tick(self) -> None:
        while not self._stop.wait(self._block_interval):
            self.produce_block()

    # ---- chain state ----------------------------------------------------------------------

    def now(self) -> int:
        return int(time.time()) + self._offset

    def advance_time(self, seconds: int) -> None:
        with self._lock:
            self._offset += seconds

    def fund(self, address: str, amount: int) -> None:
        """Genesis allocation: an uninitialised account holding `amount` nanoTON."""
        addr = _parse_address(address)
        with self._lock:
            if _raw(addr) in self._accounts:
                raise ValueError(f"{address} already exists")
            self._accounts[_raw(addr)] = _Acc(addr, _uninit(addr, amount, self.now()))

    def balance(self, address: str) -> int:
        with self._lock:
            acc = self._accounts.get(_raw(_parse_address(address)))
            if acc is None or acc.state.account is None:  # account_none: never held funds
                return 0
            return acc.state.account.storage.balance.grams

    def transactions(self, address: str) -> list[dict[str, Any]]:
        with self._lock:
            acc = self._accounts.get(_raw(_parse_address(address)))
            return [t.json for t in acc.txs] if acc else []

    def _account(self, addr: Address) -> _Acc:
        acc = self._accounts.get(_raw(addr))
        if acc is None:
            acc = self._accounts[_raw(addr)] = _Acc(addr, _uninit(addr, 0, self.now()))
        return acc

    def _emulate(self, acc: _Acc, message: Cell) -> dict[str, Any]:
        self._emulator.set_unixtime(self.now())
        self._emulator.set_lt(self._lt)
        return self._emulator.emulate_transaction(acc.state.serialize(), message)

    def _commit(self, acc: _Acc, result: dict[str, Any]) -> list[Cell]:
        tx: Transaction = result["transaction"]
        in_cell, out_cells = _message_cells(tx)
        record = {
            "@type": "raw.transaction",
            "address": {"@type": "accountAddress", "account_address": _friendly(acc.address)},
            "utime": tx.now,
            "data": _b64(tx.cell.to_boc()),
            "transaction_id": {
                "@type": "internal.transactionId",
                "lt": str(tx.lt),
                "hash": _b64(tx.cell.hash),
            },
            "fee": str(tx.total_fees.grams),
            "storage_fee": "0",
            "other_fee": str(tx.total_fees.grams),
            "in_msg": _message_json(in_cell) if in_cell is not None else None,
            "out_msgs": [_message_json(c) for c in out_cells],
        }
        # Built fully before any state changes: a failure cannot leave a half-applied tx.
        acc.state = result["shard_account"]
        acc.txs.append(_Tx(tx.lt, tx.cell.hash, tx.now, record, self.mc_seqno))
        self._lt = max(self._lt, tx.lt + len(out_cells) + 1) + 10
        return [c for c in out_cells if MessageAny.deserialize(c.begin_parse()).is_internal]

    def _check_external(self, boc: bytes) -> Cell:
        try:
            cell = Cell.one_from_boc(boc)
            msg = MessageAny.deserialize(cell.begin_parse())
        except Exception as exc:
            raise NodeError(500, f"Failed to deserialize BOC: {exc}") from None
        if not msg.is_external:
            raise NodeError(500, "message is not an inbound external message")
        acc = self._account(msg.info.dest)
        result = self._emulate(acc, cell)
        if not result["success"]:
            raise NodeError(
                500,
                "LITE_SERVER_UNKNOWN: cannot apply external message to current state : "
                f"{result.get('error', 'External message was not accepted')}",
            )
        return cell

    def send_boc(self, boc: bytes) -> None:
        with self._lock:
            cell = self._check_external(boc)
            self.sent_bocs.append(boc)
            if self.lose_next_sends:
                self.lose_next_sends -= 1
                return
            self._queue.append(cell)

    def produce_block(self) -> None:
        """Apply queued external messages and everything they cause; one masterchain block."""
        with self._lock:
            queue, self._queue = self._queue, []
            self.mc_seqno += 1
            internal: list[Cell] = []
            for cell in queue:
                msg = MessageAny.deserialize(cell.begin_parse())
                acc = self._account(msg.info.dest)
                result = self._emulate(acc, cell)
                if result["success"]:  # else: expired or replayed meanwhile, dropped as a node does
                    internal += self._commit(acc, result)
            for _ in range(1000):  # bounded: a message loop cannot hang the node
                if not internal:
                    break
                cell = internal.pop(0)
                msg = MessageAny.deserialize(cell.begin_parse())
                acc = self._account(msg.info.dest)
                result = self._emulate(acc, cell)
                if result["success"]:
                    internal += self._commit(acc, result)

    # ---- API methods ----------------------------------------------------------------------

    def api(self, method: str, params: dict[str, Any]) -> Any:
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            raise NodeError(404, f"Not Found: unknown method {method}")
        with self._lock:
            return handler(params)

    def _api_getMasterchainInfo(self, params: dict[str, Any]) -> Any:
        return {
            "@type": "blocks.masterchainInfo",
            "last": {"@type": "ton.blockIdExt", "workchain": -1, "seqno": self.mc_seqno},
        }

    def _api_getAddressInformation(self, params: dict[str, Any]) -> Any:
        addr = _parse_address(_required(params, "address"))
        acc = self._accounts.get(_raw(addr))
        if acc is None:
            return {
                "balance": "0",
                "state": "uninitialized",
                "code": "",
                "data": "",
                "last_transaction_id": {"lt": "0", "hash": _b64(bytes(32))},
            }
        storage = _storage(acc)
        kind = storage.state.type_
        state = {"account_active": "active", "account_frozen": "frozen"}.get(kind, "uninitialized")
        code = data = ""
        if kind == "account_active":  # only an active account's state has a StateInit
            init = storage.state.state_init
            code = _b64(init.code.to_boc()) if init.code is not None else ""
            data = _b64(init.data.to_boc()) if init.data is not None else ""
        last = acc.txs[-1] if acc.txs else None
        return {
            "@type": "raw.fullAccountState",
            "balance": str(storage.balance.grams),
            "code": code,
            "data": data,
            "state": state,
            "last_transaction_id": {
                "lt": str(last.lt if last else 0),
                "hash": _b64(last.hash if last else bytes(32)),
            },
            "sync_utime": self.now(),
        }

    def _api_getTransactions(self, params: dict[str, Any]) -> Any:
        addr = _parse_address(_required(params, "address"))
        limit = _number(params.get("limit", 10), "limit")
        acc = self._accounts.get(_raw(addr))
        txs = list(reversed(acc.txs)) if acc else []
        if params.get("lt") is not None:
            lt = _number(params["lt"], "lt")
            start = next((i for i, t in enumerate(txs) if t.lt == lt), None)
            if start is None or (params.get("hash") and _b64(txs[start].hash) != params["hash"]):
                raise NodeError(500, "LITE_SERVER_UNKNOWN: cannot locate transaction in block")
            txs = txs[start:]
        if params.get("to_lt") is not None:
            to_lt = _number(params["to_lt"], "to_lt")
            txs = [t for t in txs if t.lt > to_lt]
        return [t.json for t in txs[:limit]]

    def _api_runGetMethod(self, params: dict[str, Any]) -> Any:
        addr = _parse_address(_required(params, "address"))
        method = _required(params, "method")
        acc = self._accounts.get(_raw(addr))
        storage = _storage(acc) if acc is not None else None
        if storage is None or storage.state.type_ != "account_active":
            return {"gas_used": 0, "stack": [], "exit_code": -13}
        init = storage.state.state_init
        vm = TvmEmulator(init.code, init.data)
        vm.set_c7(_raw(addr), self.now(), storage.balance.grams, "00" * 32, self._config)
        result = vm.run_get_method(method if not str(method).isdigit() else int(method), [])
        stack = [
            ["num", hex(v)] if isinstance(v, int) else ["cell", str(v)] for v in result["stack"]
        ]
        return {
            "gas_used": result.get("gas_used", 0),
            "stack": stack,
            "exit_code": int(result.get("vm_exit_code", 0)),
        }

    def _api_sendBoc(self, params: dict[str, Any]) -> Any:
        raw = _required(params, "boc")
        try:
            boc = base64.b64decode(raw, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise NodeError(500, "Failed to deserialize BOC: not base64") from None
        self.send_boc(boc)
        return {"@type": "ok"}


def _required(params: dict[str, Any], name: str) -> Any:
    if params.get(name) in (None, ""):
        raise NodeError(422, f"missing required parameter: {name}")
    return params[name]


def _number(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NodeError(422, f"parameter {name} is not an integer: {value!r}") from None


class _Handler(BaseHTTPRequestHandler):
    node: TonNode

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._answer(url.path, params)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        try:
            params = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(params, dict):
                raise ValueError
        except ValueError:
            self._send(422, {"ok": False, "error": "body is not a JSON object", "code": 422})
            return
        self._answer(url.path, params)

    def _answer(self, path: str, params: dict[str, Any]) -> None:
        node = self.node
        with node._lock:
            if node.fail_next_requests:
                node.fail_next_requests -= 1
                self._send_raw(503, b"Service Temporarily Unavailable", "text/plain")
                return
        if not path.startswith("/api/v2/"):
            self._send(404, {"ok": False, "error": "Not Found", "code": 404})
            return
        try:
            result = node.api(path.removeprefix("/api/v2/"), params)
        except NodeError as exc:
            self._send(exc.code, {"ok": False, "error": str(exc), "code": exc.code})
            return
        self._send(200, {"ok": True, "result": result})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json")

    def _send_raw(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
