"""A record kept in two flash pages, so that a power cut never loses it.

Each copy carries a sequence number and a CRC.  A reader takes the valid copy with the higher
sequence number.  A writer always overwrites the *other* copy (erase, then program), so a
power cut at any point of a write damages at most the copy being written, and the previous
record survives in the copy that was not touched.  The boot state and each slot's
configuration store are kept this way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Generic, Protocol, TypeVar

from .flash import Flash


class Record(Protocol):
    seq: int

    def encode(self) -> bytes: ...


R = TypeVar("R", bound=Record)


class Redundant(Generic[R]):
    """``remember``: keep the last record decoded from each copy, with the bytes it came from,
    and decode a copy again only when its bytes differ.  Only for a record nobody can change
    in place (the boot state): a receiver's checkpoint reads both copies twice, and one of
    them changed since the last checkpoint."""

    def __init__(self, flash: Flash, offsets: tuple[int, int], decode: Callable[[bytes], R | None],
                 remember: bool = False):
        self.flash = flash
        self.offsets = offsets
        self.decode = decode
        self._decoded: dict[int, tuple[bytes, R | None]] | None = {} if remember else None

    def copies(self) -> list[R | None]:
        page = self.flash.page_size
        known = self._decoded
        if known is None:
            return [self.decode(self.flash.read(off, page)) for off in self.offsets]
        out = []
        for off in self.offsets:
            raw = self.flash.read(off, page)
            last = known.get(off)
            if last is None or last[0] != raw:
                last = known[off] = (raw, self.decode(raw))
            out.append(last[1])
        return out

    def load(self) -> R | None:
        valid = [r for r in self.copies() if r is not None]
        return max(valid, key=lambda r: r.seq) if valid else None

    def store(self, record: R) -> R:
        valid = [(r.seq, i) for i, r in enumerate(self.copies()) if r is not None]
        newest = max(valid)[1] if valid else 1
        record = replace(record, seq=max((s for s, _ in valid), default=0) + 1)
        data = record.encode()
        if len(data) > self.flash.page_size:
            raise ValueError(f"a record of {len(data)} bytes does not fit a {self.flash.page_size}-byte page")
        off = self.offsets[1 - newest]
        self.flash.erase_page(off)
        self.flash.program(off, data)
        return record
