"""How long the emulated primary's flash takes, and what the primary tells the NCP about it.

The defaults are the typical figures of a Winbond W25Q128JV, a serial NOR flash many MCUs use
for their update slots (datasheet, AC electrical characteristics, typical column):

    page program (256 bytes)      0.4 ms   -> 1.6 ms per KiB
    sector erase (4 KiB)           45 ms
    block erase (64 KiB)          150 ms

The primary erases an image's slot ahead of the writes in the flash's idle time, in 64 KiB
blocks, suspending an erase while a chunk is programmed (see ota.py).
``FlashTiming(0, 0, 0)`` is a flash that takes no time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .flash import Flash

BLOCK = 64 * 1024
SECTOR = 4 * 1024


@dataclass(frozen=True)
class FlashTiming:
    program_page: float = 0.0004  # seconds per 256-byte page program
    erase_sector: float = 0.045  # seconds per 4 KiB sector erase
    erase_block: float = 0.150  # seconds per 64 KiB block erase

    def program(self, nbytes: int) -> float:
        return -(-nbytes // 256) * self.program_page

    def erase(self, nbytes: int) -> float:
        """Erase ``nbytes`` from a block-aligned start: whole blocks, then sectors."""
        blocks, rest = divmod(nbytes, BLOCK)
        return blocks * self.erase_block + -(-rest // SECTOR) * self.erase_sector

    @property
    def text(self) -> str:
        """PROG,SECTOR,BLOCK in milliseconds, as --flash-timing takes them: 0.4,45,150."""
        return ",".join(f"{v * 1000:g}" for v in (self.program_page, self.erase_sector, self.erase_block))

    @property
    def program_us_per_kib(self) -> int:
        return round(self.program(1024) * 1e6)

    @property
    def erase_us_per_block(self) -> int:
        return round(self.erase_block * 1e6)


class TimedFlash:
    """The flash as the update drives it: each program and erase takes its time here.

    Operations queue as on a serial NOR chip: one starts when the one before it ends.  The
    OTA receiver asks :attr:`busy_until` when its answers are due; nothing else adds up flash
    time.  An erase may be given the time it has left (the rest of one suspended while a chunk
    was programmed), or none when it ran in time the flash was idle anyway.
    """

    def __init__(self, flash: Flash, timing: FlashTiming):
        self.flash = flash
        self.timing = timing
        self.busy_until = 0.0  # when the flash finishes what it was given

    def free_at(self, now: float) -> float:
        """When the flash can start on something given now."""
        return max(now, self.busy_until)

    def program(self, offset: int, data: bytes, now: float) -> float:
        """Program ``data`` at ``offset``; when it is done."""
        self.flash.write(offset, data)
        return self._occupy(now, self.timing.program(len(data)))

    def erase(self, offset: int, nbytes: int, now: float, seconds: float | None = None) -> float:
        """Erase the pages of ``nbytes`` from ``offset``, taking ``seconds`` (default: the
        erase's full time from the timing); when it is done."""
        self.flash.erase(offset, nbytes)
        return self._occupy(now, self.timing.erase(nbytes) if seconds is None else seconds)

    def _occupy(self, now: float, seconds: float) -> float:
        self.busy_until = self.free_at(now) + seconds
        return self.busy_until
