"""Emulated NOR flash in one file, and the layout the primary MCU gives it.

    page 0                     geometry header (written once, when the file is made)
    page 1, page 2             boot-state record, copy 0 and copy 1 (see bootstate.py)
    slot A                     slot_size bytes, page aligned
    slot B                     slot_size bytes, page aligned

The flash behaves like NOR: erase sets a whole page to 0xFF; programming can only clear bits
(the stored byte becomes old AND new), so writing over unerased data corrupts it exactly as
real hardware would.  Every erase and program is one *operation*, numbered from 1; an
``interrupt`` hook sees each before it happens and may cut the power there, optionally after
only part of it was applied (a torn write).  That hook is how power cuts are injected.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

HEADER_MAGIC = b"DMCUFLSH"
HEADER = struct.Struct("<8sHHII")  # magic, layout version, reserved, page size, slot size
LAYOUT_VERSION = 1
DEFAULT_PAGE = 4096
DEFAULT_SLOT = 1 << 20


class FlashError(Exception):
    pass


class PowerCut(BaseException):
    """The power failed during a flash operation; the device stops right here.

    A BaseException on purpose: nothing on the device may catch it and carry on (the RPC
    endpoint answers handler errors with 0x10; a dead device answers nothing).
    """

    def __init__(self, op: int, kind: str, applied: int):
        super().__init__(f"power cut at flash operation {op} ({kind}, {applied} bytes applied)")
        self.op, self.kind, self.applied = op, kind, applied


# interrupt(op_number, kind, offset, length) -> None to let the operation complete, or the
# number of bytes (0..length) to apply before the power fails.
Interrupt = Callable[[int, str, int, int], "int | None"]


@dataclass(frozen=True)
class Geometry:
    page_size: int = DEFAULT_PAGE
    slot_size: int = DEFAULT_SLOT

    def __post_init__(self) -> None:
        if self.page_size < 256 or self.page_size & (self.page_size - 1):
            raise FlashError(f"page size {self.page_size} must be a power of two, at least 256")
        if self.slot_size <= 0 or self.slot_size % self.page_size:
            raise FlashError(f"slot size {self.slot_size} must be a positive multiple of the page size")

    @property
    def state_offsets(self) -> tuple[int, int]:
        return (self.page_size, 2 * self.page_size)

    def slot_offset(self, slot: int) -> int:
        return 3 * self.page_size + slot * self.slot_size

    @property
    def total(self) -> int:
        return 3 * self.page_size + 2 * self.slot_size


class MemoryStore:
    """Flash contents in memory (tests, simulations)."""

    def __init__(self, buf: bytearray):
        self.buf = buf

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.buf[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self.buf[offset : offset + len(data)] = data

    def close(self) -> None:
        pass


class FileStore:
    """Flash contents in a file, read and written in place.

    Positioned reads and writes rather than a memory map: a mapping would count every page
    of the slots the process ever touched as its own memory, so the emulator's memory would
    grow with the image it receives.
    """

    def __init__(self, f):
        self.f = f
        self.fd = f.fileno()

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, offset)

    def close(self) -> None:
        self.f.close()


class Flash:
    """Byte-addressed NOR flash over a store (a file, or memory in tests)."""

    def __init__(self, store, geometry: Geometry, interrupt: Interrupt | None = None):
        self._store = store
        self.geometry = geometry
        self.page_size = geometry.page_size
        self.size = geometry.total
        self.interrupt = interrupt
        self.ops = 0

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def in_memory(cls, geometry: Geometry = Geometry(), interrupt: Interrupt | None = None) -> Flash:
        buf = bytearray(b"\xff" * geometry.total)
        head = _header(geometry)
        buf[: len(head)] = head
        return cls(MemoryStore(buf), geometry, interrupt)

    @classmethod
    def open(cls, path: str | os.PathLike, geometry: Geometry | None = None, create: bool = True,
             interrupt: Interrupt | None = None) -> Flash:
        """Open a flash file; make it (erased, with ``geometry``) when missing and allowed."""
        exists = os.path.exists(path)
        if not exists and not create:
            raise FlashError(f"no flash file at {path}")
        if not exists:
            g = geometry or Geometry()
            tmp = f"{path}.new"
            with open(tmp, "wb") as f:
                f.write(_header(g).ljust(g.page_size, b"\xff"))
                blank = b"\xff" * (1 << 16)
                left = g.total - g.page_size
                while left > 0:
                    f.write(blank[: min(left, len(blank))])
                    left -= len(blank)
            os.replace(tmp, path)  # a half-made file never looks like a flash file
        f = open(path, "r+b")
        try:
            head = f.read(HEADER.size + 4)
            g = read_header(head, path)
            if geometry is not None and geometry != g:
                raise FlashError(
                    f"{path} has pages of {g.page_size} and slots of {g.slot_size} bytes, "
                    f"not {geometry.page_size} and {geometry.slot_size}; use another --flash path"
                )
            size = os.fstat(f.fileno()).st_size
            if size != g.total:
                raise FlashError(f"{path} is {size} bytes, its header says {g.total}: the file is damaged")
        except Exception:
            f.close()
            raise
        return cls(FileStore(f), g, interrupt)

    def close(self) -> None:
        self._store.close()

    # -- operations --------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self._store.read(offset, length)

    def erase_page(self, offset: int) -> None:
        if offset % self.page_size:
            raise FlashError(f"erase at {offset:#x} is not page aligned")
        self._check(offset, self.page_size)
        applied = self._begin("erase", offset, self.page_size)
        self._store.write(offset, b"\xff" * applied)
        self._end("erase", applied, self.page_size)

    def program(self, offset: int, data: bytes) -> None:
        """Write ``data``; like NOR flash, bits only go from 1 to 0."""
        self._check(offset, len(data))
        if offset // self.page_size != (offset + len(data) - 1) // self.page_size:
            raise FlashError(f"program of {len(data)} bytes at {offset:#x} crosses a page boundary")
        applied = self._begin("program", offset, len(data))
        old = self._store.read(offset, applied)
        new = data[:applied]
        if old != b"\xff" * applied:
            new = bytes(a & b for a, b in zip(old, new))
        self._store.write(offset, new)
        self._end("program", applied, len(data))

    def write(self, offset: int, data: bytes) -> None:
        """Program ``data`` page by page (the pages must already be erased)."""
        pos = 0
        while pos < len(data):
            room = self.page_size - (offset + pos) % self.page_size
            self.program(offset + pos, data[pos : pos + room])
            pos += room

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FlashError(f"flash access {offset:#x}+{length} is outside 0..{self.size:#x}")

    def _begin(self, kind: str, offset: int, length: int) -> int:
        self.ops += 1
        self._cut = None
        if self.interrupt is not None:
            cut = self.interrupt(self.ops, kind, offset, length)
            if cut is not None:
                self._cut = max(0, min(int(cut), length))
                return self._cut
        return length

    def _end(self, kind: str, applied: int, length: int) -> None:
        if self._cut is not None:
            raise PowerCut(self.ops, kind, applied)


def _header(g: Geometry) -> bytes:
    body = HEADER.pack(HEADER_MAGIC, LAYOUT_VERSION, 0, g.page_size, g.slot_size)
    return body + zlib.crc32(body).to_bytes(4, "little")


def read_header(head: bytes, where: object = "flash") -> Geometry:
    if len(head) < HEADER.size + 4 or head[:8] != HEADER_MAGIC:
        raise FlashError(f"{where} is not a dualmcu flash file (no {HEADER_MAGIC.decode()} header)")
    body, crc = head[: HEADER.size], head[HEADER.size : HEADER.size + 4]
    if zlib.crc32(body).to_bytes(4, "little") != crc:
        raise FlashError(f"{where}: the flash header is damaged")
    _, version, _, page, slot = HEADER.unpack(body)
    if version != LAYOUT_VERSION:
        raise FlashError(f"{where}: flash layout version {version} is not supported")
    return Geometry(page, slot)
