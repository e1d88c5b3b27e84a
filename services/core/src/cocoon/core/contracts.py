# GENERATED from schemas/ by `cocoon topics codegen`: do not edit.
# Change the schemas and generate again (tests/core/test_codegen.py checks it is up to date).
"""Names that cross the bus: topics, consumer groups and error codes of `schemas/`.

Services use these constants, never the strings (tests/test_contracts.py):

    from cocoon.core.contracts import ErrorCode, Topic, work_topic
    await producer.send(Topic.INFERENCE_OUTCOMES, outcome)
"""

import re
from enum import StrEnum


class Topic(StrEnum):
    """Every concrete topic of the catalog; its dead-letter topic is `<topic>.dlq`."""

    ATTESTATION_ATTESTED = "attestation.attested"
    ATTESTATION_COLLATERAL = "attestation.collateral"
    ATTESTATION_CREDENTIALS = "attestation.credentials"
    ATTESTATION_EVIDENCE = "attestation.evidence"
    ATTESTATION_REGISTRY = "attestation.registry"
    ATTESTATION_VERDICTS = "attestation.verdicts"
    BILLING_BALANCES = "billing.balances"
    BILLING_EARNINGS = "billing.earnings"
    BILLING_GRANTS = "billing.grants"
    BILLING_LEDGER = "billing.ledger"
    BILLING_PAYOUTS = "billing.payouts"
    BILLING_REFUNDS = "billing.refunds"
    BILLING_RESERVATIONS = "billing.reservations"
    BILLING_SNAPSHOTS = "billing.snapshots"
    BILLING_TOPUPS = "billing.topups"
    INFERENCE_ASSIGNMENTS = "inference.assignments"
    INFERENCE_OUTCOMES = "inference.outcomes"
    INFERENCE_REQUESTS = "inference.requests"
    INFERENCE_RESPONSES = "inference.responses"
    SCHEDULER_LEASES = "scheduler.leases"
    SCHEDULER_STANDINGS = "scheduler.standings"
    USAGE_RECEIPTS = "usage.receipts"
    WORKER_HEARTBEATS = "worker.heartbeats"


class TopicTemplate(StrEnum):
    """Template topics: one instance per parameter value (e.g. `work_topic`)."""

    WORK = "work.{worker_id}"


class Group(StrEnum):
    """Consumer groups of `schemas/groups.yaml` (the default each service joins)."""

    ATTESTATION = "attestation"
    BILLING = "billing"
    SCHEDULER = "scheduler"
    TELEGRAM = "telegram"


class GroupTemplate(StrEnum):
    """Consumer groups with a parameter: one group per instance (e.g. `worker_group`)."""

    WORKER = "worker-{worker_id}"


class ErrorCode(StrEnum):
    """Why an inference attempt ended without an answer (Outcome.error_code,
    SealedChunk.error_code).
    """

    # No attested worker for the model took the request before its wait ended.
    NO_WORKER = "no_worker"
    # No attested worker serves the model.
    UNKNOWN_MODEL = "unknown_model"
    # Workers for the model exist, but all above the request's maximum coefficient.
    PRICE_CAP = "price_cap"
    # Placed, but no worker sent a first chunk in time on any attempt.
    LEASE_EXPIRED = "lease_expired"
    # The worker went silent (no heartbeats) while streaming the answer.
    WORKER_LOST = "worker_lost"
    # The payload does not open with this worker's key for this request.
    UNSEALABLE = "unsealable"
    # The work item is for a model this worker does not serve.
    WRONG_MODEL = "wrong_model"
    # The opened body is not an OpenAI request.
    BAD_REQUEST = "bad_request"
    # The inference engine refused the request (HTTP 4xx).
    ENGINE_REJECTED = "engine_rejected"
    # The inference engine failed or broke the stream.
    ENGINE_ERROR = "engine_error"
    # The gateway cancelled the request (the client left).
    CANCELLED = "cancelled"
    # The request's deadline passed.
    TIMED_OUT = "timed_out"
    # A worker's heartbeat or outcome carries no signature.
    UNSIGNED_RECORD = "unsigned_record"
    # A worker's heartbeat or outcome is not signed by the key of that worker's current TRUSTED
    # verdict.
    BAD_RECORD_SIGNATURE = "bad_record_signature"
    # A heartbeat or outcome names a worker with no current TRUSTED verdict, so nothing can vouch
    # for it.
    UNTRUSTED_WORKER = "untrusted_worker"


PARAMETERS: dict[str, str] = {"worker_id": "^[a-z0-9][a-z0-9-]{0,62}$"}


def work_topic(worker_id: str) -> str:
    """The topic `work.{worker_id}` of one worker."""
    return _fill(TopicTemplate.WORK, worker_id=worker_id)


def worker_group(worker_id: str) -> str:
    """The group `worker-{worker_id}` of one worker."""
    return _fill(GroupTemplate.WORKER, worker_id=worker_id)


def _fill(template: str, **params: str) -> str:
    for name, value in params.items():
        if not re.fullmatch(PARAMETERS[name], value):
            raise ValueError(f"{name}={value!r} does not match {PARAMETERS[name]}")
    return template.format(**params)
