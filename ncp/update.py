"""What the emulated NCP offers: a shipment (firmware file), its simulated download, its store."""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass

from dualmcu.image.firmware import (
    ImageDigests,
    digests_of_file,
    read_info,
    read_info_from_file,
)


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

    @property
    def size(self) -> int:
        return self.digests.size

    @property
    def version(self) -> str:
        return self.info.get("mcu", "")

    @classmethod
    def from_bytes(cls, data: bytes, filename: str = "firmware.bin") -> Shipment:
        info = read_info(data)
        if info is None:
            raise ValueError(f"{filename} has no firmware tag (blnkinf): tag it with `dualmcu tag append`")
        d = ImageDigests(len(data), zlib.crc32(data), hashlib.md5(data).digest(), hashlib.sha256(data).digest())
        return cls(filename, info, d, Source(data=data))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Shipment:
        if not os.path.isfile(path):
            raise ValueError(f"no firmware file at {path}")
        info = read_info_from_file(path)
        if info is None:
            raise ValueError(f"{path} has no firmware tag (blnkinf): tag it with `dualmcu tag append`")
        if not info.get("mcu") or not info.get("fw-type"):
            raise ValueError(f"the tag of {path} lacks 'mcu' or 'fw-type': {info}")
        return cls(os.path.basename(path), info, digests_of_file(path), Source(path=path))


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
        with os.fdopen(_create(path + ".part"), "wb") as f:
            for pos in range(0, length, block):
                f.write(source.read(pos, min(block, length - pos)))
        os.replace(path + ".part", path)

    def source(self, name: str) -> Source:
        if self.directory is None:
            return Source(data=bytes(self._mem[name]))
        return Source(path=os.path.join(self.directory, name))
