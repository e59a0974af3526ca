"""What every framing profile shares: frames, drop reasons, the decoder's counters.

Framing profiles: how RPC messages become bytes on a UART and back.

Every profile offers the same small, sans-IO interface:

* ``profile.encode(message) -> bytes`` turns one RPC message into one frame;
* ``profile.decoder()`` returns a streaming :class:`Decoder` whose ``feed(data)`` takes bytes
  split anywhere and returns, in stream order, :class:`Frame` items (a message delivered) and
  :class:`Dropped` items (a frame thrown away, with its reason).

Nothing here touches a port or a clock.  A decoder never raises on input bytes, never yields an
empty message and keeps its memory bounded by the profile's maximum message size, whatever
garbage it is fed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Why a frame was dropped.  The set is closed so that stats tables always have the same rows.
BAD_CRC = "bad_crc"
BAD_ENCODING = "bad_encoding"  # a COBS code pointing past the frame, or a bad blynk escape
OVERSIZE = "oversize"
TRUNCATED = "truncated"  # too short to hold a CRC, or cut off by a restart / end of stream
EMPTY = "empty"  # a frame whose CRC is right but which carries no message
DROP_REASONS = (BAD_CRC, BAD_ENCODING, OVERSIZE, TRUNCATED, EMPTY)

# Dropped frames keep at most this many raw bytes, so that a flood of garbage cannot pin memory
# through the drop reports themselves.
RAW_KEEP = 64


class FramingError(ValueError):
    """A message that cannot be framed (empty, or larger than the profile allows)."""


@dataclass(frozen=True, slots=True)
class Frame:
    message: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str
    raw: bytes  # the first RAW_KEEP bytes of what was thrown away
    size: int  # how many bytes were thrown away


class Decoder(Protocol):
    stats: dict[str, int]

    def feed(self, data: bytes) -> list[Frame | Dropped]: ...

    def close(self) -> list[Frame | Dropped]:
        """End of stream: report a partial frame still buffered, if any."""
        ...


class Profile(Protocol):
    name: str
    max_message: int  # the longest message the decoder takes
    send_limit: int  # the longest message encode() sends

    def encode(self, message: bytes) -> bytes: ...

    def encode_unchecked(self, message: bytes) -> bytes: ...

    def decoder(self) -> Decoder: ...


def new_stats() -> dict[str, int]:
    return {"frames": 0, **{r: 0 for r in DROP_REASONS}}


class CountingDecoder:
    """Stats and drop reports, the same for every profile's decoder."""

    def __init__(self, max_message: int):
        self.max_message = max_message
        self.stats = new_stats()

    def _deliver(self, out: list, message: bytes) -> None:
        self.stats["frames"] += 1
        out.append(Frame(message))

    def _drop(self, out: list, reason: str, raw) -> None:
        self.stats[reason] += 1
        out.append(Dropped(reason, bytes(raw[:RAW_KEEP]), len(raw)))


def check_message(message: bytes, max_message: int) -> None:
    if not message:
        raise FramingError("refusing to frame an empty message")
    if len(message) > max_message:
        raise FramingError(f"message of {len(message)} bytes exceeds the maximum of {max_message}")
