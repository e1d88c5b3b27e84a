"""API keys (hashed, constant-time) and per-key token buckets."""

from __future__ import annotations

import hashlib
import json

import pytest

from cocoon.gateway.api import KeyStore, RateLimited
from cocoon.gateway.api.keys import PREFIX
from cocoon.gateway.api.ratelimit import RateLimiter


def test_created_key_authenticates_to_its_account():
    store = KeyStore()
    key = store.create("acct-1", name="demo")
    other = store.create("acct-2")
    assert key.startswith(PREFIX) and key != other
    assert store.authenticate(key).account_id == "acct-1"
    assert store.authenticate(other).account_id == "acct-2"


def test_only_the_hash_is_stored(tmp_path):
    store = KeyStore()
    key = store.create("acct-1")
    (record,) = store.records()
    assert record.key_hash == hashlib.sha256(key.encode()).hexdigest()
    secret = key[len(PREFIX) + 13 :]  # after "<12 hex key id>-"; the secret itself may hold '-'
    assert len(secret) == 43
    assert secret not in repr(store.__dict__)
    path = tmp_path / "keys.json"
    store.save(path)
    assert secret not in path.read_text()
    assert json.loads(path.read_text())[0]["account_id"] == "acct-1"
    assert KeyStore.load(path).authenticate(key).account_id == "acct-1"
    assert KeyStore.load(tmp_path / "missing.json").records() == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # same key id, wrong secret
        lambda k: k.replace(PREFIX, "sk-other-"),
        lambda k: k + "x",
        lambda k: "",
        lambda k: PREFIX + "000000000000-" + "a" * 43,  # well-formed, unknown id
    ],
)
def test_wrong_keys_are_refused(mutate):
    store = KeyStore()
    key = store.create("acct-1")
    assert store.authenticate(mutate(key)) is None


def test_revoked_key_is_refused():
    store = KeyStore()
    key = store.create("acct-1")
    store.revoke(store.records()[0].key_id)
    assert store.authenticate(key) is None


def test_comparison_is_constant_time(monkeypatch):
    # Both a known and an unknown key id go through hmac.compare_digest.
    import cocoon.gateway.api.keys as keys_module

    calls = []
    real = keys_module.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    store = KeyStore()
    key = store.create("acct-1")
    store.authenticate(key)
    store.authenticate(PREFIX + "000000000000-" + "a" * 43)
    store.authenticate("garbage")
    assert len(calls) == 3


def test_token_bucket_burst_then_refill():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("k") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("k") == pytest.approx(0.5)
    now[0] = 0.25
    assert limiter.acquire("k") == pytest.approx(0.25)
    now[0] = 0.5
    assert limiter.acquire("k") is None
    now[0] = 100.0  # refill is capped at the burst
    assert [limiter.acquire("k") is None for _ in range(4)] == [True, True, True, False]


def test_buckets_are_per_key_and_full_ones_are_evicted():
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=1, clock=lambda: now[0], max_keys=2)
    assert limiter.acquire("a") is None and limiter.acquire("a") is not None
    assert limiter.acquire("b") is None
    now[0] = 10.0
    assert limiter.acquire("c") is None  # a and b refilled: evicted to make room
    assert len(limiter._buckets) == 1


def test_limiter_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30.0, "30")])
def test_retry_after_is_whole_seconds_rounded_up(wait, header):
    assert RateLimited(wait).headers() == {"Retry-After": header}
