"""Service-issued nonces: single use, short-lived, so old evidence cannot be replayed."""

from __future__ import annotations

import secrets
import threading
import time


class NonceBook:
    """Remembers issued nonces until they expire or are consumed by an accepted verdict."""

    def __init__(self, ttl_seconds: int = 300, max_outstanding: int = 100_000) -> None:
        self.ttl = ttl_seconds
        self.max_outstanding = max_outstanding
        self._issued: dict[bytes, int] = {}  # nonce -> expiry (unix seconds)
        self._lock = threading.Lock()

    def issue(self, now: float | None = None) -> bytes:
        now_i = int(time.time() if now is None else now)
        nonce = secrets.token_bytes(32)
        self.add(nonce, now_i)
        return nonce

    def add(self, nonce: bytes, now: int) -> None:
        """Record a nonce issued elsewhere (e.g. by another replica, or on the command line)."""
        with self._lock:
            self._prune(now)
            if len(self._issued) >= self.max_outstanding:
                raise RuntimeError("too many outstanding nonces")
            self._issued[bytes(nonce)] = now + self.ttl

    def check(self, nonce: bytes, at: int) -> str | None:
        """None when the nonce is usable at `at`, else the reason it is not."""
        with self._lock:
            expiry = self._issued.get(bytes(nonce))
        if expiry is None:
            return "nonce was not issued by this service, or was already used"
        if at > expiry:
            return "nonce expired"
        return None

    def consume(self, nonce: bytes) -> bool:
        with self._lock:
            return self._issued.pop(bytes(nonce), None) is not None

    def _prune(self, now: int) -> None:
        for nonce in [n for n, exp in self._issued.items() if exp < now]:
            del self._issued[nonce]
