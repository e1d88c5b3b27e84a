"""The worker's TEE interface: claims bytes identical to attestation's, quotes that verify."""

from __future__ import annotations

import os
import time

import pytest

from cocoon.attestation.claims import Claims, Freshness
from cocoon.attestation.collateral import BundleSource
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verify import Verifier
from cocoon.core import tee
from cocoon.core.crypto import WorkerKeys


def _attestation_claims(keys, model: str, payout_address=None, **freshness) -> Claims:
    public = keys.public
    return Claims(
        public.signing_key,
        public.hpke_x25519,
        public.hpke_mlkem768_x25519,
        model,
        Freshness(**freshness),
        payout_address,
    )


@pytest.mark.parametrize(
    "freshness", [{"timestamp": 1_790_000_000}, {"nonce": os.urandom(32)}, {"timestamp": 0}]
)
@pytest.mark.parametrize("model", ["qwen3-0.6b", "é/模型", "m" * 256])
@pytest.mark.parametrize("address", [None, "0:" + "ab" * 32, "-1:" + "01" * 32])
def test_claims_bytes_equal_the_attestation_encoding(
    freshness: dict, model: str, address: str | None
) -> None:
    keys = WorkerKeys.generate()
    ours = tee.encode_claims(keys.public, model, payout_address=address, **freshness)
    theirs = _attestation_claims(keys, model, address, **freshness)
    assert ours == theirs.encode()
    assert tee.report_data(ours) == theirs.report_data()
    assert Claims.decode(ours).payout_address == address


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "m"},  # no freshness
        {"model": "m", "timestamp": 1, "nonce": bytes(16)},  # both
        {"model": "m", "nonce": bytes(15)},
        {"model": "m", "nonce": bytes(65)},
        {"model": "", "timestamp": 1},
        {"model": "m" * 257, "timestamp": 1},
        {"model": "m", "timestamp": -1},
        {"model": "m", "timestamp": 1, "payout_address": "0:12"},
        {"model": "m", "timestamp": 1, "payout_address": "7:" + "ab" * 32},
    ],
)
def test_bad_claims_are_refused(kwargs: dict) -> None:
    with pytest.raises(tee.TeeError):
        tee.encode_claims(WorkerKeys.generate().public, **kwargs)


def test_quote_binds_the_claims_and_verifies() -> None:
    keys = WorkerKeys.generate()
    now = int(time.time())
    claims = tee.encode_claims(keys.public, "smollm2", timestamp=now)
    quote = tee.get_quote(tee.report_data(claims))
    sim = SimTdx.load_or_create()
    verifier = Verifier(sim.development_policy(), BundleSource([sim.collateral()]))
    verdict = verifier.verify(quote, Claims.decode(claims), now)
    assert verdict.accepted, verdict.reason
    # Other claims (another key) do not match that quote's REPORTDATA.
    other = tee.encode_claims(WorkerKeys.generate().public, "smollm2", timestamp=now)
    assert not verifier.verify(quote, Claims.decode(other), now).accepted


def test_report_data_must_be_64_bytes() -> None:
    with pytest.raises(tee.TeeError):
        tee.get_quote(bytes(63))


def test_an_unknown_quote_device_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv(tee.TEE_SETTING, "no-such-tee")
    with pytest.raises(tee.TeeError, match=r"no TEE quote device 'no-such-tee'.*simulated"):
        tee.get_quote(bytes(64))
