"""The native framing profile: COBS over (message ‖ CRC-32), each frame ended by 0x00.

    frame = COBS(message ‖ crc32(message) as 4 bytes little-endian) ‖ 0x00

COBS guarantees that 0x00 appears nowhere but at the end of a frame, so a receiver that joins
mid-stream, or loses bytes to noise, is back in step at the next 0x00.  A sender may put an
extra 0x00 before a frame to flush whatever partial frame noise left in the receiver; an empty
frame (two 0x00 in a row) is therefore not an error and not counted.  This sender does so by
default: for one byte a frame, damage to a frame's final 0x00 (a flipped or lost delimiter)
costs that frame alone instead of that frame and the next.

The CRC is zlib's CRC-32 (IEEE 802.3).  Appending it little-endian gives the whole decoded
frame the fixed CRC-32 residue 0x2144DF1C, so a receiver checks a frame with one crc32() call
over it, without slicing the CRC off first.
"""

from __future__ import annotations

import zlib

from cobs import cobs as _cobs

from .base import (
    BAD_CRC,
    BAD_ENCODING,
    EMPTY,
    OVERSIZE,
    TRUNCATED,
    CountingDecoder,
    Dropped,
    Frame,
    check_message,
)

# Room for a write of the largest chunk otaUpdateStart can ask for (a UInt16: 65535 bytes, and
# the write's 16 bytes around it).  Between two dualmcu sides larger chunks are the main lever
# on an unpaced link: each chunk costs both sides a fixed amount of work whatever its size.
DEFAULT_MAX_MESSAGE = 0xFFFF + 16
CRC_RESIDUE = 0x2144DF1C

_cobs_encode = _cobs.encode
_cobs_decode = _cobs.decode
_DecodeError = _cobs.DecodeError


def max_encoded(max_message: int) -> int:
    """The longest COBS body (without its 0x00) a message of ``max_message`` bytes can need."""
    n = max_message + 4
    return n + n // 254 + 1


class CobsProfile:
    name = "cobs"

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE, flush_before: bool = True):
        if max_message < 1:
            raise ValueError("max_message must be at least 1")
        self.max_message = max_message
        self.send_limit = max_message
        self._lead = b"\x00" if flush_before else b""

    def encode(self, message: bytes) -> bytes:
        check_message(message, self.max_message)
        return self.encode_unchecked(message)

    def encode_unchecked(self, message: bytes) -> bytes:
        """A frame for any message, even one a receiver must refuse (for fuzzing)."""
        body = _cobs_encode(message + zlib.crc32(message).to_bytes(4, "little"))
        return self._lead + body + b"\x00"

    def decoder(self) -> CobsDecoder:
        return CobsDecoder(self.max_message)


class CobsDecoder(CountingDecoder):
    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        super().__init__(max_message)
        self._max_raw = max_encoded(max_message)
        self._buf = bytearray()
        # Set after an oversize partial frame was reported: everything up to the next 0x00
        # belongs to it and is thrown away without being stored.
        self._skipping = False

    def feed(self, data: bytes) -> list[Frame | Dropped]:
        out: list[Frame | Dropped] = []
        start, n = 0, len(data)
        while start < n:
            end = data.find(0, start)
            if end < 0:
                if not self._skipping:
                    self._buf += data[start:]
                    if len(self._buf) > self._max_raw:
                        self._drop(out, OVERSIZE, self._buf)
                        self._buf.clear()
                        self._skipping = True
                break
            if self._skipping:
                self._skipping = False
            elif self._buf:
                self._buf += data[start:end]
                frame = bytes(self._buf)
                self._buf.clear()
                self._decode(frame, out)
            elif end > start:
                self._decode(data[start:end], out)
            start = end + 1
        return out

    def close(self) -> list[Frame | Dropped]:
        out: list[Frame | Dropped] = []
        if self._buf:
            self._drop(out, TRUNCATED, self._buf)
            self._buf.clear()
        self._skipping = False
        return out

    def _decode(self, body: bytes, out: list) -> None:
        if len(body) > self._max_raw:
            return self._drop(out, OVERSIZE, body)
        try:
            decoded = _cobs_decode(body)
        except _DecodeError:
            return self._drop(out, BAD_ENCODING, body)
        if len(decoded) < 4:
            return self._drop(out, TRUNCATED, body)
        if zlib.crc32(decoded) != CRC_RESIDUE:
            return self._drop(out, BAD_CRC, body)
        if len(decoded) == 4:
            return self._drop(out, EMPTY, body)
        if len(decoded) - 4 > self.max_message:
            return self._drop(out, OVERSIZE, body)
        self._deliver(out, decoded[:-4])
