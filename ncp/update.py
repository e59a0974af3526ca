"""What the emulated NCP offers: a shipment (firmware file), its simulated download, its store.

A release may come as several files (``Catalog``): the image, a compressed package of it, and
delta packages from the versions devices run (image/package.py).  For each device the cloud
stand-in picks the delta for the version it reported, else the compressed package, else the
image; a file that failed on the device is not offered to it again, so the image is always
the last resort.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import zlib
from dataclasses import dataclass, field

from dualmcu.image.firmware import (
    ImageDigests,
    digests_of_file,
    read_info,
    read_info_from_file,
    version_key,
)
from dualmcu.image.inputs import kind_of, removed_on_failure
from dualmcu.image.package import Header, PackageError, is_package, parse_header, segment_spans


class Source:
    """Random access to a shipment's bytes: a file (the process) or bytes (tests)."""

    def __init__(self, data: bytes | None = None, path: str | os.PathLike | None = None):
        if (data is None) == (path is None):
            raise ValueError("give data or path")
        self._data = data
        self.path = path
        self._file = open(path, "rb") if path is not None else None

    def read(self, offset: int, length: int) -> bytes:
        if self._data is not None:
            return self._data[offset : offset + length]
        self._file.seek(offset)
        return self._file.read(length)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class Shipment:
    filename: str
    info: dict[str, str]
    digests: ImageDigests
    source: Source
    package: Header | None = None  # a dualmcu package (compressed or delta), not an image
    _spans: list | None = field(default=None, repr=False, compare=False)  # segment_spans, once read
    _starts: list | None = field(default=None, repr=False, compare=False)  # their first bytes, for bisect

    @property
    def size(self) -> int:
        return self.digests.size

    def image_bytes(self, offset: int, length: int) -> int:
        """At most how many image bytes the primary makes from these bytes of the file: the
        bytes themselves for an image; for a package, every segment they touch, whole."""
        if self.package is None:
            return length
        if self._spans is None:  # read once: this runs for every write of the transfer
            self._spans = segment_spans(self.package, self.source.read, self.size)
            self._starts = [a for a, _, _ in self._spans]
        spans = self._spans
        first = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        made = 0
        for start, end, out in spans[first:]:
            if start >= offset + length:
                break
            if end > offset:
                made += out
        return made

    @property
    def kind(self) -> str:
        return "image" if self.package is None else ("delta" if self.package.delta else "compressed")

    @property
    def version(self) -> str:
        return self.info.get("mcu", "")

    @classmethod
    def from_bytes(cls, data: bytes, filename: str = "firmware.bin") -> Shipment:
        _check_size(len(data), filename)
        info = read_info(data)
        if info is None:
            raise ValueError(f"{filename} has no firmware tag (blnkinf): tag it with `dualmcu tag append`")
        d = ImageDigests(len(data), zlib.crc32(data), hashlib.md5(data).digest(), hashlib.sha256(data).digest())
        return cls(filename, info, d, Source(data=data), _package_header(data[:8192], filename))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Shipment:
        if not os.path.isfile(path):
            # A device or a FIFO exists but has no size to offer, and may never end.
            kind = kind_of(os.stat(path).st_mode) if os.path.exists(path) else None
            raise ValueError(f"{path} is {kind}, not a firmware file" if kind
                             else f"no firmware file at {path}")
        _check_size(os.path.getsize(path), path)  # before it is read: a huge file is refused at once
        info = read_info_from_file(path)
        if info is None:
            raise ValueError(f"{path} has no firmware tag (blnkinf): tag it with `dualmcu tag append`")
        if not info.get("mcu") or not info.get("fw-type"):
            raise ValueError(f"the tag of {path} lacks 'mcu' or 'fw-type': {info}")
        with open(path, "rb") as f:
            head = f.read(8192)
        return cls(os.path.basename(path), info, digests_of_file(path), Source(path=path),
                   _package_header(head, path))


MAX_SIZE = 0xFFFF_FFFF  # otaUpdateAvailable's size is a uint32


def _check_size(size: int, name: object) -> None:
    if size > MAX_SIZE:
        raise ValueError(f"{name} is {size:,} bytes: an offer carries a 32-bit size, so a firmware file "
                         f"holds at most {MAX_SIZE:,} bytes")


def _package_header(head: bytes, name: object) -> Header | None:
    if not is_package(head):
        return None
    try:
        h = parse_header(head)
    except PackageError as e:
        raise ValueError(f"{name}: {e}") from None
    if h is None:
        raise ValueError(f"{name}: the package ends inside its header")
    return h


class Catalog:
    """One release as the cloud holds it: the image and packages of one version."""

    def __init__(self, shipments: list[Shipment]):
        if not shipments:
            raise ValueError("no firmware given")
        newest = max(version_key(s.version) for s in shipments)
        chosen = [s for s in shipments if version_key(s.version) == newest]
        types = {s.info.get("fw-type") for s in chosen}
        if len(types) > 1:
            raise ValueError(f"firmware files of version {chosen[0].version} name several types: {', '.join(sorted(types))}")
        self.skipped = [s.filename for s in shipments if s not in chosen]
        self.image = next((s for s in chosen if s.package is None), None)
        self.compressed = next((s for s in chosen if s.package is not None and not s.package.delta), None)
        self.deltas: dict[str, Shipment] = {}
        for s in chosen:
            if s.package is not None and s.package.delta:
                if s.package.base_version in self.deltas:
                    raise ValueError(f"two deltas from {s.package.base_version}: "
                                     f"{self.deltas[s.package.base_version].filename} and {s.filename}")
                self.deltas[s.package.base_version] = s
        self.failed: set[str] = set()  # files that failed on the device: not offered again

    @property
    def shipments(self) -> list[Shipment]:
        return [s for s in (self.image, self.compressed, *self.deltas.values()) if s is not None]

    def pick(self, base_version: str) -> Shipment | None:
        """What to offer a device running ``base_version``: None once everything failed."""
        for s in (self.deltas.get(base_version), self.compressed, self.image):
            if s is not None and s.filename not in self.failed:
                return s
        return None

    def describe(self) -> str:
        parts = [f"{s.filename} ({s.kind}{', from ' + s.package.base_version if s.kind == 'delta' else ''}, "
                 f"{s.size} bytes)" for s in self.shipments]
        return f"version {self.shipments[0].version}: " + ", ".join(parts)

    @classmethod
    def from_paths(cls, paths: list[str]) -> Catalog:
        """Files, or directories of them (a directory's untagged files are passed over)."""
        shipments = []
        for path in paths:
            if os.path.isdir(path):
                for name in sorted(os.listdir(path)):
                    full = os.path.join(path, name)
                    if name.startswith(".") or name.endswith(".part") or not os.path.isfile(full):
                        continue
                    if read_info_from_file(full) is None:
                        continue
                    shipments.append(Shipment.from_file(full))
                if not shipments:
                    raise ValueError(f"no tagged firmware file in {path}")
            else:
                shipments.append(Shipment.from_file(path))
        names = [s.filename for s in shipments]
        if len(set(names)) != len(names):
            raise ValueError("two firmware files share a name: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
        return cls(shipments)


@dataclass
class Network:
    """The simulated download from the cloud: a rate, and optionally a failure at an offset."""

    rate: float | None = None  # bytes per second; None: instant
    fail_at: int | None = None

    def ready_at(self, started: float, upto: int) -> float:
        """When the first ``upto`` bytes are in."""
        return started if self.rate is None else started + upto / self.rate

    def fails_before(self, upto: int) -> bool:
        return self.fail_at is not None and self.fail_at < upto


def _create(path: str) -> int:
    """Open ``path`` for writing, new and empty, never through a symlink someone planted there
    (the store may be a shared directory)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)


class Store:
    """The NCP's own file system, where prefetch keeps the image (a directory, or memory)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = directory
        self._mem: dict[str, bytearray] = {}

    def check(self) -> None:
        """Make the directory and prove it takes a file, before any update starts (OSError)."""
        if self.directory is None:
            return
        os.makedirs(self.directory, exist_ok=True)
        probe = os.path.join(self.directory, ".dualmcu-probe")
        os.close(_create(probe))
        os.unlink(probe)

    def save(self, name: str, source: Source, length: int, block: int = 1 << 16) -> None:
        """Keep ``length`` bytes of ``source`` as ``name`` (OSError when the disk says no)."""
        if self.directory is None:
            self._mem[name] = bytearray(source.read(0, length))
            return
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, name)
        with removed_on_failure(path + ".part"):
            with os.fdopen(_create(path + ".part"), "wb") as f:
                for pos in range(0, length, block):
                    f.write(source.read(pos, min(block, length - pos)))
            os.replace(path + ".part", path)

    def source(self, name: str) -> Source:
        if self.directory is None:
            return Source(data=bytes(self._mem[name]))
        return Source(path=os.path.join(self.directory, name))
