# GENERATED from schemas/avro/ by `cocoon topics codegen`: do not edit.
# Change the schemas and generate again (tests/core/test_codegen.py checks it is up to date).
"""Pydantic models of the latest version of every record in `schemas/avro/`.

The schemas are the only definition of a message; this module is generated from them
(`cocoon topics codegen`), so the two cannot disagree. Use the models for type-checked
construction and access:

    from cocoon.core.codec import models
    req = models.InferenceRequest(request_id="r-1", ...)
    models.RequestChannel.HTTP       # enums are StrEnums; fields hold the plain string
    codec.encode(req)                # or req.to_avro() for the plain dict

Every record class is available as `models.<SimpleName>` and `model_for("<full.name>")`.
"""

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from cocoon.core.codec.base import AvroModel


class Collateral(AvroModel):
    """DCAP collateral for one FMSPC as the attestation service used it (TCB info, QE identity,
    CRLs and issuer chains, all signed by Intel): the gateway serves it to clients, as a PCCS
    does, so they verify quotes themselves.
    """

    avro_name: ClassVar[str] = "cocoon.attestation.Collateral"
    avro_version: ClassVar[int] = 1

    fmspc: str = Field(description="FMSPC, lower-case hex (the record key).")
    ca: str = Field(description="PCK CA the PCK CRL is for (processor or platform).")
    collateral_json: str = Field(
        description=(
            "The collateral in dcap-qvl's QuoteCollateralV3 JSON shape (PEM chains, hex CRLs and "
            "signatures, the signed TCB info and QE identity as exact JSON text)."
        ),
    )
    not_before: datetime = Field(
        description="Start of its validity window (latest issueDate/thisUpdate).",
    )
    not_after: datetime = Field(description="End of its validity window (earliest nextUpdate).")
    published_at: datetime = Field(description="When the attestation service published it.")


class Evidence(AvroModel):
    """A worker's attestation evidence: canonical claims (its keys, models, image) and a TDX
    quote whose REPORTDATA is SHA-512 of the claims.
    """

    avro_name: ClassVar[str] = "cocoon.attestation.Evidence"
    avro_version: ClassVar[int] = 1

    evidence_id: str = Field(description="Unique id of this evidence.")
    worker_id: str = Field(description="Worker presenting it.")
    claims: bytes = Field(description="Canonical claims bytes (see cocoon.core.crypto).")
    tdx_quote: bytes = Field(description="Raw TDX quote (v4 or v5).")
    gpu_evidence: bytes | None = Field(
        default=None,
        description="GPU attestation evidence, where present.",
    )
    nonce: bytes | None = Field(
        default=None,
        description="Freshness nonce from the attestation service, if challenged.",
    )
    collected_at: datetime = Field(description="When the worker produced it.")


class RegistryKind(StrEnum):
    """What the entry is about."""

    UNKNOWN = "UNKNOWN"
    IMAGE = "IMAGE"
    MODEL = "MODEL"
    POLICY = "POLICY"
    MEASUREMENTS = "MEASUREMENTS"
    TCB_STATUS = "TCB_STATUS"
    ADVISORY = "ADVISORY"


RegistryKindSymbol = Literal[
    "UNKNOWN",
    "IMAGE",
    "MODEL",
    "POLICY",
    "MEASUREMENTS",
    "TCB_STATUS",
    "ADVISORY",
]


class RegistryEntry(AvroModel):
    """One entry of the policy registry (allowed image hash, model or policy setting). Latest per
    entry id wins; allowed=false revokes. v2 adds kinds for measurement sets, TCB statuses and
    advisories. v3: every entry is signed by the registry key (Ed25519 over the canonical
    bytes of its other fields, domain cocoon/registry-entry/v1); readers refuse unsigned or
    wrongly signed entries.
    """

    avro_name: ClassVar[str] = "cocoon.attestation.RegistryEntry"
    avro_version: ClassVar[int] = 3

    entry_id: str = Field(description="Stable id, '<kind>:<subject>' (the record key).")
    kind: RegistryKindSymbol = Field(default="UNKNOWN", description="What the entry is about.")
    subject: str = Field(
        description=(
            "Image hash (hex), model name, measurement-set id, TCB status, advisory id or policy "
            "setting name."
        ),
    )
    allowed: bool = Field(
        description="False revokes: verdicts that rely on it are withdrawn at once.",
    )
    attributes: dict[str, str] = Field(
        description="Kind-specific settings (e.g. a model's hash, a policy value).",
    )
    version: int = Field(description="Registry version after this change (monotonic).")
    updated_by: str = Field(description="Operator or tool that made the change.")
    updated_at: datetime = Field(description="When.")
    signature: bytes | None = Field(
        default=None,
        description=(
            "Ed25519 signature by the registry key over canonical_bytes({domain: 'cocoon/registry-"
            "entry/v1', payload: every other field, updated_at in unix ms}). Null only in entries "
            "written before v3, which readers refuse."
        ),
    )


class VerdictStatus(StrEnum):
    """Judgement."""

    UNKNOWN = "UNKNOWN"
    TRUSTED = "TRUSTED"
    REJECTED = "REJECTED"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"


VerdictStatusSymbol = Literal["UNKNOWN", "TRUSTED", "REJECTED", "REVOKED", "EXPIRED"]


class Verdict(AvroModel):
    """The attestation service's signed judgement of a worker. The latest per worker wins
    (compacted topic). v2 adds the classical HPKE key, the quote's REPORTDATA and
    measurements, and the next challenge nonce; v3 adds the payout address the worker
    attested.
    """

    avro_name: ClassVar[str] = "cocoon.attestation.Verdict"
    avro_version: ClassVar[int] = 3

    verdict_id: str = Field(description="Unique id of this verdict.")
    worker_id: str = Field(description="Worker judged.")
    evidence_id: str | None = Field(
        default=None,
        description="Evidence it was based on (null for revocations without new evidence).",
    )
    status: VerdictStatusSymbol = Field(default="UNKNOWN", description="Judgement.")
    reason: str | None = Field(default=None, description="Why (for anything but TRUSTED).")
    image_hash: bytes | None = Field(
        default=None,
        description="SHA-256 image hash over MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0..3.",
    )
    models: list[str] = Field(description="Models the worker may serve.")
    signing_key: bytes | None = Field(
        default=None,
        description="Worker's attested Ed25519 public key.",
    )
    hpke_public_key: bytes | None = Field(
        default=None,
        description="Worker's attested HPKE public key.",
    )
    hpke_suite: str | None = Field(default=None, description="HPKE suite of that key.")
    tcb_status: str | None = Field(
        default=None,
        description="TCB status reported by the DCAP verifier.",
    )
    registry_version: int = Field(description="Registry version the policy was evaluated against.")
    issued_at: datetime = Field(description="Issue time.")
    expires_at: datetime = Field(description="Expiry (hours, not days).")
    hpke_x25519: bytes | None = Field(
        default=None,
        description=(
            "Worker's attested X25519 HPKE public key (classical suite); hpke_public_key is the ML-"
            "KEM-768+X25519 one."
        ),
    )
    report_data: bytes | None = Field(
        default=None,
        description=(
            "The quote's REPORTDATA, SHA-512 of the canonical claims (replay detection across "
            "restarts)."
        ),
    )
    measurements: bytes | None = Field(
        default=None,
        description=(
            "MRTD || RTMR0..3 (5 x 48 bytes), so a registry change can re-check measurement sets."
        ),
    )
    challenge: bytes | None = Field(
        default=None,
        description=(
            "Nonce the worker puts in its next claims to re-attest before expires_at (single use)."
        ),
    )
    payout_address: str | None = Field(
        default=None,
        description=(
            "TON address (raw form, workchain:hex) the worker's claims bind (claims v2); billing "
            "pays the earnings made under this verdict there. Null for claims v1."
        ),
    )
    attestor_key_id: str = Field(description="Which attestation-service key signed it.")
    signature: bytes = Field(
        description="Ed25519 signature over the canonical verdict (see cocoon.core.crypto).",
    )


class WorkerCredential(AvroModel):
    """A worker's own Kafka credential, issued by the attestation service after a TRUSTED
    verdict: a SCRAM-SHA-512 user whose password is HPKE-sealed to the worker's attested key,
    so only the enclave can open it (docs/security.md).
    """

    avro_name: ClassVar[str] = "cocoon.attestation.WorkerCredential"
    avro_version: ClassVar[int] = 1

    worker_id: str = Field(description="Worker (the record key).")
    username: str = Field(description="The SCRAM user (Kafka principal) created for this worker.")
    verdict_id: str = Field(description="The TRUSTED verdict it was issued on.")
    signing_key: bytes = Field(
        description=(
            "The worker's attested Ed25519 key (as in that verdict): which process this credential "
            "is for."
        ),
    )
    hpke_suite: str = Field(
        description=(
            "HPKE suite the password is sealed with (a suite the worker attested a key for)."
        ),
    )
    hpke_enc: bytes = Field(description="HPKE encapsulated key.")
    sealed_password: bytes = Field(
        description=(
            "AEAD ciphertext of the password; the HPKE info binds it to worker_id, username and "
            "signing_key."
        ),
    )
    issued_at: datetime = Field(description="When the user was created or its password rotated.")


class AccountKind(StrEnum):
    """Who owns the account."""

    UNKNOWN = "UNKNOWN"
    CLIENT = "CLIENT"
    WORKER = "WORKER"
    PLATFORM = "PLATFORM"


AccountKindSymbol = Literal["UNKNOWN", "CLIENT", "WORKER", "PLATFORM"]


class Balance(AvroModel):
    """An account's balance after applying the ledger up to last_entry_id. Latest per account
    wins (compacted).
    """

    avro_name: ClassVar[str] = "cocoon.billing.Balance"
    avro_version: ClassVar[int] = 1

    account_id: str = Field(description="Account (the record key).")
    account_kind: AccountKindSymbol = Field(default="UNKNOWN", description="Who owns the account.")
    available_nanoton: int = Field(
        description="Spendable (clients) or earned and unpaid (workers).",
    )
    held_nanoton: int = Field(description="Held for requests in flight.")
    last_entry_id: str = Field(description="Last ledger entry applied.")
    entries_applied: int = Field(description="Number of ledger entries applied.")
    updated_at: datetime = Field(description="When.")


class GrantStatus(StrEnum):
    """GRANTED: usable until usable_until; REFUSED: not enough funds; CLOSED: the remainder went
    back to the account.
    """

    UNKNOWN = "UNKNOWN"
    GRANTED = "GRANTED"
    REFUSED = "REFUSED"
    CLOSED = "CLOSED"


GrantStatusSymbol = Literal["UNKNOWN", "GRANTED", "REFUSED", "CLOSED"]


class Grant(AvroModel):
    """An admission grant: funds billing holds for one gateway instance and one account ahead of
    time, so that gateway can admit the account's requests without waiting for billing.
    """

    avro_name: ClassVar[str] = "cocoon.billing.Grant"
    avro_version: ClassVar[int] = 1

    grant_id: str = Field(description="Deterministic: derived from the request that asked for it.")
    account_id: str = Field(description="The client account the funds come from.")
    gateway_id: str = Field(description="The only gateway instance that may admit against it.")
    status: GrantStatusSymbol = Field(default="UNKNOWN", description="What happened to the grant.")
    amount_nanoton: int = Field(
        description="Funds held for the grant (GRANTED), returned (CLOSED), or 0 (REFUSED).",
    )
    price_per_token: int = Field(
        description="nanoTON per adjusted token the grant's holds are priced at.",
    )
    max_bps: int = Field(
        description=(
            "The dearest per-category multiplier of that price list (10000 = 1.0x): with "
            "price_per_token, all the gateway needs to compute a hold exactly as billing does."
        ),
    )
    asked_by: str = Field(description="The request whose grant_ask_requests asked for it.")
    usable_until: datetime = Field(
        description=(
            "The gateway admits nothing against it after this; billing then returns the remainder."
        ),
    )
    decided_at: datetime = Field(description="When billing decided.")


class LedgerEntryKind(StrEnum):
    """Kind of movement."""

    UNKNOWN = "UNKNOWN"
    DEPOSIT = "DEPOSIT"
    HOLD = "HOLD"
    RELEASE = "RELEASE"
    CHARGE = "CHARGE"
    WORKER_CREDIT = "WORKER_CREDIT"
    COMMISSION = "COMMISSION"
    PAYOUT = "PAYOUT"
    PAYOUT_REVERSAL = "PAYOUT_REVERSAL"
    ADJUSTMENT = "ADJUSTMENT"


LedgerEntryKindSymbol = Literal[
    "UNKNOWN",
    "DEPOSIT",
    "HOLD",
    "RELEASE",
    "CHARGE",
    "WORKER_CREDIT",
    "COMMISSION",
    "PAYOUT",
    "PAYOUT_REVERSAL",
    "ADJUSTMENT",
]


class LedgerEntry(AvroModel):
    """One append-only ledger movement. The id is derived from the causing event, so replays
    never double-charge.
    """

    avro_name: ClassVar[str] = "cocoon.billing.LedgerEntry"
    avro_version: ClassVar[int] = 1

    entry_id: str = Field(description="Deterministic id derived from cause_id and kind.")
    account_id: str = Field(description="Account affected (the record key).")
    account_kind: AccountKindSymbol = Field(default="UNKNOWN", description="Who owns the account.")
    kind: LedgerEntryKindSymbol = Field(default="UNKNOWN", description="Kind of movement.")
    available_delta_nanoton: int = Field(description="Change of the spendable balance (signed).")
    held_delta_nanoton: int = Field(description="Change of the held amount (signed).")
    cause_id: str = Field(
        description="Event that caused it: reservation, receipt, deposit transaction, payout id.",
    )
    request_id: str | None = Field(default=None, description="Request concerned, if any.")
    memo: str | None = Field(default=None, description="Human note (never request content).")
    created_at: datetime = Field(description="When it was recorded.")


class PayoutStatus(StrEnum):
    """Payout state."""

    UNKNOWN = "UNKNOWN"
    REQUESTED = "REQUESTED"
    SENT = "SENT"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"


PayoutStatusSymbol = Literal["UNKNOWN", "REQUESTED", "SENT", "CONFIRMED", "FAILED"]


class Payout(AvroModel):
    """A TON payout to a worker, through its states; retried idempotently under the same payout
    id.
    """

    avro_name: ClassVar[str] = "cocoon.billing.Payout"
    avro_version: ClassVar[int] = 1

    payout_id: str = Field(description="Deterministic id of the payout.")
    worker_id: str = Field(description="Worker paid (the record key).")
    account_id: str = Field(description="Ledger account debited.")
    destination: str = Field(description="TON address.")
    amount_nanoton: int = Field(description="Amount sent.")
    status: PayoutStatusSymbol = Field(default="UNKNOWN", description="Payout state.")
    attempt: int = Field(description="Send attempt (1-based).")
    wallet_seqno: int | None = Field(
        default=None,
        description="Seqno of the sending wallet's message.",
    )
    tx_hash: str | None = Field(default=None, description="Transaction hash once sent.")
    error: str | None = Field(default=None, description="Failure reason.")
    created_at: datetime = Field(description="When it was requested.")
    updated_at: datetime = Field(description="Last state change.")


class RefundStatus(StrEnum):
    """What billing decided."""

    UNKNOWN = "UNKNOWN"
    DEBITED = "DEBITED"
    REFUSED = "REFUSED"


RefundStatusSymbol = Literal["UNKNOWN", "DEBITED", "REFUSED"]


class Refund(AvroModel):
    """Billing's answer to a REFUND top-up: the credit was debited (the front end now refunds the
    payment through its source) or refused, with why.
    """

    avro_name: ClassVar[str] = "cocoon.billing.Refund"
    avro_version: ClassVar[int] = 1

    topup_id: str = Field(description="The top-up asked to be refunded.")
    account_id: str = Field(description="The account that asked (the record key).")
    status: RefundStatusSymbol = Field(
        default="UNKNOWN",
        description=(
            "DEBITED: ledger entry refund:<topup_id> took the credit back (answered again, the "
            "same, when the ask is repeated). REFUSED: nothing moved; reason says why."
        ),
    )
    amount_nanoton: int = Field(description="What was debited (the whole credit); 0 when refused.")
    paid_amount: int = Field(
        description=(
            "What the user paid for the credit, in the source's unit (Stars); 0 when refused."
        ),
    )
    reference: str = Field(
        description=(
            "The payment's own reference (telegram_payment_charge_id) to refund; empty when "
            "refused."
        ),
    )
    reason: str = Field(
        description="Why it was refused, in words a user can read; empty when debited.",
    )
    decided_at: datetime = Field(description="When billing decided.")


class ReservationStatus(StrEnum):
    """Admission decision."""

    UNKNOWN = "UNKNOWN"
    HELD = "HELD"
    REJECTED = "REJECTED"


ReservationStatusSymbol = Literal["UNKNOWN", "HELD", "REJECTED"]


class RejectReason(StrEnum):
    """Why admission failed."""

    UNKNOWN = "UNKNOWN"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    ACCOUNT_SUSPENDED = "ACCOUNT_SUSPENDED"
    REQUEST_NOT_CO_PARTITIONED = "REQUEST_NOT_CO_PARTITIONED"


RejectReasonSymbol = Literal[
    "UNKNOWN",
    "INSUFFICIENT_FUNDS",
    "UNKNOWN_ACCOUNT",
    "UNKNOWN_MODEL",
    "ACCOUNT_SUSPENDED",
    "REQUEST_NOT_CO_PARTITIONED",
]


class Reservation(AvroModel):
    """Billing's admission decision: funds held for the worst-case cost, or a rejection the
    gateway turns into a 402. v2: the request's candidates, so the scheduler places a held
    client-sealed request only on them. v3: REQUEST_NOT_CO_PARTITIONED, a request whose id
    does not hash to its account's partition (billing's account shards).
    """

    avro_name: ClassVar[str] = "cocoon.billing.Reservation"
    avro_version: ClassVar[int] = 3

    reservation_id: str = Field(
        description="Deterministic: derived from the request id, so a replay holds once.",
    )
    request_id: str = Field(
        description=(
            "Request id chosen by the gateway (UUID string), co-partitioned with account_id "
            "(cocoon.core.request_ids); the key of every per-request topic."
        ),
    )
    account_id: str = Field(description="Paying account.")
    model: str = Field(description="Requested model id.")
    status: ReservationStatusSymbol = Field(default="UNKNOWN", description="Admission decision.")
    amount_nanoton: int = Field(description="Amount held (0 when rejected).")
    max_tokens: int = Field(description="Copied from the request for placement.")
    max_coefficient: int = Field(
        description="Copied from the request: placement may not exceed it (1000 = 1.0x).",
    )
    reject_reason: RejectReasonSymbol | None = Field(
        default=None,
        description="Why admission failed (null when held).",
    )
    available_nanoton: int | None = Field(
        default=None,
        description=(
            "Spendable balance when the decision was taken (for the client's error message)."
        ),
    )
    gateway_id: str = Field(description="Gateway instance waiting for this request.")
    deadline_at: datetime = Field(description="Copied from the request.")
    decided_at: datetime = Field(description="When billing decided.")
    candidates: list[str] = Field(
        default_factory=lambda: [],
        description="Copied from the request: the only workers it may be placed on (empty: any).",
    )


class Snapshot(AvroModel):
    """One chunk of billing's engine state after `seq` ledger entries (see billing.snapshots)."""

    avro_name: ClassVar[str] = "cocoon.billing.Snapshot"
    avro_version: ClassVar[int] = 1

    snapshot_key: str = Field(description="`<owner>/<chunk>` (the record key).")
    owner: str = Field(description="Whose state: the billing transactional id that wrote it.")
    seq: int = Field(
        description="Ledger entries the state includes: the tail starts at this sequence number.",
    )
    chunk: int = Field(description="This chunk's index, from 0.")
    chunks: int = Field(
        description="How many chunks the snapshot has (all written in one transaction).",
    )
    ledger_offsets: dict[str, int] = Field(
        description=(
            "billing.ledger partition (as a string) -> offset at or before the first record not in "
            "the state: the tail is read from here."
        ),
    )
    state: bytes = Field(
        description=(
            "This chunk of the zlib-compressed JSON engine state (chunks concatenated in order)."
        ),
    )
    created_at: datetime = Field(description="When.")


class TopUpSource(StrEnum):
    """What paid for it."""

    UNKNOWN = "UNKNOWN"
    TELEGRAM_STARS = "TELEGRAM_STARS"
    TRIAL = "TRIAL"


TopUpSourceSymbol = Literal["UNKNOWN", "TELEGRAM_STARS", "TRIAL"]


class TopUpKind(StrEnum):
    """CREDIT: credit the payment. REFUND: give a credited Stars payment back."""

    CREDIT = "CREDIT"
    REFUND = "REFUND"


TopUpKindSymbol = Literal["CREDIT", "REFUND"]


class TopUp(AvroModel):
    """Funds paid to the operator outside TON (Telegram Stars) or granted by a front end (a
    trial), to be credited to an account exactly once (billing's ledger entry id is
    topup:<topup_id>); or, with kind REFUND, the ask to give one such credit back (ledger
    entry refund:<topup_id>; billing answers on billing.refunds).
    """

    avro_name: ClassVar[str] = "cocoon.billing.TopUp"
    avro_version: ClassVar[int] = 2

    topup_id: str = Field(
        description=(
            "Unique per payment, derived from the payment itself (stars-<sha256 of the "
            "telegram_payment_charge_id, 32 hex>, trial-<account>), so a repeated delivery is the "
            "same top-up. For a REFUND: the credited top-up to give back."
        ),
    )
    account_id: str = Field(
        description="Account credited, or debited by a REFUND (the record key).",
    )
    amount_nanoton: int = Field(
        description=(
            "Credit in nanoTON (> 0); 0 for a REFUND, which gives back exactly what billing "
            "credited."
        ),
    )
    source: TopUpSourceSymbol = Field(
        default="UNKNOWN",
        description=(
            "What paid for it. Each source has its own ledger account, so the audit can tell them "
            "apart."
        ),
    )
    paid_amount: int = Field(
        description=(
            "What the user paid, in the source's own unit (Stars for TELEGRAM_STARS, 0 for TRIAL). "
            "0 for a REFUND."
        ),
    )
    reference: str = Field(
        description=(
            "The payment's own reference (telegram_payment_charge_id), for refunds and support. "
            "Empty for a REFUND (billing answers with the credit's)."
        ),
    )
    created_at: datetime = Field(description="When the front end learned of the payment.")
    kind: TopUpKindSymbol = Field(
        default="CREDIT",
        description=(
            "CREDIT: credit the payment once. REFUND: debit the whole credit of topup_id, if the "
            "account still holds it unspent, so the front end can refund the payment itself "
            "(refundStarPayment)."
        ),
    )


class EarningKind(StrEnum):
    """A request's fee credited, a payout sent, or a payout taken back (never confirmed)."""

    UNKNOWN = "UNKNOWN"
    CREDIT = "CREDIT"
    PAYOUT = "PAYOUT"
    PAYOUT_REVERSAL = "PAYOUT_REVERSAL"


EarningKindSymbol = Literal["UNKNOWN", "CREDIT", "PAYOUT", "PAYOUT_REVERSAL"]


class WorkerEarning(AvroModel):
    """One movement of a worker's earnings, as its owner may see it: the worker's side of a
    ledger entry of its account, with nothing of the paying account.
    """

    avro_name: ClassVar[str] = "cocoon.billing.WorkerEarning"
    avro_version: ClassVar[int] = 1

    entry_id: str = Field(
        description=(
            "The ledger entry's id (billing.ledger), so a reader counts each movement once."
        ),
    )
    worker_id: str = Field(description="The worker whose account moved (the record key).")
    kind: EarningKindSymbol = Field(
        default="UNKNOWN",
        description=(
            "A request's fee credited, a payout sent, or a payout taken back (never confirmed)."
        ),
    )
    amount_nanoton: int = Field(
        description="Change of the worker's payable balance (signed: a payout is negative).",
    )
    request_id: str | None = Field(default=None, description="The request a credit is for.")
    payout_address: str | None = Field(
        default=None,
        description="The attested address a credit was earned under, or a payout was sent to.",
    )
    created_at: datetime = Field(description="When billing recorded it.")


class DeadLetterReason(StrEnum):
    """Why the record was dead-lettered."""

    UNKNOWN = "UNKNOWN"
    BAD_MAGIC = "BAD_MAGIC"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    INVALID_BODY = "INVALID_BODY"
    WRONG_RECORD = "WRONG_RECORD"
    MISSING_VALUE = "MISSING_VALUE"
    INVALID_VALUE = "INVALID_VALUE"
    REJECTED = "REJECTED"


DeadLetterReasonSymbol = Literal[
    "UNKNOWN",
    "BAD_MAGIC",
    "UNKNOWN_SCHEMA",
    "INVALID_BODY",
    "WRONG_RECORD",
    "MISSING_VALUE",
    "INVALID_VALUE",
    "REJECTED",
]


class Header(AvroModel):
    avro_name: ClassVar[str] = "cocoon.bus.Header"
    avro_version: ClassVar[int] = 1

    key: str = Field(description="Header name.")
    value: bytes | None = Field(default=None, description="Header value.")


class DeadLetter(AvroModel):
    """A record a consumer could not handle, kept byte for byte with the reason. Written to
    '<topic>.dlq'.
    """

    avro_name: ClassVar[str] = "cocoon.bus.DeadLetter"
    avro_version: ClassVar[int] = 1

    source_topic: str = Field(description="Topic the record came from.")
    source_partition: int = Field(description="Its partition.")
    source_offset: int = Field(description="Its offset.")
    source_timestamp: datetime | None = Field(default=None, description="Its Kafka timestamp.")
    consumer_group: str | None = Field(
        default=None,
        description="Consumer group that gave up on it.",
    )
    reason: DeadLetterReasonSymbol = Field(
        default="UNKNOWN",
        description="Why the record was dead-lettered.",
    )
    error: str = Field(description="Human-readable detail.")
    key: bytes | None = Field(default=None, description="Original key bytes.")
    value: bytes | None = Field(default=None, description="Original value bytes.")
    headers: list[Header] = Field(description="Original headers.")
    failed_at: datetime = Field(description="When it was dead-lettered.")


class Assignment(AvroModel):
    """The scheduler placed a request on an attested worker; the gateway now seals the prompt to
    that worker's attested key.
    """

    avro_name: ClassVar[str] = "cocoon.inference.Assignment"
    avro_version: ClassVar[int] = 1

    assignment_id: str = Field(description="Deterministic: request id and attempt.")
    request_id: str = Field(
        description=(
            "Request id chosen by the gateway (UUID string); the key of every per-request topic."
        ),
    )
    attempt: int = Field(
        description=(
            "1 for the first placement; incremented when a lease expires and the request is placed "
            "again."
        ),
    )
    worker_id: str = Field(description="Chosen worker.")
    model: str = Field(description="Model id.")
    work_topic: str = Field(
        description="The worker's own work topic (an instance of work.{worker_id}).",
    )
    verdict_id: str = Field(
        description=(
            "Verdict whose keys the gateway must seal to; the gateway checks it is trusted and "
            "unexpired."
        ),
    )
    coefficient: int = Field(description="Worker's price coefficient at placement (1000 = 1.0x).")
    gateway_id: str = Field(description="Gateway instance that must seal and send the work.")
    lease_expires_at: datetime = Field(
        description="No first chunk by then: the request is placed again.",
    )
    assigned_at: datetime = Field(description="When the scheduler placed it.")


class RequestChannel(StrEnum):
    """Front the request came through."""

    UNKNOWN = "UNKNOWN"
    HTTP = "HTTP"
    GRPC = "GRPC"
    TELEGRAM = "TELEGRAM"


RequestChannelSymbol = Literal["UNKNOWN", "HTTP", "GRPC", "TELEGRAM"]


class InferenceRequest(AvroModel):
    """A client asked for inference. Metadata only: the prompt stays in the gateway until a
    worker is assigned, then travels sealed to that worker. v2: admission grants (the gateway
    may admit against a budget billing granted it ahead of time). v3: candidates (client-
    sealed requests may be placed only on the workers the client sealed to).
    """

    avro_name: ClassVar[str] = "cocoon.inference.InferenceRequest"
    avro_version: ClassVar[int] = 3

    request_id: str = Field(
        description=(
            "Request id chosen by the gateway (UUID string); the key of every per-request topic."
        ),
    )
    account_id: str = Field(description="Paying account.")
    model: str = Field(description="Requested model id.")
    max_tokens: int = Field(description="Cap on completion tokens; the hold is computed from it.")
    prompt_bytes: int = Field(
        description=(
            "Size of the (still unsealed, gateway-held) request body; counted into the hold."
        ),
    )
    max_coefficient: int = Field(
        description="Highest worker price coefficient the client accepts (1000 = 1.0x).",
    )
    stream: bool = Field(description="Client wants a streamed response.")
    channel: RequestChannelSymbol = Field(
        default="UNKNOWN",
        description="Front the request came through.",
    )
    gateway_id: str = Field(
        description="Gateway instance that holds the plaintext and streams the answer back.",
    )
    created_at: datetime = Field(description="When the gateway accepted the request.")
    deadline_at: datetime = Field(description="After this the request is abandoned.")
    grant_id: str | None = Field(
        default=None,
        description=(
            "Admitted by the gateway against this admission grant (billing.grants): the scheduler "
            "places it at once and billing carves its hold out of the grant. Null: billing decides "
            "(billing.reservations)."
        ),
    )
    grant_ask_requests: int = Field(
        default=0,
        description=(
            "The gateway asks billing for a new admission grant worth this many holds like this "
            "request's (0: no ask)."
        ),
    )
    grant_return_id: str | None = Field(
        default=None,
        description=(
            "The gateway retires this grant of its own: every request it funded precedes this one "
            "on the account's partition, so billing returns its remainder before deciding."
        ),
    )
    candidates: list[str] = Field(
        default_factory=lambda: [],
        description=(
            "Client-sealed request: the only workers it may be placed on (the client wrapped its "
            "key to each). Empty: any worker (the gateway seals after placement)."
        ),
    )


class OutcomeStatus(StrEnum):
    """How it ended."""

    UNKNOWN = "UNKNOWN"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    LEASE_EXPIRED = "LEASE_EXPIRED"
    WORKER_LOST = "WORKER_LOST"


OutcomeStatusSymbol = Literal[
    "UNKNOWN",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "TIMED_OUT",
    "LEASE_EXPIRED",
    "WORKER_LOST",
]


class Outcome(AvroModel):
    """How one attempt ended; feeds the scheduler's load and reputation and releases billing
    holds that no receipt settles.
    """

    avro_name: ClassVar[str] = "cocoon.inference.Outcome"
    avro_version: ClassVar[int] = 3

    request_id: str = Field(
        description=(
            "Request id chosen by the gateway (UUID string); the key of every per-request topic."
        ),
    )
    attempt: int = Field(description="Placement attempt.")
    worker_id: str = Field(description="Worker the attempt ran on.")
    model: str = Field(description="Model id.")
    status: OutcomeStatusSymbol = Field(default="UNKNOWN", description="How it ended.")
    error_code: str | None = Field(default=None, description="Machine error code (never content).")
    reported_by: str = Field(description="Service that observed the end (worker-proxy or gateway).")
    time_to_first_chunk_ms: int | None = Field(
        default=None,
        description="Latency to the first sealed chunk, if there was one.",
    )
    duration_ms: int = Field(description="Wall time of the attempt.")
    completion_tokens: int = Field(description="Completion tokens produced.")
    finished_at: datetime = Field(description="When it ended.")
    min_coefficient: int | None = Field(
        default=None,
        description=(
            "With error_code price_cap: the lowest price coefficient (1000 = 1.0x) of the workers "
            "that could have taken the request, so the client can raise its max_coefficient."
        ),
    )
    signature: bytes | None = Field(
        default=None,
        description=(
            "v3: Ed25519 signature by the worker's attested key over the record's other fields when"
            " a worker reports it (cocoon.core.worker_records); a worker's outcome without one is "
            "dead-lettered."
        ),
    )


class SealedChunk(AvroModel):
    """One AEAD-sealed piece of a response stream; only the gateway holding the response key can
    open it.
    """

    avro_name: ClassVar[str] = "cocoon.inference.SealedChunk"
    avro_version: ClassVar[int] = 1

    request_id: str = Field(
        description=(
            "Request id chosen by the gateway (UUID string); the key of every per-request topic."
        ),
    )
    worker_id: str = Field(description="Worker that produced it.")
    attempt: int = Field(description="Placement attempt.")
    gateway_id: str = Field(description="Gateway instance the chunk is for.")
    seq: int = Field(
        description=(
            "0-based chunk counter; also the AEAD nonce counter, so reordering is detected."
        ),
    )
    final: bool = Field(description="Last chunk of the stream, so truncation is detected.")
    ciphertext: bytes = Field(description="AEAD ciphertext with tag.")
    error_code: str | None = Field(
        default=None,
        description="Machine error code when the stream ends in failure (never content).",
    )
    produced_at: datetime = Field(description="When the worker sealed it.")


class UsageReceipt(AvroModel):
    """Token usage of one attempt, signed by the worker's attested key; billing charges from it."""

    avro_name: ClassVar[str] = "cocoon.inference.UsageReceipt"
    avro_version: ClassVar[int] = 1

    receipt_id: str = Field(
        description="Deterministic: request id and attempt, so billing charges once.",
    )
    request_id: str = Field(
        description=(
            "Request id chosen by the gateway (UUID string); the key of every per-request topic."
        ),
    )
    attempt: int = Field(description="Placement attempt.")
    worker_id: str = Field(description="Worker that did the work.")
    model: str = Field(description="Model id.")
    prompt_tokens: int = Field(description="Prompt tokens including cached ones.")
    cached_prompt_tokens: int = Field(description="Prompt tokens served from cache.")
    completion_tokens: int = Field(description="Completion tokens including reasoning ones.")
    reasoning_tokens: int = Field(description="Reasoning tokens.")
    coefficient: int = Field(description="Price coefficient applied (1000 = 1.0x).")
    completed: bool = Field(
        description=(
            "False when the stream ended early (cancelled or failed): the client pays what it "
            "received."
        ),
    )
    started_at: datetime = Field(description="Engine call start.")
    finished_at: datetime = Field(description="Engine call end.")
    signing_key: bytes = Field(
        description="Worker's Ed25519 public key; must equal the one in its current verdict.",
    )
    signature: bytes = Field(
        description="Ed25519 signature over the canonical receipt (see cocoon.core.crypto).",
    )


class WorkAction(StrEnum):
    """What the worker must do."""

    UNKNOWN = "UNKNOWN"
    RUN = "RUN"
    CANCEL = "CANCEL"


WorkActionSymbol = Literal["UNKNOWN", "RUN", "CANCEL"]


class WorkItem(AvroModel):
    """Work for one worker: a sealed request to run, or a cancellation. The prompt is HPKE-sealed
    to the worker's attested key. v2: client-sealed work (sealed_body set): sealed_request is
    then the request key HPKE-wrapped by the client to this worker, sealed_body the body under
    that key (docs/sealed-requests.md).
    """

    avro_name: ClassVar[str] = "cocoon.inference.WorkItem"
    avro_version: ClassVar[int] = 2

    request_id: str = Field(
        description=(
            "Request id chosen by the gateway (UUID string); the key of every per-request topic."
        ),
    )
    assignment_id: str = Field(description="Assignment this work belongs to.")
    attempt: int = Field(description="Placement attempt.")
    model: str = Field(description="Model id (also bound into the HPKE info).")
    action: WorkActionSymbol = Field(default="UNKNOWN", description="What the worker must do.")
    sealed_request: bytes | None = Field(
        default=None,
        description=(
            "HPKE ciphertext of the request body and a fresh response key (null for CANCEL)."
        ),
    )
    hpke_enc: bytes | None = Field(
        default=None,
        description="HPKE encapsulated key (null for CANCEL).",
    )
    hpke_suite: str | None = Field(
        default=None,
        description=(
            "HPKE suite identifier, e.g. the hybrid ML-KEM-768+X25519 suite (null for CANCEL)."
        ),
    )
    sealed_body: bytes | None = Field(
        default=None,
        description=(
            "Client-sealed request: the body, ChaCha20-Poly1305 under a key derived from the "
            "client's request key; null when the gateway sealed the request."
        ),
    )
    max_tokens: int = Field(description="Completion-token cap the worker enforces.")
    coefficient: int = Field(description="Price coefficient the work is billed at (1000 = 1.0x).")
    gateway_id: str = Field(description="Gateway instance to stream the chunks back to.")
    deadline_at: datetime = Field(description="Stop and report TIMED_OUT after this.")
    sent_at: datetime = Field(description="When the gateway sent the work.")


class OwnedPhase(StrEnum):
    PENDING = "PENDING"
    LEASED = "LEASED"
    STARTED = "STARTED"


OwnedPhaseSymbol = Literal["PENDING", "LEASED", "STARTED"]


class OwnedRequest(AvroModel):
    """A request a scheduler instance owns and has not ended: waiting for a worker, or placed
    under a lease. Written before the assignment it describes and before the input's offset is
    committed; tombstoned when the request ends. The instance that takes over the request's
    partition rebuilds its queue and leases from it.
    """

    avro_name: ClassVar[str] = "cocoon.scheduler.OwnedRequest"
    avro_version: ClassVar[int] = 1

    request_id: str = Field(description="Request (the record key).")
    model: str = Field(description="Model requested.")
    phase: OwnedPhaseSymbol = Field(
        description=(
            "PENDING: waiting for a worker; LEASED: assigned, no first chunk yet; STARTED: its "
            "worker started answering."
        ),
    )
    max_coefficient: int = Field(description="Price cap copied from the request (1000 = 1.0x).")
    gateway_id: str = Field(description="Gateway instance waiting for it.")
    candidates: list[str] = Field(
        default_factory=lambda: [],
        description="Client-sealed requests: the only workers it may go to (empty: any).",
    )
    deadline_at: datetime = Field(description="The request's own deadline.")
    received_at: datetime = Field(description="When a scheduler first admitted it.")
    wait_until: datetime = Field(
        description="While no worker could take it: when it fails no_worker.",
    )
    busy_until: datetime = Field(description="While every worker for it is busy: when it fails.")
    attempt: int = Field(description="Last attempt assigned; 0 before the first.")
    tried: list[str] = Field(
        default_factory=lambda: [],
        description="Workers earlier attempts went to (not chosen again for it).",
    )
    worker_id: str | None = Field(
        default=None,
        description="Worker of the current lease (LEASED, STARTED).",
    )
    granted_at: datetime | None = Field(
        default=None,
        description="When the current lease was granted: heartbeats sent after it count it.",
    )
    lease_expires_at: datetime | None = Field(
        default=None,
        description="First-chunk deadline of the current lease.",
    )
    scheduler_instance: str = Field(description="The instance that wrote it.")
    written_at: datetime = Field(description="When it was written.")


class WorkerStanding(AvroModel):
    """How the scheduler rates a worker for placement: its reputation and what it learnt of the
    worker's speed, as one scheduler instance saw it.
    """

    avro_name: ClassVar[str] = "cocoon.scheduler.WorkerStanding"
    avro_version: ClassVar[int] = 1

    worker_id: str = Field(description="Worker.")
    reputation: float = Field(
        description=(
            "Decayed, Beta-smoothed success rate in [0.05, 1]; placement divides a worker's score "
            "by it."
        ),
    )
    successes: float = Field(description="Decayed count of attempts that ended well.")
    failures: float = Field(
        description=(
            "Decayed count of attempts the worker answers for (errors, expired leases, receipts "
            "billing refused)."
        ),
    )
    cooldown_penalty: float = Field(
        description="Factor >= 1 on the worker's placement score for recent failures (1: none).",
    )
    receipts_rejected: int = Field(
        description=(
            "Receipts billing refused for a reason the worker answers for, since this instance "
            "started."
        ),
    )
    typical_seconds: float | None = Field(
        default=None,
        description="Decayed average request duration; null until one ended.",
    )
    scheduler_instance: str = Field(description="The scheduler instance whose view this is.")
    observed_at: datetime = Field(description="When the instance took this view.")


class WorkerState(StrEnum):
    """Readiness. STARTING (v2) reads as UNKNOWN in v1 readers: not placeable."""

    UNKNOWN = "UNKNOWN"
    READY = "READY"
    DRAINING = "DRAINING"
    DISABLED = "DISABLED"
    STARTING = "STARTING"


WorkerStateSymbol = Literal["UNKNOWN", "READY", "DRAINING", "DISABLED", "STARTING"]


class Capability(StrEnum):
    """What the worker's engine serves: CHAT (chat and text completions), TOOLS (tool calls in
    chat), EMBEDDINGS (/v1/embeddings). A symbol a reader does not know reads as UNKNOWN,
    which grants nothing.
    """

    UNKNOWN = "UNKNOWN"
    CHAT = "CHAT"
    TOOLS = "TOOLS"
    EMBEDDINGS = "EMBEDDINGS"


CapabilitySymbol = Literal["UNKNOWN", "CHAT", "TOOLS", "EMBEDDINGS"]


class Heartbeat(AvroModel):
    """A worker's liveness and load, every few seconds."""

    avro_name: ClassVar[str] = "cocoon.worker.Heartbeat"
    avro_version: ClassVar[int] = 4

    worker_id: str = Field(description="Worker.")
    models: list[str] = Field(description="Models it serves.")
    state: WorkerStateSymbol = Field(default="UNKNOWN", description="Readiness.")
    max_active_requests: int = Field(description="Capacity.")
    active_requests: int = Field(description="Requests in flight.")
    coefficient: int = Field(description="Current price coefficient (1000 = 1.0x).")
    work_topic: str = Field(description="Its work topic.")
    seq: int = Field(description="Monotonic per worker process, to drop reordered heartbeats.")
    sent_at: datetime = Field(description="When it was sent.")
    engine_queue_depth: int | None = Field(
        default=None,
        description="v2: requests queued inside the inference engine.",
    )
    gpu: str | None = Field(default=None, description="v2: GPU type, e.g. 'H100'.")
    avg_request_ms: float | None = Field(
        default=None,
        description="v2: decayed average request time, for expected-completion placement.",
    )
    capabilities: list[CapabilitySymbol] = Field(
        default_factory=lambda: [],
        description=(
            "v4: the API surface the worker's model serves (signed); none listed reads as CHAT, "
            "what every worker before v4 served."
        ),
    )
    context_length: int | None = Field(
        default=None,
        description=(
            "v4: the longest input, in tokens, the worker's engine takes (prompt plus answer for a "
            "chat model)."
        ),
    )
    signature: bytes | None = Field(
        default=None,
        description=(
            "v3: Ed25519 signature by the worker's attested key over the record's other fields "
            "(cocoon.core.worker_records); records without one are dead-lettered."
        ),
    )


RECORDS: dict[str, type[AvroModel]] = {
    "cocoon.attestation.Collateral": Collateral,
    "cocoon.attestation.Evidence": Evidence,
    "cocoon.attestation.RegistryEntry": RegistryEntry,
    "cocoon.attestation.Verdict": Verdict,
    "cocoon.attestation.WorkerCredential": WorkerCredential,
    "cocoon.billing.Balance": Balance,
    "cocoon.billing.Grant": Grant,
    "cocoon.billing.LedgerEntry": LedgerEntry,
    "cocoon.billing.Payout": Payout,
    "cocoon.billing.Refund": Refund,
    "cocoon.billing.Reservation": Reservation,
    "cocoon.billing.Snapshot": Snapshot,
    "cocoon.billing.TopUp": TopUp,
    "cocoon.billing.WorkerEarning": WorkerEarning,
    "cocoon.bus.Header": Header,
    "cocoon.bus.DeadLetter": DeadLetter,
    "cocoon.inference.Assignment": Assignment,
    "cocoon.inference.InferenceRequest": InferenceRequest,
    "cocoon.inference.Outcome": Outcome,
    "cocoon.inference.SealedChunk": SealedChunk,
    "cocoon.inference.UsageReceipt": UsageReceipt,
    "cocoon.inference.WorkItem": WorkItem,
    "cocoon.scheduler.OwnedRequest": OwnedRequest,
    "cocoon.scheduler.WorkerStanding": WorkerStanding,
    "cocoon.worker.Heartbeat": Heartbeat,
}
ENUMS: dict[str, type[StrEnum]] = {
    "cocoon.attestation.RegistryKind": RegistryKind,
    "cocoon.attestation.VerdictStatus": VerdictStatus,
    "cocoon.billing.AccountKind": AccountKind,
    "cocoon.billing.GrantStatus": GrantStatus,
    "cocoon.billing.LedgerEntryKind": LedgerEntryKind,
    "cocoon.billing.PayoutStatus": PayoutStatus,
    "cocoon.billing.RefundStatus": RefundStatus,
    "cocoon.billing.ReservationStatus": ReservationStatus,
    "cocoon.billing.RejectReason": RejectReason,
    "cocoon.billing.TopUpSource": TopUpSource,
    "cocoon.billing.TopUpKind": TopUpKind,
    "cocoon.billing.EarningKind": EarningKind,
    "cocoon.bus.DeadLetterReason": DeadLetterReason,
    "cocoon.inference.RequestChannel": RequestChannel,
    "cocoon.inference.OutcomeStatus": OutcomeStatus,
    "cocoon.inference.WorkAction": WorkAction,
    "cocoon.scheduler.OwnedPhase": OwnedPhase,
    "cocoon.worker.WorkerState": WorkerState,
    "cocoon.worker.Capability": Capability,
}


def model_for(name: str) -> type[AvroModel]:
    """The model class of a record full name."""
    return RECORDS[name]
