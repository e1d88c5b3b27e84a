"""Who is calling: the API key, its rate limit, and the account it may act for.

One `Authenticator` serves every surface of a gateway (HTTP and gRPC), so a key's rate limit is
one budget whatever protocol spends it.
"""

from __future__ import annotations

from cocoon.gateway.api.errors import AuthenticationFailed, PermissionDenied, RateLimited
from cocoon.gateway.api.keys import KeyRecord, KeyStore
from cocoon.gateway.api.ratelimit import RateLimiter

# Names the end user's account when a delegating key (KeyRecord.delegate_prefix) calls.
ACCOUNT_HEADER = "x-cocoon-account"


class Authenticator:
    def __init__(self, key_store: KeyStore, limiter: RateLimiter) -> None:
        self.key_store = key_store
        self.limiter = limiter

    def authorize(self, authorization: str, acting_for: str | None = None) -> KeyRecord:
        """The key record of an `Authorization: Bearer <key>` value (acting for an end user's
        account when the key delegates and `acting_for` names one), or the ApiError to answer."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer sk-cocoon-...'."
            )
        record = self.key_store.authenticate(token.strip())
        if record is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if (wait := self.limiter.acquire(record.key_id)) is not None:
            raise RateLimited(wait)
        if acting_for is None:
            return record
        delegated = record.acting_for(acting_for)
        if delegated is None:
            raise PermissionDenied(f"This API key may not act for the account {acting_for!r}.")
        return delegated
