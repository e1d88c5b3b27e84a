"""Worker payouts over TON: a persisted state machine that never pays twice.

    planned  --sign-->  signed --send--> sent --chain shows our message--> confirmed | reversed
                          \\______________________/
                           expired (never accepted and valid_until passed) -> planned again

Rules that make a crash anywhere safe:
* The signed transfer (BOC, seqno or query number, valid_until, message hash) is committed to
  SQLite *before* it is sent. After a restart it is either found on chain (by the external
  message hash in the wallet's transactions), re-sent byte for byte (the wallet contract accepts
  it at most once: v4r2 by its seqno, the highload wallet by its query id), or proven dead:
  valid_until has passed (and, for v4r2, the wallet's seqno still equals ours), so the contract
  can never accept it. Only then are its payouts signed again.
* One batch in flight at a time (up to 4 orders with v4r2, 80 with the highload wallet), so seqno
  bookkeeping is trivial: the next batch uses the wallet's seqno.
* Each receipt's fee is owed to the payout address it was earned under (the address in the
  worker's verdict at capture, see BillingEngine.earnings_by_address), and is paid there: one
  payout per worker and address. Earnings under a verdict without an attested address go to
  the registry's address for the worker (the operator's, as before claims v2). Nothing is paid
  to an address the registry bans; those earnings wait.
* The ledger moves a worker's earnings to `payouts:pending` before signing, and to `ton:payouts`
  (or back to the worker when the wallet skipped the message) once the chain shows the outcome.
  Ledger operations are idempotent by payout id, so replaying them after a crash is harmless.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cocoon.billing.engine import UNATTESTED, BillingEngine
from cocoon.billing.money import BillingError, check_amount
from cocoon.billing.ton.address import AddressError, parse_address
from cocoon.billing.ton.api import TonApi, TonApiError, TonTransaction
from cocoon.billing.ton.wallet import Order, SignedTransfer, Wallet

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payouts (
    payout_id TEXT PRIMARY KEY, worker_id TEXT NOT NULL, destination TEXT NOT NULL,
    amount INTEGER NOT NULL, status TEXT NOT NULL, batch_id TEXT, tx TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, seqno INTEGER NOT NULL, valid_until INTEGER NOT NULL,
    boc BLOB NOT NULL, message_hash TEXT NOT NULL, scan_from_lt INTEGER NOT NULL,
    status TEXT NOT NULL, sends INTEGER NOT NULL DEFAULT 0, tx TEXT,
    created_at INTEGER NOT NULL);
"""

OPEN_PAYOUT = ("planned", "signed")


@dataclass(frozen=True, slots=True)
class PayoutRow:
    payout_id: str
    worker_id: str
    destination: str
    amount: int
    status: str  # planned, signed, confirmed, reversed, cancelled (planned, never signed)
    batch_id: str | None
    tx: str | None
    earned_under: str = UNATTESTED  # the attested address the paid earnings were earned under


@dataclass(frozen=True, slots=True)
class BatchRow:
    batch_id: str
    seqno: int
    valid_until: int
    boc: bytes
    message_hash: str
    scan_from_lt: int
    status: str  # signed, sent, confirmed, expired
    sends: int
    tx: str | None


class PayoutStore:
    """SQLite with synchronous=FULL: a committed state survives SIGKILL and power loss."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(payouts)")}
        if "earned_under" not in columns:  # added with attested addresses (old stores too)
            self._db.execute("ALTER TABLE payouts ADD COLUMN earned_under TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        self._db.close()

    def payouts(self, *statuses: str, batch_id: str | None = None) -> list[PayoutRow]:
        sql = (
            "SELECT payout_id, worker_id, destination, amount, status, batch_id, tx, earned_under"
            " FROM payouts"
        )
        clauses, args = [], []
        if statuses:
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if batch_id is not None:
            clauses.append("batch_id = ?")
            args.append(batch_id)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self._db.execute(sql + " ORDER BY created_at, payout_id", args).fetchall()
        return [PayoutRow(*r) for r in rows]

    def count_for(self, worker_id: str) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM payouts WHERE worker_id = ?", (worker_id,)
        ).fetchone()[0]

    def add_payout(self, row: PayoutRow, now: int) -> None:
        self._db.execute(
            "INSERT INTO payouts (payout_id, worker_id, destination, amount, status, batch_id,"
            " tx, created_at, updated_at, earned_under) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (row.payout_id, row.worker_id, row.destination, row.amount, row.status,
             row.batch_id, row.tx, now, now, row.earned_under),
        )  # fmt: skip

    def set_payout(self, payout_id: str, status: str, now: int, tx: str | None = None) -> None:
        self._db.execute(
            "UPDATE payouts SET status = ?, tx = COALESCE(?, tx), updated_at = ? "
            "WHERE payout_id = ?",
            (status, tx, now, payout_id),
        )

    def batches(self, *statuses: str) -> list[BatchRow]:
        sql = (
            "SELECT batch_id, seqno, valid_until, boc, message_hash, scan_from_lt, status, sends,"
            " tx FROM batches"
        )
        args: tuple[str, ...] = ()
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            args = statuses
        return [BatchRow(*r) for r in self._db.execute(sql + " ORDER BY created_at", args)]

    def add_batch(self, batch: BatchRow, payout_ids: list[str], now: int) -> None:
        """The signed transfer and its payouts, in one transaction: both or neither."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)",
                (batch.batch_id, batch.seqno, batch.valid_until, batch.boc, batch.message_hash,
                 batch.scan_from_lt, batch.status, batch.sends, batch.tx, now),
            )  # fmt: skip
            for pid in payout_ids:
                self._db.execute(
                    "UPDATE payouts SET status='signed', batch_id=?, updated_at=? "
                    "WHERE payout_id=? AND status='planned'",
                    (batch.batch_id, now, pid),
                )

    def set_batch(self, batch_id: str, status: str, *, tx: str | None = None) -> None:
        self._db.execute(
            "UPDATE batches SET status = ?, tx = COALESCE(?, tx) WHERE batch_id = ?",
            (status, tx, batch_id),
        )

    def count_send(self, batch_id: str) -> None:
        self._db.execute("UPDATE batches SET sends = sends + 1 WHERE batch_id = ?", (batch_id,))

    def expire_batch(self, batch_id: str, now: int) -> None:
        """A batch proven dead: its payouts go back to planned, to be signed anew."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE batches SET status='expired' WHERE batch_id=?", (batch_id,))
            self._db.execute(
                "UPDATE payouts SET status='planned', batch_id=NULL, updated_at=? "
                "WHERE batch_id=? AND status='signed'",
                (now, batch_id),
            )


@dataclass(frozen=True, slots=True)
class StepReport:
    planned: list[str]
    signed: str | None  # batch id
    confirmed: list[str]
    reversed: list[str]
    expired: list[str]
    skipped: dict[str, str]  # worker id -> why it was not paid


class PayoutService:
    def __init__(
        self,
        engine: BillingEngine,
        api: TonApi,
        wallet: Wallet,
        store: PayoutStore,
        destination_of: Callable[[str], str | None],
        *,
        threshold: int,
        banned: Callable[[str], bool] = lambda _address: False,
        ttl_s: int = 60,
        expiry_margin_s: int = 30,
        wallet_reserve: int = 100_000_000,  # 0.1 TON kept for gas, as COCOON
        fee_allowance: int = 10_000_000,  # per order, forwarding fees paid by the wallet
        clock: Callable[[], float] = time.time,
        on_signed: Callable[[SignedTransfer], None] | None = None,
        on_sent: Callable[[SignedTransfer], None] | None = None,
        before_sign: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.api = api
        self.wallet = wallet
        self.store = store
        self._destination_of = destination_of  # the registry's address: unattested earnings
        self._banned = banned
        self.threshold = check_amount(threshold, "payout threshold", allow_zero=False)
        self._ttl = ttl_s
        self._margin = expiry_margin_s
        self._reserve = wallet_reserve
        self._fee_allowance = fee_allowance
        self._clock = clock
        # Hooks after the signed transfer is persisted / after it was sent (crash tests, metrics).
        self._on_signed = on_signed
        self._on_sent = on_sent
        # Makes the ledger moves durable before any transfer is signed (the Kafka service
        # commits its pending transaction here; a fenced instance fails here and never signs).
        self._before_sign = before_sign

    def _now(self) -> int:
        return int(self._clock())

    def _start(self, row: PayoutRow, now: int) -> None:
        self.engine.start_payout(
            row.payout_id, row.worker_id, row.amount, now * 1000, earned_under=row.earned_under
        )

    def recover(self) -> None:
        """Make the ledger agree with the store after a crash (all ledger calls idempotent)."""
        now = self._now()
        for row in self.store.payouts():
            if row.status == "planned":
                try:
                    self._start(row, now)
                except BillingError as exc:
                    # Never signed, and its ledger move was never made durable: it was planned
                    # on earnings that a crash or a takeover lost before they were committed.
                    # Dropping it is safe; the earnings will be paid once they are committed.
                    self.store.set_payout(row.payout_id, "cancelled", now)
                    log.warning("payout %s cancelled before signing: %s", row.payout_id, exc)
            elif row.status == "signed":
                self._start(row, now)
            elif row.status == "confirmed":
                self._start(row, now)
                self.engine.confirm_payout(row.payout_id, now * 1000, tx=row.tx or "")
            elif row.status == "reversed":
                self._start(row, now)
                self.engine.reverse_payout(row.payout_id, now * 1000, reason="skipped by wallet")

    async def step(self) -> StepReport:
        """Settle the batch in flight; then plan and sign the next one if nothing is in flight."""
        self.recover()
        confirmed: list[str] = []
        reversed_: list[str] = []
        expired: list[str] = []
        for batch in self.store.batches("signed", "sent"):
            outcome = await self._reconcile(batch)
            if outcome == "expired":
                expired.append(batch.batch_id)
            elif outcome is not None:
                confirmed += outcome[0]
                reversed_ += outcome[1]
        planned, skipped = self.plan()
        signed = None
        if not self.store.batches("signed", "sent") and self.store.payouts("planned"):
            if self._before_sign is not None:
                await self._before_sign()
            signed = await self._sign_and_send()
        return StepReport(planned, signed, confirmed, reversed_, expired, skipped)

    def plan(self) -> tuple[list[str], dict[str, str]]:
        """Move earnings at or above the threshold into new payouts: one per worker and address
        they were earned under, one open at a time for each."""
        now = self._now()
        busy = {(row.worker_id, row.earned_under) for row in self.store.payouts(*OPEN_PAYOUT)}
        planned: list[str] = []
        skipped: dict[str, str] = {}
        for account, balance in sorted(self.engine.ledger.balances().items()):
            if not account.startswith("worker:") or balance < self.threshold:
                continue
            worker_id = account.removeprefix("worker:")
            for earned_under, amount in sorted(self.engine.earnings_by_address(worker_id).items()):
                if amount < self.threshold or (worker_id, earned_under) in busy:
                    continue
                destination, problem = self._destination(worker_id, earned_under)
                if destination is None:
                    skipped[worker_id] = problem
                    continue
                payout_id = f"{worker_id}.{self.store.count_for(worker_id) + 1}"
                row = PayoutRow(
                    payout_id, worker_id, destination, amount, "planned", None, None, earned_under
                )
                # Store first: on restart `recover` replays the ledger move for every payout.
                self.store.add_payout(row, now)
                self._start(row, now)
                planned.append(payout_id)
        return planned, skipped

    def _destination(self, worker_id: str, earned_under: str) -> tuple[str | None, str]:
        """Where earnings under `earned_under` go: that attested address itself, or for
        unattested earnings the registry's; None and why when they cannot be paid now."""
        text = earned_under or self._destination_of(worker_id) or ""
        try:
            destination = parse_address(text)
        except AddressError as exc:
            return None, f"no valid payout address: {exc}"
        if self._banned(destination):
            return None, f"payout address {destination} is banned by the registry"
        return destination, ""

    async def _sign_and_send(self) -> str | None:
        rows = self.store.payouts("planned")[: self.wallet.max_orders]
        if not rows:
            return None
        info = await self.api.get_address_information(self.wallet.address)
        spendable = info.balance - self._reserve
        chosen, total = [], 0
        for row in rows:
            if total + row.amount + self._fee_allowance <= spendable:
                chosen.append(row)
                total += row.amount + self._fee_allowance
        if not chosen:
            return None  # wallet needs topping up; earnings stay safely in payouts:pending
        if self.wallet.uses_seqno:
            seqno = await self.api.get_seqno(self.wallet.address)
        else:  # the query id's low half: tells apart batches signed in the same second
            seqno = len(self.store.batches()) + 1
        now = self._now()
        orders = [Order(r.destination, r.amount, f"cocoon payout {r.payout_id}") for r in chosen]
        transfer = self.wallet.sign(seqno, orders, now + self._ttl, deploy=info.state != "active")
        batch = BatchRow(
            batch_id=f"b{seqno}.{transfer.message_hash[:16]}",
            seqno=seqno,
            valid_until=transfer.valid_until,
            boc=transfer.boc,
            message_hash=transfer.message_hash,
            scan_from_lt=info.last_lt,
            status="signed",
            sends=0,
            tx=None,
        )
        self.store.add_batch(batch, [r.payout_id for r in chosen], now)
        if self._on_signed is not None:
            self._on_signed(transfer)
        await self._send(batch)
        if self._on_sent is not None:
            self._on_sent(transfer)
        return batch.batch_id

    async def _send(self, batch: BatchRow) -> None:
        self.store.count_send(batch.batch_id)
        try:
            await self.api.send_boc(batch.boc)
        except TonApiError:
            # Not accepted now (already applied, or the node is unreachable): the chain decides
            # at the next reconcile; never re-sign on a send error.
            return
        self.store.set_batch(batch.batch_id, "sent")

    async def _find(self, batch: BatchRow) -> TonTransaction | None:
        txs = await self.api.iter_transactions_since(self.wallet.address, batch.scan_from_lt)
        for tx in txs:
            msg = tx.in_msg
            external = msg is not None and msg.source is None
            if external and base64.b64decode(msg.hash).hex() == batch.message_hash:
                return tx
        return None

    async def _reconcile(self, batch: BatchRow) -> tuple[list[str], list[str]] | str | None:
        tx = await self._find(batch)
        now = self._now()
        if tx is not None:
            return self._settle(batch, tx, now)
        if self.wallet.uses_seqno and await self.api.get_seqno(self.wallet.address) > batch.seqno:
            # Our seqno is used but our message is not (yet) in the history we read: wait, and
            # never sign again for these payouts until the chain explains it.
            return None
        # Past valid_until neither wallet accepts the message (v4r2 checks it with the seqno,
        # the highload wallet with the query id), so not found by then means never.
        if now > batch.valid_until + self._margin:
            self.store.expire_batch(batch.batch_id, now)
            return "expired"
        await self._send(batch)  # byte-identical resend: accepted at most once
        return None

    def _settle(self, batch: BatchRow, tx: TonTransaction, now: int) -> tuple[list[str], list[str]]:
        confirmed, reversed_ = [], []
        outs = {(m.destination, m.value, m.comment) for m in tx.out_msgs}
        for row in self.store.payouts(batch_id=batch.batch_id):
            if row.status != "signed":
                continue
            key = (row.destination, row.amount, f"cocoon payout {row.payout_id}")
            if key in outs:
                self.engine.confirm_payout(row.payout_id, now * 1000, tx=tx.tx_id)
                self.store.set_payout(row.payout_id, "confirmed", now, tx=tx.tx_id)
                confirmed.append(row.payout_id)
            else:
                # The wallet ran the message but skipped this transfer (ignore_errors mode):
                # nothing left, so the earnings go back to the worker.
                self.engine.reverse_payout(row.payout_id, now * 1000, reason="skipped by wallet")
                self.store.set_payout(row.payout_id, "reversed", now, tx=tx.tx_id)
                reversed_.append(row.payout_id)
        self.store.set_batch(batch.batch_id, "confirmed", tx=tx.tx_id)
        return confirmed, reversed_
