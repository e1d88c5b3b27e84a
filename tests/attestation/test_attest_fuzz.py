"""Bounded fuzzing of the parse path: only QuoteFormatError or a parsed quote, never a crash."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.attestation.quote import Quote, QuoteFormatError, parse_quote

SEED = (Path(__file__).parent / "data" / "phala_tdx_quote").read_bytes()
SEED5 = (Path(__file__).parent / "data" / "phala_tdx_quote_outdated").read_bytes()


def _parse_or_reject(blob: bytes) -> None:
    try:
        result = parse_quote(blob)
    except QuoteFormatError as exc:
        assert str(exc)
        return
    assert isinstance(result, Quote)
    result.to_dict()  # every accessor must work on whatever parsed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_random_bytes(blob: bytes) -> None:
    _parse_or_reject(blob)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([SEED, SEED5]),
    st.lists(st.tuples(st.integers(0, 5100), st.integers(0, 255)), max_size=8),
    st.integers(0, 5100),
    st.binary(max_size=64),
)
def test_mutated_real_quotes(seed: bytes, flips: list, cut: int, tail: bytes) -> None:
    blob = bytearray(seed)
    for pos, value in flips:
        if pos < len(blob):
            blob[pos] = value
    _parse_or_reject(bytes(blob[: max(cut, 1)]) + tail)
