"""Argument types of the Blynk.NCP RPC, each a codec over one value.

All multi-byte values are little-endian.  String is UTF-8 followed by one NUL and has no length
prefix; Binary is a u16 length followed by that many bytes.

Strings are decoded with ``surrogateescape`` so that bytes which are not valid UTF-8 (firmware
does send them) survive a decode/encode round trip unchanged instead of being lost.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable


class ArgsError(ValueError):
    """Bytes that do not decode as the expected arguments (status 0x15 on the wire)."""


@dataclass(frozen=True)
class Type:
    name: str  # as the interface file spells it: UInt16, String, ...
    py: type  # the Python type of a value
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes, int], tuple[Any, int]]  # (buffer, offset) -> (value, next offset)
    parse: Callable[[str], Any]  # a value typed by a person on the command line
    lo: int | None = None  # integer range, for checks and strategies
    hi: int | None = None

    def __repr__(self) -> str:
        return self.name

    def check(self, value: Any) -> Any:
        """Return ``value`` if it fits this type, else raise ArgsError saying why."""
        if self.py is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArgsError(f"{self.name} needs an integer, got {value!r}")
            if not self.lo <= value <= self.hi:
                raise ArgsError(f"{value} is outside {self.name} ({self.lo}..{self.hi})")
        elif self.py is bool:
            if value not in (True, False, 0, 1):
                raise ArgsError(f"Bool needs true or false, got {value!r}")
            value = bool(value)
        elif self.py is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ArgsError(f"Float32 needs a number, got {value!r}")
            value = float(value)
        elif self.py is str:
            if not isinstance(value, str):
                raise ArgsError(f"String needs text, got {value!r}")
            if "\x00" in value:
                raise ArgsError("a String cannot contain NUL: it ends the string on the wire")
        elif self.py is bytes:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ArgsError(f"Binary needs bytes, got {value!r}")
            value = bytes(value)
            if len(value) > 0xFFFF:
                raise ArgsError(f"Binary of {len(value)} bytes does not fit its u16 length")
        return value


def _fixed(name: str, fmt: str, lo: int, hi: int) -> Type:
    s = struct.Struct("<" + fmt)
    size = s.size
    pack, unpack_from = s.pack, s.unpack_from

    def decode(buf: bytes, pos: int) -> tuple[int, int]:
        if pos + size > len(buf):
            raise ArgsError(f"{name} needs {size} bytes at offset {pos}, {len(buf) - pos} left")
        return unpack_from(buf, pos)[0], pos + size

    return Type(name, int, pack, decode, lambda text: int(text, 0), lo, hi)


def _decode_bool(buf: bytes, pos: int) -> tuple[bool, int]:
    if pos >= len(buf):
        raise ArgsError(f"Bool needs 1 byte at offset {pos}")
    # The C driver reads any non-zero byte as true; so does this decoder.
    return buf[pos] != 0, pos + 1


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ArgsError(f"not a Bool: {text!r} (use true/false or 1/0)")


_f32 = struct.Struct("<f")


def _decode_f32(buf: bytes, pos: int) -> tuple[float, int]:
    if pos + 4 > len(buf):
        raise ArgsError(f"Float32 needs 4 bytes at offset {pos}")
    return _f32.unpack_from(buf, pos)[0], pos + 4


def _encode_str(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape") + b"\x00"


def _decode_str(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\x00", pos)
    if end < 0:
        raise ArgsError(f"String at offset {pos} has no terminating NUL")
    return buf[pos:end].decode("utf-8", "surrogateescape"), end + 1


def _encode_bin(value: bytes) -> bytes:
    return len(value).to_bytes(2, "little") + bytes(value)


def _decode_bin(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(buf):
        raise ArgsError(f"Binary length needs 2 bytes at offset {pos}")
    n = buf[pos] | buf[pos + 1] << 8
    end = pos + 2 + n
    if end > len(buf):
        raise ArgsError(f"Binary of {n} bytes at offset {pos} runs past the end ({len(buf)})")
    return bytes(buf[pos + 2 : end]), end


def _parse_bin(text: str) -> bytes:
    t = text.strip()
    if t.startswith(("0x", "hex:")):
        return bytes.fromhex(t.split(":", 1)[-1] if t.startswith("hex:") else t[2:])
    return t.encode("utf-8")


Bool = Type("Bool", bool, lambda v: b"\x01" if v else b"\x00", _decode_bool, _parse_bool)
UInt8 = _fixed("UInt8", "B", 0, 0xFF)
UInt16 = _fixed("UInt16", "H", 0, 0xFFFF)
UInt32 = _fixed("UInt32", "I", 0, 0xFFFFFFFF)
UInt64 = _fixed("UInt64", "Q", 0, 0xFFFFFFFFFFFFFFFF)
Int8 = _fixed("Int8", "b", -0x80, 0x7F)
Int16 = _fixed("Int16", "h", -0x8000, 0x7FFF)
Int32 = _fixed("Int32", "i", -0x80000000, 0x7FFFFFFF)
Int64 = _fixed("Int64", "q", -0x8000000000000000, 0x7FFFFFFFFFFFFFFF)
Float32 = Type("Float32", float, _f32.pack, _decode_f32, float)
String = Type("String", str, _encode_str, _decode_str, str)
Binary = Type("Binary", bytes, _encode_bin, _decode_bin, _parse_bin)

ALL_TYPES = (Bool, UInt8, UInt16, UInt32, UInt64, Int8, Int16, Int32, Int64, Float32, String, Binary)
BY_NAME = {t.name: t for t in ALL_TYPES}
