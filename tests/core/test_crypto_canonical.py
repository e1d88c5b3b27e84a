"""canonical_bytes: one encoding per value, unambiguous across types; signatures over it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.core.crypto import (
    CanonicalError,
    SignatureError,
    canonical_bytes,
    sign_canonical,
    verify_canonical,
)

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.text(max_size=8), values, max_size=5)


def test_known_vector_pins_the_format():
    # Written out by hand from the spec in docs/crypto.md; a format change must update both.
    expected = (
        b"m\x00\x00\x00\x03"
        b"\x00\x00\x00\x01a" + b"i\x00\x00\x00\x02-5"
        b"\x00\x00\x00\x01b" + b"l\x00\x00\x00\x03" + b"t" + b"n" + b"b\x00\x00\x00\x02\x00\xff"
        b"\x00\x00\x00\x01c" + b"s\x00\x00\x00\x02\xc3\xa9"
    )
    assert canonical_bytes({"c": "é", "a": -5, "b": [True, None, b"\x00\xff"]}) == expected


def test_key_order_does_not_matter():
    assert canonical_bytes({"x": 1, "y": {"b": 2, "a": 3}}) == canonical_bytes(
        {"y": {"a": 3, "b": 2}, "x": 1}
    )


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"v": True}, {"v": 1}),
        ({"v": "ab"}, {"v": b"ab"}),
        ({"v": None}, {"v": ""}),
        ({"v": [1, 2]}, {"v": (1, 2, 3)}),
        ({"v": ["ab"]}, {"v": ["a", "b"]}),
        ({"ab": 1}, {"a": 1}),
        ({"v": 10}, {"v": "10"}),
    ],
)
def test_different_values_never_share_bytes(left, right):
    assert canonical_bytes(left) != canonical_bytes(right)


@pytest.mark.parametrize("bad", [{"v": 1.5}, {1: "int key"}, {"v": {1, 2}}, {"v": "\ud800"}])
def test_values_without_a_canonical_form_are_refused(bad):
    with pytest.raises(CanonicalError):
        canonical_bytes(bad)


def test_top_level_must_be_a_mapping():
    with pytest.raises(CanonicalError):
        canonical_bytes([1, 2])  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(documents, documents)
def test_encoding_is_injective(a, b):
    # Python equality treats True == 1 and (1,) vs [1] differently from the encoding; compare
    # through a type-preserving normal form.
    def normal(v):
        if isinstance(v, dict):
            return ("m", tuple(sorted((k, normal(x)) for k, x in v.items())))
        if isinstance(v, list | tuple):
            return ("l", tuple(normal(x) for x in v))
        return (type(v).__name__, v)

    assert (canonical_bytes(a) == canonical_bytes(b)) == (normal(a) == normal(b))


def test_signature_verifies_and_is_bound_to_domain_and_content():
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    doc = {"worker": "w1", "expires": 1700000000}
    sig = sign_canonical(key, "cocoon/verdict/v1", doc)
    verify_canonical(public, "cocoon/verdict/v1", {"expires": 1700000000, "worker": "w1"}, sig)
    with pytest.raises(SignatureError):
        verify_canonical(public, "cocoon/usage-receipt/v1", doc, sig)
    with pytest.raises(SignatureError):
        verify_canonical(public, "cocoon/verdict/v1", {**doc, "expires": 1700000001}, sig)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(SignatureError):
        verify_canonical(other, "cocoon/verdict/v1", doc, sig)
    with pytest.raises(SignatureError):
        verify_canonical(b"short", "cocoon/verdict/v1", doc, sig)
