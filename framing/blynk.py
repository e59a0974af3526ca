"""The ``blynk`` framing profile, byte-compatible with the Blynk.NCP UART framing.

    frame = 0xAA ‖ escape(message ‖ crc8(message)) ‖ 0xBB

The escape byte is 0xCC: each of 0x11 0x13 0xAA 0xBB 0xCC (XON, XOFF and the three framing
bytes) is sent as 0xCC followed by the byte XOR 0xFF.  The CRC is CRC-8/SMBUS (poly 0x07,
init 0, not reflected) over the unescaped message, escaped like any other byte.

The decoder is a superset of the real C driver's receiver, never stricter:
- bytes outside a frame are skipped until 0xAA, as the driver does;
- an unescaped 0xAA inside a frame restarts the frame.  The driver stores it as data instead,
  which merges two frames and loses both; a real sender never puts a raw 0xAA inside a frame,
  so restarting only ever saves the second frame;
- any byte after 0xCC is unescaped by XOR 0xFF, as the driver does.  Only a 0xCC directly
  before the 0xBB end byte (nothing left to unescape) is a bad escape.

The encoder respects the driver's limits: it never sends an empty frame (``AA BB`` corrupts
the driver's buffer and loses the next valid frame) nor more than 1536 unescaped message
bytes, the most a driver is obliged to accept.
"""

from __future__ import annotations

import re

import crcmod

from .base import (
    BAD_CRC,
    BAD_ENCODING,
    EMPTY,
    OVERSIZE,
    TRUNCATED,
    CountingDecoder,
    Dropped,
    Frame,
    FramingError,
    check_message,
)

BEGIN, END, ESCAPE = 0xAA, 0xBB, 0xCC
ESCAPED = bytes([0x11, 0x13, BEGIN, END, ESCAPE])
SEND_LIMIT = 1536
DEFAULT_MAX_MESSAGE = SEND_LIMIT

crc8 = crcmod.mkCrcFun(0x107, initCrc=0x00, rev=False, xorOut=0x00)

_ESCAPE_MAP = {bytes([b]): bytes([ESCAPE, b ^ 0xFF]) for b in ESCAPED}
_NEEDS_ESCAPE = re.compile(b"[" + re.escape(ESCAPED) + b"]")
_UNESCAPE_MAP = {bytes([b]): bytes([b ^ 0xFF]) for b in range(256)}
_ESCAPE_PAIR = re.compile(rb"\xcc(.)", re.S)
_DELIMITER = re.compile(rb"[\xaa\xbb]")


def escape(data: bytes) -> bytes:
    return _NEEDS_ESCAPE.sub(lambda m: _ESCAPE_MAP[m.group()], data)


def unescape(raw: bytes) -> bytes | None:
    """Undo the escaping of a frame body; None when it ends in a lone escape byte."""
    if ESCAPE not in raw:
        return raw
    # Escape pairs are consumed left to right and a trailing run of 0xCC starts on a pair
    # boundary, so the body ends in an unpaired escape exactly when that run is odd.
    trailing = len(raw) - len(raw.rstrip(b"\xcc"))
    if trailing % 2:
        return None
    return _ESCAPE_PAIR.sub(lambda m: _UNESCAPE_MAP[m.group(1)], raw)


class BlynkProfile:
    name = "blynk"

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        if max_message < 1:
            raise ValueError("max_message must be at least 1")
        # A larger limit makes the decoder more tolerant; what is sent stays within what
        # every real driver must accept.
        self.max_message = max_message
        self.send_limit = min(max_message, SEND_LIMIT)

    def encode(self, message: bytes) -> bytes:
        check_message(message, self.send_limit)
        return self.encode_unchecked(message)

    def encode_unchecked(self, message: bytes) -> bytes:
        """A frame for any message, even one a receiver must refuse (for fuzzing)."""
        return b"\xaa" + escape(message + bytes([crc8(message)])) + b"\xbb"

    def decoder(self) -> BlynkDecoder:
        return BlynkDecoder(self.max_message)


class BlynkDecoder(CountingDecoder):
    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        super().__init__(max_message)
        self._max_raw = 2 * (max_message + 1)  # every byte escaped, CRC included
        self._inside = False
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame | Dropped]:
        out: list[Frame | Dropped] = []
        pos, n = 0, len(data)
        while pos < n:
            if not self._inside:
                begin = data.find(BEGIN, pos)
                if begin < 0:
                    break
                self._inside = True
                pos = begin + 1
                continue
            m = _DELIMITER.search(data, pos)
            if m is None:
                self._buf += data[pos:]
                if len(self._buf) > self._max_raw:
                    self._drop(out, OVERSIZE, self._buf)
                    self._buf.clear()
                    self._inside = False
                break
            at = m.start()
            self._buf += data[pos:at]
            body = bytes(self._buf)
            self._buf.clear()
            if data[at] == END:
                self._inside = False
                self._finish(body, out)
            elif body:
                self._drop(out, TRUNCATED, body)
            pos = at + 1
        return out

    def close(self) -> list[Frame | Dropped]:
        out: list[Frame | Dropped] = []
        if self._inside and self._buf:
            self._drop(out, TRUNCATED, self._buf)
        self._buf.clear()
        self._inside = False
        return out

    def _finish(self, body: bytes, out: list) -> None:
        if len(body) > self._max_raw:
            return self._drop(out, OVERSIZE, body)
        decoded = unescape(body)
        if decoded is None:
            return self._drop(out, BAD_ENCODING, body)
        if not decoded:
            return self._drop(out, TRUNCATED, body)
        message = decoded[:-1]
        if crc8(message) != decoded[-1]:
            return self._drop(out, BAD_CRC, body)
        if not message:
            return self._drop(out, EMPTY, body)
        if len(message) > self.max_message:
            return self._drop(out, OVERSIZE, body)
        self._deliver(out, message)


__all__ = ["BlynkProfile", "BlynkDecoder", "FramingError", "crc8", "escape", "unescape"]
