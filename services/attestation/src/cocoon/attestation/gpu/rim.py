"""Reference measurements (RIMs): NVIDIA's SWID tags for a driver version and a VBIOS build,
from files (offline) or from an NVIDIA RIM service at a configurable URL (online).

A RIM lists `Resource` elements with a 0-based `index`, `active`, `size`, `alternatives` and
`Hash0..HashN-1` (hex SHA-384). The golden set is the union of the driver's and the VBIOS's
active entries; an index active in both is an error. Each golden index must be present in the
report with a value equal to one of its alternatives.

Not done: the RIM's XML signature (XML-DSig, C14N 1.1, ECDSA P-384 to NVIDIA's RIM root) is not
verified, so RIM files and the RIM service URL are trusted as configured.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from xml.etree import ElementTree as ET

import httpx

from cocoon.attestation.gpu.report import GpuEvidenceError, GpuReport

MAX_RIM_BYTES = 1024 * 1024
MAX_MEASUREMENT_INDEX = 255
DEFAULT_TIMEOUT = 5.0


class RimError(GpuEvidenceError):
    """Reference measurements that are missing, unreadable or inconsistent with the report."""


@dataclass(frozen=True)
class Golden:
    index: int
    size: int
    alternatives: tuple[bytes, ...]


@dataclass(frozen=True)
class Rim:
    rim_id: str
    version: str  # Meta colloquialVersion: the driver version or the VBIOS version
    measurements: tuple[Golden, ...]  # active entries only


def driver_rim_id(report: GpuReport) -> str:
    version = report.driver_version
    if not version:
        raise RimError("report carries no driver version")
    return f"NV_GPU_DRIVER_GH100_{version}"


def vbios_rim_id(report: GpuReport) -> str:
    parts = [report.text("project"), report.text("project_sku"), report.text("chip_sku")]
    vbios = report.vbios_version
    if not all(parts) or vbios is None:
        raise RimError("report lacks project, project SKU, chip SKU or VBIOS version")
    return "NV_GPU_VBIOS_" + "_".join(p.upper() for p in parts if p) + "_" + vbios.replace(".", "")


def parse_rim(rim_id: str, data: bytes) -> Rim:
    if len(data) > MAX_RIM_BYTES:
        raise RimError(f"RIM {rim_id} is over the {MAX_RIM_BYTES}-byte cap")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise RimError(f"RIM {rim_id} has a DTD; refused")  # no entity expansion, ever
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise RimError(f"RIM {rim_id} is not XML: {exc}") from None
    meta = next((e for e in root.iter() if _local(e.tag) == "Meta"), None)
    if meta is None or not meta.get("colloquialVersion"):
        raise RimError(f"RIM {rim_id} has no Meta colloquialVersion")
    out: list[Golden] = []
    seen: set[int] = set()
    for el in root.iter():
        if _local(el.tag) != "Resource" or el.get("active", "").lower() != "true":
            continue
        try:
            index, size = int(el.attrib["index"]), int(el.attrib["size"])
            count = int(el.attrib["alternatives"])
            hashes = {_local(k): v for k, v in el.attrib.items() if _local(k).startswith("Hash")}
            alts = tuple(bytes.fromhex(hashes[f"Hash{i}"]) for i in range(count))
        except (KeyError, ValueError) as exc:
            raise RimError(f"RIM {rim_id}: malformed measurement entry: {exc!r}") from None
        if not 0 <= index <= MAX_MEASUREMENT_INDEX or index in seen or count < 1:
            raise RimError(f"RIM {rim_id}: bad or repeated index {index}")
        if any(len(a) != size for a in alts):
            raise RimError(f"RIM {rim_id}: index {index} hash length differs from size {size}")
        seen.add(index)
        out.append(Golden(index, size, alts))
    if not out:
        raise RimError(f"RIM {rim_id} has no active measurements")
    return Rim(rim_id, meta.attrib["colloquialVersion"], tuple(out))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class RimSource(Protocol):
    def get(self, rim_id: str) -> Rim: ...


class RimFiles:
    """Offline: RIM files supplied by the operator, keyed by RIM id."""

    def __init__(self, files: Mapping[str, str | Path]) -> None:
        self.files = {k: Path(v) for k, v in files.items()}

    @classmethod
    def from_dir(cls, directory: str | Path) -> RimFiles:
        """Every `<RIM id>.xml` or `<RIM id>.swidtag` in a directory."""
        paths = [p for p in Path(directory).iterdir() if p.suffix in (".xml", ".swidtag")]
        return cls({p.stem: p for p in paths})

    def get(self, rim_id: str) -> Rim:
        path = self.files.get(rim_id)
        if path is None:
            raise RimError(f"no RIM file for {rim_id}")
        try:
            return parse_rim(rim_id, path.read_bytes())
        except OSError as exc:
            raise RimError(f"cannot read RIM {rim_id}: {exc}") from None


class RimService:
    """Online: `GET {base_url}/v1/rim/{id}` → JSON whose `rim` member is the base64 SWID tag
    (the NVIDIA RIM service shape). Results are cached per id: RIMs are immutable per version."""

    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._cache: dict[str, Rim] = {}

    def get(self, rim_id: str) -> Rim:
        if rim_id in self._cache:
            return self._cache[rim_id]
        url = f"{self.base_url}/v1/rim/{rim_id}"
        try:
            resp = httpx.get(url, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise RimError(f"RIM service unreachable for {rim_id}: {exc}") from None
        if resp.status_code != 200:
            raise RimError(f"RIM service returned HTTP {resp.status_code} for {rim_id}")
        try:
            body = json.loads(resp.content)
            data = base64.b64decode(body["rim"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise RimError(f"RIM service answer for {rim_id} is malformed: {exc!r}") from None
        rim = parse_rim(rim_id, data)
        self._cache[rim_id] = rim
        return rim


def golden_for(report: GpuReport, source: RimSource) -> dict[int, Golden]:
    """The driver and VBIOS RIMs for this report, merged; versions must match the report's."""
    driver = source.get(driver_rim_id(report))
    vbios = source.get(vbios_rim_id(report))
    if driver.version != report.driver_version:
        raise RimError(f"driver RIM is for {driver.version}, report says {report.driver_version}")
    if (vbios.version or "").upper() != (report.vbios_version or "").upper():
        raise RimError(f"VBIOS RIM is for {vbios.version}, report says {report.vbios_version}")
    merged: dict[int, Golden] = {}
    for g in driver.measurements + vbios.measurements:
        if g.index in merged:
            raise RimError(f"measurement index {g.index} is active in both driver and VBIOS RIMs")
        merged[g.index] = g
    return merged


def mismatches(report: GpuReport, golden: Mapping[int, Golden]) -> list[int]:
    """Golden indices whose reported value is missing or equals none of the alternatives."""
    measured = report.measurements()
    return sorted(
        i for i, g in golden.items() if measured.get(i) is None or measured[i] not in g.alternatives
    )
