"""A configfs-tsm report tree that behaves as Documentation/ABI/testing/configfs-tsm-report says.

Only the kernel has the real one (a TD with the tdx_guest driver), so the `tdx-configfs` quote
device is tested against this, which plugs in where the device makes its filesystem calls
(`cocoon.worker_proxy.tdx_configfs.TsmFs`) and enforces what the kernel does:

* `mkdir` of an entry fails with ENXIO while no provider is registered, EEXIST for a taken name;
* `provider` and `generation` are read-only text; `inblob` is write-only, at most 64 bytes
  (EFBIG beyond), and every write to it increments `generation`;
* `outblob` is read-only and generated from the current `inblob` by the provider: EINVAL
  without an inblob (and, as tdx_guest requires, unless it is exactly 64 bytes), ENOTTY when the
  provider went away after the entry was made;
* writing a read-only attribute or reading a write-only one is EACCES; `rmdir` of an unknown
  entry is ENOENT.

configfs itself may not be mounted yet (`mounted=False`, as in a container whose /sys is a fresh
sysfs): every call but `mount` then fails with ENOENT, as paths under an empty mount point do;
`mount` fails with EPERM without the right to mount (`may_mount=False`, no CAP_SYS_ADMIN).

`interfere(n)` makes another process write its own REPORTDATA into the entry between the
device's inblob write and its outblob read, the next `n` times: the race the generation counter
exists to expose.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

INBLOB_MAX = 64


def _error(code: int, what: str) -> OSError:
    return OSError(code, os.strerror(code), what)


@dataclass
class _Entry:
    generation: int = 0
    inblob: bytes | None = None


class FakeConfigfsTsm:
    def __init__(
        self,
        make_quote: Callable[[bytes], bytes],
        provider: str | None = "tdx_guest",
        *,
        mounted: bool = True,
        may_mount: bool = True,
    ):
        self.make_quote = make_quote
        self.provider = provider  # None: no TSM driver registered
        self.mounted = mounted
        self.may_mount = may_mount
        self.mounts = 0
        self.entries: dict[str, _Entry] = {}
        self.created: list[str] = []
        self.quotes_made = 0
        self._interfere = 0

    def interfere(self, times: int) -> None:
        self._interfere = times

    # -- TsmFs ---------------------------------------------------------------------------
    def mount(self) -> None:
        if self.mounted:
            return
        if not self.may_mount:
            raise _error(errno.EPERM, "/sys/kernel/config")
        self.mounted = True
        self.mounts += 1

    def mkdir(self, name: str) -> None:
        self._require_mounted(name)
        if self.provider is None:
            raise _error(errno.ENXIO, name)
        if name in self.entries:
            raise _error(errno.EEXIST, name)
        self.entries[name] = _Entry()
        self.created.append(name)

    def rmdir(self, name: str) -> None:
        if self.entries.pop(name, None) is None:
            raise _error(errno.ENOENT, name)

    def read(self, name: str, attribute: str) -> bytes:
        entry = self._entry(name)
        if attribute == "provider":
            if self.provider is None:
                raise _error(errno.ENOTTY, attribute)
            return f"{self.provider}\n".encode()
        if attribute == "generation":
            return f"{entry.generation}\n".encode()
        if attribute == "outblob":
            return self._outblob(entry)
        if attribute == "inblob":
            raise _error(errno.EACCES, attribute)
        raise _error(errno.ENOENT, attribute)

    def write(self, name: str, attribute: str, data: bytes) -> None:
        entry = self._entry(name)
        if attribute in ("provider", "generation", "outblob"):
            raise _error(errno.EACCES, attribute)
        if attribute != "inblob":
            raise _error(errno.ENOENT, attribute)
        if len(data) > INBLOB_MAX:
            raise _error(errno.EFBIG, attribute)
        entry.inblob = bytes(data)
        entry.generation += 1

    # -- the provider ----------------------------------------------------------------------
    def _outblob(self, entry: _Entry) -> bytes:
        if self._interfere > 0:
            self._interfere -= 1
            entry.inblob = os.urandom(INBLOB_MAX)  # another process's REPORTDATA
            entry.generation += 1
        if self.provider is None:
            raise _error(errno.ENOTTY, "outblob")
        if entry.inblob is None or len(entry.inblob) != INBLOB_MAX:
            raise _error(errno.EINVAL, "outblob")
        self.quotes_made += 1
        return self.make_quote(entry.inblob)

    def _require_mounted(self, name: str) -> None:
        if not self.mounted:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)

    def _entry(self, name: str) -> _Entry:
        self._require_mounted(name)
        entry = self.entries.get(name)
        if entry is None:
            raise _error(errno.ENOENT, name)
        return entry
