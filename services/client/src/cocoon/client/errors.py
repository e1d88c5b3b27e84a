"""Errors of the client library. Every refusal carries its reason as text."""

from __future__ import annotations


class ClientError(Exception):
    """Base of everything the client raises on purpose."""


class ConfigError(ClientError):
    """The client configuration is missing, malformed or unsafe."""


class WireError(ClientError):
    """Bytes from the gateway or a worker that do not decode or do not authenticate."""


class NoTrustedWorker(ClientError):
    """No worker for the model passed verification; `refusals` says why for each one."""

    def __init__(self, model: str, refusals: dict[str, str]) -> None:
        self.model = model
        self.refusals = refusals
        detail = "; ".join(f"{w}: {r}" for w, r in sorted(refusals.items())) or "none offered"
        super().__init__(f"no worker for model {model!r} passed verification ({detail})")


class GatewayError(ClientError):
    """The gateway answered with an error (OpenAI-shaped body kept as it came)."""

    def __init__(
        self,
        status: int,
        body: dict,
        retry_after: str | None = None,
        should_retry: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.retry_after = retry_after  # the gateway's Retry-After (429, 503), passed on
        # The gateway's x-should-retry ("false" on errors a retry cannot fix), passed on.
        self.should_retry = should_retry
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(message or f"gateway answered HTTP {status}")
