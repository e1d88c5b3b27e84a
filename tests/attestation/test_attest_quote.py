"""Quote parsing against real quotes, cross-checked with dcap-qvl's own parser."""

from __future__ import annotations

import struct
from pathlib import Path

import dcap_qvl
import pytest

from cocoon.attestation.quote import (
    MAX_QUOTE_BYTES,
    QuoteFormatError,
    decode_quote_input,
    load_quote_file,
    parse_quote,
    signed_region,
)

REAL = [
    "phala_tdx_quote",
    "phala_tdx_quote_outdated",
    "gotdx_quote_v5_sample.dat",
    "cocoon_quote.dat",
]
GOTDX_SIGNED_LEN = 4935  # the go-tdx-guest sample without its appended test text

PAIRS = [
    ("tee_tcb_svn", "tee_tcb_svn"),
    ("mr_seam", "mr_seam"),
    ("mr_signer_seam", "mr_signer_seam"),
    ("seam_attributes", "seam_attributes"),
    ("td_attributes", "td_attributes"),
    ("xfam", "xfam"),
    ("mr_td", "mr_td"),
    ("mr_config_id", "mr_config_id"),
    ("mr_owner", "mr_owner"),
    ("mr_owner_config", "mr_owner_config"),
    ("rtmr0", "rt_mr0"),
    ("rtmr1", "rt_mr1"),
    ("rtmr2", "rt_mr2"),
    ("rtmr3", "rt_mr3"),
    ("report_data", "report_data"),
]


def _raw(data: Path, name: str) -> bytes:
    raw = (data / name).read_bytes()
    return raw[:GOTDX_SIGNED_LEN] if name.startswith("gotdx_tdx_prod") else raw


@pytest.mark.parametrize("name", [*REAL, "gotdx_tdx_prod_quote_SPR_E4.dat"])
def test_fields_match_dcap_qvl(data: Path, name: str) -> None:
    raw = _raw(data, name)
    ours = parse_quote(raw)
    theirs = dcap_qvl.parse_quote(raw)
    for mine, upstream in PAIRS:
        assert getattr(ours.report, mine) == bytes(getattr(theirs.report, upstream)), mine
    h = theirs.header
    assert (ours.header.version, ours.header.tee_type, ours.header.att_key_type) == (
        h.version,
        h.tee_type,
        h.attestation_key_type,
    )
    assert ours.header.qe_vendor_id == bytes(h.qe_vendor_id)
    assert ours.header.user_data == bytes(h.user_data)
    assert ours.pck.fmspc.hex().upper() == theirs.fmspc()
    assert ours.pck.ca == theirs.ca()
    ext = theirs.pck_extension()
    assert (ours.pck.cpu_svn, ours.pck.pce_svn, ours.pck.ppid, ours.pck.pce_id) == (
        bytes(ext.cpu_svn),
        ext.pce_svn,
        bytes(ext.ppid),
        bytes(ext.pce_id),
    )
    assert ours.pck_chain_pem.rstrip(b"\0") == bytes(theirs.cert_chain_pem_bytes()).rstrip(b"\0")
    if ours.version == 5:
        assert ours.td_report_version == "1.5"
        assert ours.report.mr_service_td == bytes(theirs.report.mr_service_td)
        assert ours.report.tee_tcb_svn2 == bytes(theirs.report.tee_tcb_svn2)


def test_cocoon_sample_matches_reference(data: Path) -> None:
    """COCOON's tee/test/quote.dat: values recorded in the reference inventory (section 6)."""
    q = parse_quote((data / "cocoon_quote.dat").read_bytes())
    assert q.image_hash().hex() == (
        "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436"
    )
    assert q.report.mr_td.hex().startswith("7357a10d2e2724df")
    assert q.report.td_attributes.hex() == "0000001000000000"
    assert not q.report.debug and q.report.sept_ve_disable
    assert q.report.xfam.hex() == "e702060000000000"
    assert q.padding == 70 and len(q.raw) == 5010 - 70
    assert q.pck.fmspc.hex() == "90c06f000000"
    assert len(q.pck_chain) == 3


def test_phala_sample_fields(data: Path) -> None:
    q = parse_quote((data / "phala_tdx_quote").read_bytes())
    assert (q.version, q.td_report_version, q.pck.fmspc.hex()) == (4, "1.0", "b0c06f000000")
    assert q.report.mr_td.hex().startswith("91eb2b44d141d4ec")
    assert q.report.rtmr3 == bytes(48)
    d = q.to_dict()
    assert d["body"]["mr_td"] == q.report.mr_td.hex()
    assert d["image_hash"] == q.image_hash().hex()
    assert set(d["body"]) >= {"tee_tcb_svn", "mr_seam", "xfam", "report_data", "rtmr3"}


def test_signed_region_is_header_and_body(data: Path) -> None:
    q4 = parse_quote((data / "phala_tdx_quote").read_bytes())
    q5 = parse_quote((data / "phala_tdx_quote_outdated").read_bytes())
    assert len(signed_region(q4)) == 48 + 584
    assert len(signed_region(q5)) == 48 + 6 + 648


def test_hex_input_and_files(data: Path, tmp_path: Path) -> None:
    raw = (data / "phala_tdx_quote").read_bytes()
    for text in (raw.hex(), "0x" + raw.hex().upper(), raw.hex()[:100] + "\n  " + raw.hex()[100:]):
        assert decode_quote_input(text.encode() + b"\n") == raw
    path = tmp_path / "q.hex"
    path.write_text(raw.hex())
    assert load_quote_file(path).raw == parse_quote(raw).raw
    with pytest.raises(QuoteFormatError, match="odd"):
        decode_quote_input(b"abc")


def test_trailing_text_is_rejected(data: Path) -> None:
    raw = (data / "gotdx_tdx_prod_quote_SPR_E4.dat").read_bytes()
    with pytest.raises(QuoteFormatError, match="39 unexpected trailing bytes"):
        parse_quote(raw)
    assert parse_quote(raw[:GOTDX_SIGNED_LEN]).padding == 0


def test_trailing_nonzero_byte_after_padding_is_rejected(data: Path) -> None:
    raw = (data / "phala_tdx_quote").read_bytes()
    with pytest.raises(QuoteFormatError, match="trailing"):
        parse_quote(raw + b"\x01")


def test_truncation_at_every_structure_boundary(data: Path) -> None:
    q = parse_quote((data / "phala_tdx_quote").read_bytes())
    raw = q.raw
    cuts = sorted({0, 1, 47, 48, 100, 631, 632, 635, 636, 700, 764, 770, 1200, 1300, len(raw) - 1})
    for cut in cuts:
        with pytest.raises(QuoteFormatError):
            parse_quote(raw[:cut])


def _patch(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def test_header_rejections(data: Path) -> None:
    raw = (data / "phala_tdx_quote").read_bytes()
    with pytest.raises(QuoteFormatError, match="wrong TEE type 0x0 \\(SGX\\)"):
        parse_quote(_patch(raw, 4, "<I", 0))
    with pytest.raises(QuoteFormatError, match="unsupported quote version 3"):
        parse_quote(_patch(raw, 0, "<H", 3))
    with pytest.raises(QuoteFormatError, match="unsupported quote version 6"):
        parse_quote(_patch(raw, 0, "<H", 6))
    with pytest.raises(QuoteFormatError, match="attestation key type 3"):
        parse_quote(_patch(raw, 2, "<H", 3))


def test_v5_body_rejections(data: Path) -> None:
    raw = (data / "phala_tdx_quote_outdated").read_bytes()
    with pytest.raises(QuoteFormatError, match="SGX enclave report"):
        parse_quote(_patch(raw, 48, "<H", 1))
    with pytest.raises(QuoteFormatError, match="body size"):
        parse_quote(_patch(raw, 50, "<I", 584))


def test_certification_data_rejections(data: Path) -> None:
    raw = (data / "phala_tdx_quote").read_bytes()
    with pytest.raises(QuoteFormatError, match="certification data type 5"):
        parse_quote(_patch(raw, 636 + 128, "<H", 5))
    with pytest.raises(QuoteFormatError):
        parse_quote(_patch(raw, 632, "<I", 10**6))  # signature length beyond the input


def test_size_cap_and_garbage() -> None:
    with pytest.raises(QuoteFormatError, match="cap"):
        parse_quote(b"\x04\x00" + bytes(MAX_QUOTE_BYTES))
    for junk in (b"", b"\x00", b"hello world" * 10, bytes(48), bytes(range(256)) * 8):
        with pytest.raises(QuoteFormatError):
            parse_quote(junk)
    with pytest.raises(QuoteFormatError):
        parse_quote("not bytes")  # type: ignore[arg-type]


def test_broken_pem_chain_is_a_format_error(data: Path) -> None:
    raw = bytearray((data / "phala_tdx_quote").read_bytes())
    start = raw.index(b"-----BEGIN CERTIFICATE-----") + 40
    raw[start : start + 8] = b"!!!!!!!!"
    with pytest.raises(QuoteFormatError, match=r"PEM|certificate|extension"):
        parse_quote(bytes(raw))
