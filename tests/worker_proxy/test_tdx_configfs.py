"""The `tdx-configfs` quote device against a configfs-tsm tree that behaves as the kernel's ABI.

The provider behind the fake tree is the simulated TDX, so the quotes are real-format and the
attestation verifier checks them as it would a hardware quote.
"""

from __future__ import annotations

import os
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from support.configfs_tsm import FakeConfigfsTsm

from cocoon.attestation.claims import Claims
from cocoon.attestation.collateral import BundleSource
from cocoon.attestation.simtdx import SimTdx
from cocoon.attestation.verify import Verifier
from cocoon.core import tee
from cocoon.core.crypto import WorkerKeys
from cocoon.worker_proxy.tdx_configfs import (
    ConfigfsTsmDevice,
    OsTsmFs,
    quote_device,
    quote_report_data,
)


@pytest.fixture(scope="module")
def sim() -> SimTdx:
    return SimTdx.load_or_create()


def test_a_quote_for_the_given_report_data_that_verifies(sim: SimTdx) -> None:
    fs = FakeConfigfsTsm(sim.quote)
    keys = WorkerKeys.generate()
    now = int(time.time())
    claims = tee.encode_claims(keys.public, "smollm2", timestamp=now)
    quote = ConfigfsTsmDevice(fs).quote(tee.report_data(claims))

    assert quote_report_data(quote) == tee.report_data(claims)
    verifier = Verifier(sim.development_policy(), BundleSource([sim.collateral()]))
    verdict = verifier.verify(quote, Claims.decode(claims), now)
    assert verdict.accepted, verdict.reason
    assert fs.entries == {}, "the report entry is removed after use"
    assert fs.quotes_made == 1


def test_v5_quotes_carry_report_data_after_the_body_descriptor(sim: SimTdx) -> None:
    report_data = os.urandom(64)
    fs = FakeConfigfsTsm(lambda rd: sim.quote(rd, version=5))
    assert quote_report_data(ConfigfsTsmDevice(fs).quote(report_data)) == report_data


def test_missing_provider_is_a_clear_error(sim: SimTdx) -> None:
    fs = FakeConfigfsTsm(sim.quote, provider=None)
    with pytest.raises(tee.TeeError, match=r"no provider.*tdx_guest"):
        ConfigfsTsmDevice(fs).quote(os.urandom(64))


def test_another_provider_is_refused(sim: SimTdx) -> None:
    fs = FakeConfigfsTsm(sim.quote, provider="sev_guest")
    with pytest.raises(tee.TeeError, match="'sev_guest', not 'tdx_guest'"):
        ConfigfsTsmDevice(fs).quote(os.urandom(64))
    assert fs.entries == {} and fs.quotes_made == 0


def test_a_generation_race_is_detected_and_retried(sim: SimTdx) -> None:
    fs = FakeConfigfsTsm(sim.quote)
    fs.interfere(1)  # the first attempt's outblob is over someone else's REPORTDATA
    report_data = os.urandom(64)
    quote = ConfigfsTsmDevice(fs).quote(report_data)
    assert quote_report_data(quote) == report_data
    assert fs.quotes_made == 2


def test_a_persistent_race_is_an_error_not_a_foreign_quote(sim: SimTdx) -> None:
    fs = FakeConfigfsTsm(sim.quote)
    fs.interfere(3)
    with pytest.raises(tee.TeeError, match="generation conflict"):
        ConfigfsTsmDevice(fs, attempts=3).quote(os.urandom(64))
    assert fs.entries == {}


def test_a_quote_over_other_report_data_is_never_returned(sim: SimTdx) -> None:
    # A provider (or a stale outblob) that answers for other REPORTDATA, generation intact.
    fs = FakeConfigfsTsm(lambda _: sim.quote(os.urandom(64)))
    with pytest.raises(tee.TeeError, match="does not carry the REPORTDATA"):
        ConfigfsTsmDevice(fs).quote(os.urandom(64))


def test_outblob_that_is_not_a_tdx_quote_is_refused() -> None:
    fs = FakeConfigfsTsm(lambda _: b"\x02\x00" + bytes(2000))  # an SEV-SNP-sized blob
    with pytest.raises(tee.TeeError, match="not a TDX quote"):
        ConfigfsTsmDevice(fs).quote(os.urandom(64))


@pytest.mark.parametrize("size", [0, 63, 65])
def test_report_data_must_be_64_bytes(sim: SimTdx, size: int) -> None:
    fs = FakeConfigfsTsm(sim.quote)
    with pytest.raises(tee.TeeError, match="64 bytes"):
        ConfigfsTsmDevice(fs).quote(bytes(size))
    assert fs.created == []


def test_configfs_not_mounted_in_the_container_is_mounted_first(sim: SimTdx) -> None:
    fs = FakeConfigfsTsm(sim.quote, mounted=False)
    report_data = os.urandom(64)
    assert quote_report_data(ConfigfsTsmDevice(fs).quote(report_data)) == report_data
    assert fs.mounts == 1
    ConfigfsTsmDevice(fs).quote(report_data)
    assert fs.mounts == 1, "mounted once"


def test_configfs_that_may_not_be_mounted_is_a_clear_error(sim: SimTdx) -> None:
    fs = FakeConfigfsTsm(sim.quote, mounted=False, may_mount=False)
    with pytest.raises(
        tee.TeeError, match=r"configfs must be mounted.*not permitted.*CAP_SYS_ADMIN"
    ):
        ConfigfsTsmDevice(fs).quote(os.urandom(64))
    assert fs.created == [] and fs.quotes_made == 0


def test_without_configfs_the_os_device_says_what_is_missing(tmp_path: Path) -> None:
    # A mount point that does not exist: the real mount(2) is made and fails, nothing mounted.
    fs = OsTsmFs(tmp_path / "config" / "tsm" / "report", tmp_path / "config")
    with pytest.raises(tee.TeeError, match=r"configfs must be mounted.*mounting it failed"):
        ConfigfsTsmDevice(fs).quote(os.urandom(64))


def test_registered_as_the_tdx_configfs_device(monkeypatch) -> None:
    (found,) = [ep for ep in entry_points(group=tee.ENTRY_POINT_GROUP) if ep.name == "tdx-configfs"]
    assert found.load() is quote_device
    monkeypatch.setenv(tee.TEE_SETTING, "tdx-configfs")
    if not Path("/sys/kernel/config/tsm/report").is_dir():
        # Not a TD (as on every machine this suite runs on): the error names what is missing.
        with pytest.raises(tee.TeeError, match="configfs"):
            tee.get_quote(os.urandom(64))
