"""The TDX quote device of a real TD: the kernel's configfs-tsm report interface.

    COCOON_TEE=tdx-configfs      (entry point of the `cocoon.tee` group, see cocoon.core.tee)

Linux (6.7+, `tdx_guest` module) exposes attestation reports under configfs
(Documentation/ABI/testing/configfs-tsm-report):

    mkdir /sys/kernel/config/tsm/report/$name     an entry; fails with ENXIO without a provider
    $name/provider     (RO) the format of outblob: "tdx_guest" for a TDX quote
    $name/generation   (RO) incremented on every write to inblob (or any option)
    $name/inblob       (WO) up to 64 bytes: for TDX exactly the 64 bytes of REPORTDATA
    $name/outblob      (RO) the report generated from inblob: a TDX DCAP quote
    rmdir $name

Another process may write the same entry's inblob between our write and our read, so outblob
would be a quote over its REPORTDATA. The ABI's answer is the generation: read it before the
write and after the read; anything but exactly one more write means a conflict, and the quote
is requested again. Each request also makes its own entry, so a conflict needs a process that
writes into our directory; the check costs one read.

The quote is further checked to carry our REPORTDATA (TD report body, v4 and v5 layouts), so a
stale or foreign outblob can never be sent as ours.

configfs itself may not be mounted in a container (a Kata pod's /sys is a fresh sysfs of the
TD's kernel, without the configfs mount systemd makes at boot): the device then mounts it, as
systemd would, which takes CAP_SYS_ADMIN in the TD (the chart grants it only in a confidential
runtime class; docs/deployment.md).

This device has NOT run on TDX hardware here: it is tested against a fake configfs tree that
follows the ABI document (tests/support/configfs_tsm.py). File access goes through `TsmFs`, so
the fake replaces only the filesystem calls; `OsTsmFs` is the thin real one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import uuid
from pathlib import Path
from typing import Protocol

from cocoon.core.tee import REPORT_DATA_LEN, TeeError

CONFIGFS_MOUNT = Path("/sys/kernel/config")
REPORT_ROOT = CONFIGFS_MOUNT / "tsm" / "report"
TDX_PROVIDER = "tdx_guest"
ATTEMPTS = 3  # requests before a persistent generation conflict is an error

# DCAP quote layout: a 48-byte header (version u16 LE first, TEE type u32 LE at offset 4); v4
# puts the TD report right after it, v5 after a body descriptor (type u16, size u32). REPORTDATA
# is the last 64 bytes of TD report 1.0 (and at the same offset in 1.5).
_HEADER_LEN = 48
_V5_DESCRIPTOR_LEN = 6
_REPORT_DATA_OFFSET = 520
_TEE_TYPE_TDX = 0x81


class TsmFs(Protocol):
    """The filesystem calls the device makes under the report root."""

    def mkdir(self, name: str) -> None: ...
    def rmdir(self, name: str) -> None: ...
    def read(self, name: str, attribute: str) -> bytes: ...
    def write(self, name: str, attribute: str, data: bytes) -> None: ...
    def mount(self) -> None:
        """Mount configfs where the report root lives, unless it is mounted (OSError if not
        permitted)."""


class OsTsmFs:
    """configfs itself: one open/read or open/write per attribute, as the kernel expects."""

    def __init__(self, root: Path, mount_point: Path) -> None:
        self.root = root
        self.mount_point = mount_point

    def mount(self) -> None:
        if _mounted(self.mount_point):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        target = os.fsencode(self.mount_point)
        if libc.mount(b"configfs", target, b"configfs", 0, None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(self.mount_point))

    def mkdir(self, name: str) -> None:
        os.mkdir(self.root / name)

    def rmdir(self, name: str) -> None:
        os.rmdir(self.root / name)

    def read(self, name: str, attribute: str) -> bytes:
        with open(self.root / name / attribute, "rb", buffering=0) as fh:
            return fh.read()  # configfs hands a whole attribute out; read() loops to EOF

    def write(self, name: str, attribute: str, data: bytes) -> None:
        # One write(2) of the whole blob: the kernel takes the blob when the file is closed.
        with open(self.root / name / attribute, "wb", buffering=0) as fh:
            fh.write(data)


def quote_report_data(quote: bytes) -> bytes:
    """The REPORTDATA a TDX quote (v4 or v5) carries, or TeeError for anything else."""
    if len(quote) < _HEADER_LEN:
        raise TeeError(f"outblob is {len(quote)} bytes, not a TDX quote")
    version, _, tee_type = struct.unpack_from("<HHI", quote)
    if tee_type != _TEE_TYPE_TDX or version not in (4, 5):
        raise TeeError(f"outblob is not a TDX quote (version {version}, TEE type {tee_type:#x})")
    start = _HEADER_LEN + (_V5_DESCRIPTOR_LEN if version == 5 else 0) + _REPORT_DATA_OFFSET
    if len(quote) < start + REPORT_DATA_LEN:
        raise TeeError("outblob is a truncated TDX quote")
    return quote[start : start + REPORT_DATA_LEN]


class ConfigfsTsmDevice:
    def __init__(self, fs: TsmFs, *, attempts: int = ATTEMPTS) -> None:
        self.fs = fs
        self.attempts = attempts

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != REPORT_DATA_LEN:
            raise TeeError(f"REPORTDATA is {REPORT_DATA_LEN} bytes, got {len(report_data)}")
        name = f"cocoon-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._mkdir(name)
        try:
            provider = self._read(name, "provider").decode(errors="replace").strip()
            if provider != TDX_PROVIDER:
                raise TeeError(
                    f"configfs-tsm provider is {provider!r}, not {TDX_PROVIDER!r}: "
                    "this is not a TDX guest"
                )
            for _ in range(self.attempts):
                quote = self._attempt(name, report_data)
                if quote is not None:
                    return quote
            raise TeeError(
                f"configfs-tsm report {name}: another writer changed inblob on each of "
                f"{self.attempts} attempts (generation conflict)"
            )
        finally:
            # A leftover entry is harmless; the quote (or the error) is what matters.
            with contextlib.suppress(OSError):
                self.fs.rmdir(name)

    def _attempt(self, name: str, report_data: bytes) -> bytes | None:
        """One request; None when the generation shows a concurrent write."""
        before = self._generation(name)
        self._write(name, "inblob", report_data)
        quote = self._read(name, "outblob")
        after = self._generation(name)
        if after != before + 1:
            return None
        if quote_report_data(quote) != report_data:
            raise TeeError("the TDX quote does not carry the REPORTDATA written to inblob")
        return quote

    def _generation(self, name: str) -> int:
        text = self._read(name, "generation").decode(errors="replace").strip()
        try:
            return int(text)
        except ValueError:
            raise TeeError(f"configfs-tsm generation is not a number: {text!r}") from None

    def _mkdir(self, name: str) -> None:
        try:
            self.fs.mkdir(name)
            return
        except FileNotFoundError:
            pass  # configfs may not be mounted here: mount it, then try once more
        except OSError as exc:
            raise _mkdir_error(exc) from None
        try:
            self.fs.mount()
        except OSError as exc:
            raise TeeError(
                "no configfs-tsm report directory: configfs must be mounted at "
                f"{CONFIGFS_MOUNT}, and mounting it failed ({_describe(exc)}; it takes "
                "CAP_SYS_ADMIN in the TD)"
            ) from None
        try:
            self.fs.mkdir(name)
        except FileNotFoundError:
            raise TeeError(
                f"no configfs-tsm report directory although configfs is mounted at "
                f"{CONFIGFS_MOUNT}: the kernel must be 6.7 or later (CONFIG_TSM_REPORTS)"
            ) from None
        except OSError as exc:
            raise _mkdir_error(exc) from None

    def _read(self, name: str, attribute: str) -> bytes:
        try:
            return self.fs.read(name, attribute)
        except OSError as exc:
            raise TeeError(f"configfs-tsm {attribute}: {_describe(exc)}") from None

    def _write(self, name: str, attribute: str, data: bytes) -> None:
        try:
            self.fs.write(name, attribute, data)
        except OSError as exc:
            raise TeeError(f"configfs-tsm {attribute}: {_describe(exc)}") from None


def _mkdir_error(exc: OSError) -> TeeError:
    if exc.errno == errno.ENXIO:
        return TeeError(
            "configfs-tsm has no provider: the tdx_guest driver is not loaded "
            "(not a TD, or the module is missing)"
        )
    return TeeError(f"cannot create a configfs-tsm report entry: {exc}")


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOTTY:
        return "the provider went away (ENOTTY)"
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _mounted(mount_point: Path) -> bool:
    """Whether configfs is mounted at `mount_point` (/proc/self/mounts, as mountpoint(1))."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    fields = (line.split() for line in lines)  # device, mount point, type, options, ...
    return any(f[1:3] == [os.fsdecode(mount_point), "configfs"] for f in fields if len(f) > 2)


def quote_device(report_data: bytes) -> bytes:
    """The `tdx-configfs` quote device of `cocoon.core.tee` (entry point group `cocoon.tee`)."""
    return ConfigfsTsmDevice(OsTsmFs(REPORT_ROOT, CONFIGFS_MOUNT)).quote(report_data)
