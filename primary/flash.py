"""Emulated NOR flash in one file, and the layout the primary MCU gives it.

    page 0                     header: geometry and the device's identity (hardware
                               revision, bootloader version), written when the file is made
    page 1, page 2             boot-state record, copy 0 and copy 1 (see boot.py)
    page 3, page 4             configuration store of slot A, copy 0 and copy 1 (config.py)
    page 5, page 6             configuration store of slot B, copy 0 and copy 1
    slot A                     slot_size bytes, page aligned
    slot B                     slot_size bytes, page aligned
    erase counters             not flash: one little-endian uint32 per page above, the number
                               of times it was erased (layout 3; a layout-2 file gains them,
                               all zero, when a primary first opens it)

The flash behaves like NOR: erase sets a whole page to 0xFF; programming can only clear bits
(the stored byte becomes old AND new), so writing over unerased data corrupts it exactly as
real hardware would.  Every erase and program is one *operation*, numbered from 1; an
``interrupt`` hook sees each before it happens and may cut the power there, optionally after
only part of it was applied (a torn write).  That hook is how power cuts are injected.

Endurance: NOR sectors wear out.  The flash counts the erases of every page (``flash show``
reports them) and, past ``endurance`` erases of a page (100,000 by default, the W25Q128JV's
rated minimum), an erase of it fails like a worn sector's: the page keeps its old bits and
the operation raises FlashError.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from typing import Callable

from dualmcu.image.inputs import kind_of, removed_on_failure

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the port's own lock still guards a session
    fcntl = None  # type: ignore[assignment]

HEADER_MAGIC = b"DMCUFLSH"
# magic, layout version, reserved, page size, slot size, hardware revision, bootloader version
HEADER = struct.Struct("<8sHHII8s16s")
LAYOUT_VERSION = 3
OLD_LAYOUT = 2  # the same layout without erase counters: read, and upgraded by a primary
DEFAULT_ENDURANCE = 100_000  # erase cycles per sector (W25Q128JV datasheet, minimum)
DEFAULT_PAGE = 4096
DEFAULT_SLOT = 1 << 20
META_PAGES = 7  # header, two boot-state copies, two configuration copies per slot


class FlashError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    """What the device is, fixed in its info page: checked before an image is written."""

    hw_rev: str = "A"
    bootloader: str = "1.0.0"

    def __post_init__(self) -> None:
        for what, text, limit in (("hardware revision", self.hw_rev, 8), ("bootloader version", self.bootloader, 16)):
            if not text or len(text.encode()) > limit or not text.isascii() or not text.isprintable() or " " in text:
                raise FlashError(f"{what} {text!r} must be 1 to {limit} printable ASCII characters, no spaces")


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

    def config_offsets(self, slot: int) -> tuple[int, int]:
        first = (3 + 2 * slot) * self.page_size
        return (first, first + self.page_size)

    def slot_offset(self, slot: int) -> int:
        return META_PAGES * self.page_size + slot * self.slot_size

    @property
    def total(self) -> int:
        return META_PAGES * self.page_size + 2 * self.slot_size

    @property
    def pages(self) -> int:
        return self.total // self.page_size

    @property
    def file_size(self) -> int:
        """The flash file: the flash, then its erase counters."""
        return self.total + 4 * self.pages


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

    def __init__(self, store, geometry: Geometry, interrupt: Interrupt | None = None,
                 identity: Identity = Identity(), erases: array | None = None,
                 endurance: int | None = DEFAULT_ENDURANCE, counted: bool = False):
        self._store = store
        self.geometry = geometry
        self.identity = identity
        self.page_size = geometry.page_size
        self.size = geometry.total
        self.interrupt = interrupt
        self.ops = 0
        self.erases = erases if erases is not None else array("I", bytes(4 * geometry.pages))
        self.endurance = endurance  # None: a flash that never wears out
        self._counted = counted  # the store keeps the counters after the flash (a layout-3 file)
        # page -> offset in it from which this object knows the page is erased: set by an
        # erase it made, raised by its programs.  A program above the mark needs no read of the
        # old bytes (1 AND x is x), and a chunk over such pages is one store write.  Nothing
        # is known of a page at the start: the first program of it reads, as before.
        self._erased: dict[int, int] = {}

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def in_memory(cls, geometry: Geometry = Geometry(), interrupt: Interrupt | None = None,
                  identity: Identity = Identity(), endurance: int | None = DEFAULT_ENDURANCE) -> Flash:
        buf = bytearray(b"\xff" * geometry.total)
        head = _header(geometry, identity)
        buf[: len(head)] = head
        return cls(MemoryStore(buf), geometry, interrupt, identity, endurance=endurance)

    @classmethod
    def open(cls, path: str | os.PathLike, geometry: Geometry | None = None, create: bool = True,
             interrupt: Interrupt | None = None, identity: Identity | None = None, lock: bool = True,
             endurance: int | None = DEFAULT_ENDURANCE) -> Flash:
        """Open a flash file; make it (erased, with ``geometry`` and ``identity``) when missing
        and allowed.  An existing file keeps its hardware revision (asking for another is an
        error); a different bootloader version is written to its header, as a bootloader
        update through a debug probe would.

        A device's flash is one chip: with ``lock`` (a primary running on it) the file is
        locked for as long as it is open, and a second primary on it is refused, where two
        would interleave their erases and writes.  The kernel drops the lock when the process
        ends, a killed one too.  Without ``lock`` the file is only read (``flash show``): no
        lock, and a file the user may not write (another user's, a read-only copy) opens."""
        exists = os.path.exists(path)
        kind = kind_of(os.stat(path).st_mode) if exists else None
        if kind is not None:
            # A device or a FIFO would be read as if it were the chip, and never end.
            raise FlashError(f"{path} is {kind}, not a flash file")
        if not exists and not create:
            raise FlashError(f"no flash file at {path}")
        if not exists:
            g = geometry or Geometry()
            tmp = f"{path}.new"
            try:
                with removed_on_failure(tmp):
                    with open(tmp, "wb") as f:
                        f.write(_header(g, identity or Identity()).ljust(g.page_size, b"\xff"))
                        blank = b"\xff" * (1 << 16)
                        left = g.total - g.page_size
                        while left > 0:
                            f.write(blank[: min(left, len(blank))])
                            left -= len(blank)
                        f.write(bytes(4 * g.pages))  # no page erased yet
                    os.replace(tmp, path)  # a half-made file never looks like a flash file
            except OSError as e:
                raise FlashError(f"cannot make the flash file {path} ({g.total} bytes): "
                                 f"{e.strerror or e}") from None
        f = open(path, "r+b" if lock else "rb")
        try:
            if lock and fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise FlashError(f"{path} is in use by another primary: one flash file is one device") from None
            head = f.read(HEADER.size + 4)
            g, ident = read_header(head, path)
            layout = struct.unpack_from("<H", head, 8)[0]
            if identity is not None and identity.hw_rev != ident.hw_rev:
                raise FlashError(f"{path} is a device of hardware revision {ident.hw_rev}, not {identity.hw_rev}: "
                                 "hardware does not change; use another --flash path")
            if geometry is not None and geometry != g:
                raise FlashError(
                    f"{path} has pages of {g.page_size} and slots of {g.slot_size} bytes, "
                    f"not {geometry.page_size} and {geometry.slot_size}; use another --flash path"
                )
            size = os.fstat(f.fileno()).st_size
            want = g.file_size if layout == LAYOUT_VERSION else g.total
            if size != want:
                raise FlashError(f"{path} is {size} bytes, its header says {want}: the file is damaged")
            if lock and (layout == OLD_LAYOUT or (identity is not None and identity.bootloader != ident.bootloader)):
                # A primary brings the file up to date in place: a layout-2 file gains its
                # counters (first, so a crash before the header leaves it a layout-2 file),
                # and a new bootloader version goes into the header, as a bootloader update
                # through a debug probe would put it there.
                if layout == OLD_LAYOUT:
                    os.pwrite(f.fileno(), bytes(4 * g.pages), g.total)
                    os.fsync(f.fileno())
                    layout = LAYOUT_VERSION
                if identity is not None:
                    ident = identity
                os.pwrite(f.fileno(), _header(g, ident), 0)
            erases = None  # a layout-2 file read as it is: no counters, all zero
            if layout == LAYOUT_VERSION:
                erases = array("I", os.pread(f.fileno(), 4 * g.pages, g.total))
                if sys.byteorder != "little":
                    erases.byteswap()
        except Exception:
            f.close()
            raise
        return cls(FileStore(f), g, interrupt, ident, erases, endurance, counted=layout == LAYOUT_VERSION)

    def close(self) -> None:
        self._store.close()

    def snapshot(self) -> Flash:
        """An in-memory copy to try things on (what the next boot would do, say)."""
        buf = bytearray()
        for pos in range(0, self.size, 1 << 20):
            buf += self._store.read(pos, min(1 << 20, self.size - pos))
        return Flash(MemoryStore(buf), self.geometry, None, self.identity, array("I", self.erases), endurance=None)

    # -- operations --------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self._store.read(offset, length)

    def erase_page(self, offset: int) -> None:
        if offset % self.page_size:
            raise FlashError(f"erase at {offset:#x} is not page aligned")
        self._check(offset, self.page_size)
        page = offset // self.page_size
        self._erased.pop(page, None)
        self.erases[page] += 1
        n = self.erases[page]
        if self._counted:
            self._store.write(self.size + 4 * page, n.to_bytes(4, "little"))
        if self.endurance is not None and n > self.endurance:
            self.ops += 1
            raise FlashError(f"erase of the sector at {offset:#x} failed: it is worn out "
                             f"({n} erases, rated for {self.endurance})")
        applied = self._begin("erase", offset, self.page_size)
        self._store.write(offset, b"\xff" * applied)
        self._end("erase", applied, self.page_size)
        self._erased[page] = 0

    def erase(self, offset: int, nbytes: int) -> None:
        """Erase the pages of ``nbytes`` from ``offset``: page by page, as :meth:`erase_page`.
        With no power cut planned and no page worn out, the same bytes and counters go to the
        store in two writes instead of two a page (a 64 KiB block: 32 system calls fewer)."""
        p = self.page_size
        first, count = offset // p, nbytes // p
        whole = not (offset % p or nbytes % p) and self.interrupt is None
        if whole:
            self._check(offset, nbytes)
            counts = self.erases[first : first + count]
            whole = self.endurance is None or max(counts, default=0) < self.endurance
        if not whole:  # a power cut planned, or a page worn out: erase_page says which, and when
            for at in range(offset, offset + nbytes, p):
                self.erase_page(at)
            return
        for i in range(count):
            counts[i] += 1
        self.erases[first : first + count] = counts
        if self._counted:
            if sys.byteorder != "little":
                counts.byteswap()
            self._store.write(self.size + 4 * first, counts.tobytes())
        self._store.write(offset, b"\xff" * nbytes)
        self.ops += count
        for page in range(first, first + count):
            self._erased[page] = 0

    def erase_counts(self) -> dict[str, dict[str, int]]:
        """Erases per region: the most any page of it took, and the total."""
        g, p = self.geometry, self.page_size
        regions = {"header": (0, 1), "boot_state": (1, 3), "config": (3, META_PAGES),
                   "slot_a": (META_PAGES, META_PAGES + g.slot_size // p),
                   "slot_b": (META_PAGES + g.slot_size // p, g.pages)}
        out = {}
        for name, (lo, hi) in regions.items():
            part = self.erases[lo:hi]
            out[name] = {"max": max(part), "total": sum(part)}
        return out

    def program(self, offset: int, data: bytes) -> None:
        """Write ``data``; like NOR flash, bits only go from 1 to 0."""
        self._check(offset, len(data))
        if offset // self.page_size != (offset + len(data) - 1) // self.page_size:
            raise FlashError(f"program of {len(data)} bytes at {offset:#x} crosses a page boundary")
        page, at = divmod(offset, self.page_size)
        mark = self._erased.get(page)
        applied = self._begin("program", offset, len(data))
        new = data[:applied]
        if mark is None or at < mark:
            old = self._store.read(offset, applied)
            if old.count(0xFF) != applied:  # not erased: bits already 0 stay 0
                new = bytes(a & b for a, b in zip(old, new))
        self._store.write(offset, new)
        if mark is not None:
            self._raise_mark(page, max(mark, at + len(data)))
        self._end("program", applied, len(data))

    def write(self, offset: int, data: bytes) -> None:
        """Program ``data`` page by page (the pages must already be erased)."""
        if self.interrupt is None and self._known_erased(offset, len(data)):
            # Every byte lands on bytes this object erased: the same result as page by page,
            # in one store write.
            self._check(offset, len(data))
            p = self.page_size
            first, last = offset // p, (offset + len(data) - 1) // p
            self._store.write(offset, data)
            self.ops += last - first + 1
            for page in range(first, last):
                del self._erased[page]  # programmed to its end
            self._raise_mark(last, (offset + len(data) - 1) % p + 1)
            return
        pos = 0
        while pos < len(data):
            room = self.page_size - (offset + pos) % self.page_size
            self.program(offset + pos, data[pos : pos + room])
            pos += room

    def _known_erased(self, offset: int, length: int) -> bool:
        """Whether this object knows ``length`` bytes from ``offset`` are all erased."""
        if length <= 0:
            return False
        p, erased = self.page_size, self._erased
        page, at = divmod(offset, p)
        last = (offset + length - 1) // p
        if erased.get(page, p) > at:
            return False
        return all(erased.get(q) == 0 for q in range(page + 1, last + 1))

    def _raise_mark(self, page: int, mark: int) -> None:
        if mark >= self.page_size:
            self._erased.pop(page, None)
        else:
            self._erased[page] = mark

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


def _header(g: Geometry, ident: Identity) -> bytes:
    body = HEADER.pack(HEADER_MAGIC, LAYOUT_VERSION, 0, g.page_size, g.slot_size, ident.hw_rev.encode(),
                       ident.bootloader.encode())
    return body + zlib.crc32(body).to_bytes(4, "little")


def read_header(head: bytes, where: object = "flash") -> tuple[Geometry, Identity]:
    if len(head) < 10 or head[:8] != HEADER_MAGIC:
        raise FlashError(f"{where} is not a dualmcu flash file (no {HEADER_MAGIC.decode()} header)")
    (version,) = struct.unpack_from("<H", head, 8)
    if version not in (LAYOUT_VERSION, OLD_LAYOUT):
        # Layout 1 had no configuration pages: its slots sit elsewhere, so it cannot be read
        # as this layout, and guessing would boot garbage.
        raise FlashError(f"{where} has flash layout {version}; this dualmcu reads layout {LAYOUT_VERSION}: "
                         "make a new flash file (delete it, or use another --flash path)")
    if len(head) < HEADER.size + 4:
        raise FlashError(f"{where}: the flash header is cut short")
    body, crc = head[: HEADER.size], head[HEADER.size : HEADER.size + 4]
    if zlib.crc32(body).to_bytes(4, "little") != crc:
        raise FlashError(f"{where}: the flash header is damaged")
    _, _, _, page, slot, hw, boot = HEADER.unpack(body)
    try:
        ident = Identity(hw.rstrip(b"\x00").decode("ascii"), boot.rstrip(b"\x00").decode("ascii"))
    except (UnicodeDecodeError, FlashError):
        raise FlashError(f"{where}: the flash header's identity is damaged") from None
    return Geometry(page, slot), ident
