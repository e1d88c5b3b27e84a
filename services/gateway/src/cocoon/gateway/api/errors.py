"""Errors a client can see, each with its HTTP status and OpenAI's JSON error shape.

The backend (the Kafka pipeline) raises the subclasses below; the app turns any of them into
`{"error": {"message", "type", "param", "code"}}` with the right status, or, once a stream has
started, into a final SSE error event. Nothing is ever reported as a bare 500 with no body.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """Base: an error with a status, an OpenAI error type and a stable machine-readable code."""

    status: int = 500  # an instance may override it (HTTP errors of other statuses)
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.extra_headers: dict[str, str] = {}  # e.g. the Allow header of a 405

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return dict(self.extra_headers)


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationFailed(ApiError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(ApiError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


class InsufficientFunds(ApiError):
    """The hold for this request's maximum cost exceeds the account's available balance."""

    status = 402
    type = "insufficient_quota"
    default_code = "insufficient_quota"

    def __init__(self, shortfall_nanoton: int, *, required_nanoton: int | None = None) -> None:
        self.shortfall_nanoton = shortfall_nanoton
        self.required_nanoton = required_nanoton
        needs = (
            f" (the request may cost up to {required_nanoton} nanoTON)" if required_nanoton else ""
        )
        super().__init__(
            f"Insufficient balance: {shortfall_nanoton} nanoTON short of the hold for this "
            f"request{needs}. Top up the account or lower max_tokens."
        )

    def headers(self) -> dict[str, str]:
        # The openai SDKs honour this over their status-based retry: a retry cannot succeed
        # until the account is topped up.
        return {"x-should-retry": "false"}


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class UnknownModel(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"The model '{model}' does not exist on this network.", param="model")


class EndpointNotServed(InvalidRequest):
    """The model exists but does not serve this endpoint (embeddings from a chat model, ...)."""

    default_code = "model_not_supported"

    def __init__(self, model: str, route: str, serving: list[str]) -> None:
        self.model = model
        which = f" Models that do: {', '.join(serving)}." if serving else ""
        super().__init__(f"The model '{model}' does not serve {route}.{which}", param="model")


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"Rate limit reached for this API key; retry in {retry_after:.2f} s.")

    def headers(self) -> dict[str, str]:
        # Retry-After is whole seconds; never 0, or clients would retry at once.
        return {"Retry-After": str(max(1, int(-(-self.retry_after // 1))))}


class WorkerLost(ApiError):
    """The worker went away after it started answering; only received tokens are billed."""

    status = 502
    default_code = "worker_lost"

    def __init__(self, message: str = "The worker serving this request was lost.") -> None:
        super().__init__(message)


class NoWorkerAvailable(ApiError):
    """No attested worker could take the request within the wait (or at the client's price)."""

    status = 503
    default_code = "no_worker_available"

    def __init__(self, model: str, *, min_coefficient: int | None = None) -> None:
        self.model = model
        self.min_coefficient = min_coefficient
        if min_coefficient is None:
            super().__init__(f"No attested worker is available for model '{model}'.")
        else:
            super().__init__(
                f"No worker for model '{model}' accepts max_coefficient this low; the lowest "
                f"available is {min_coefficient} (1000 = 1.0x).",
                param="max_coefficient",
                code="max_coefficient_too_low",
            )
            # Retrying at the same price cap cannot succeed; the SDKs would retry a 503 twice.
            self.extra_headers["x-should-retry"] = "false"


class UpstreamTimeout(ApiError):
    status = 504
    default_code = "timeout"

    def __init__(self, message: str = "The request timed out before it completed.") -> None:
        super().__init__(message)


class InternalError(ApiError):
    default_code = "internal_error"
