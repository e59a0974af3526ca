"""RPC messages: the layer between a frame's payload and a function call.

    INVOKE  u16 0x67BC · u16 uid · u16 msg_id · args
    RESULT  u16 0xA512 · u16 msg_id · u8 status · out-values then return value
    ONEWAY  u16 0x1CF3 · u16 uid · args            (never answered)

All little-endian.  Other opcodes are reserved or unknown and are ignored by receivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

OP_INVOKE = 0x67BC
OP_RESULT = 0xA512
OP_ONEWAY = 0x1CF3
RESERVED_OPS = (0xD674, 0x56E1, 0xD8AB, 0x3CAE, 0xED0B, 0x1FB5)


class Status(IntEnum):
    OK = 0x00
    GENERIC = 0x10
    TIMEOUT = 0x11  # local only: no RESULT in time
    MEMORY = 0x12
    UNKNOWN_UID = 0x13
    ARGS_WRITE = 0x14
    ARGS_READ = 0x15  # bad or leftover argument bytes: the only error the C driver sends
    RESULTS_WRITE = 0x16
    RESULTS_READ = 0x17  # local only: the RESULT's values did not decode


def status_name(code: int) -> str:
    try:
        return Status(code).name.lower()
    except ValueError:
        return f"0x{code:02x}"


@dataclass(frozen=True, slots=True)
class Invoke:
    uid: int
    msg_id: int
    args: bytes = b""

    def encode(self) -> bytes:
        return _HDR3(OP_INVOKE, self.uid, self.msg_id) + self.args


@dataclass(frozen=True, slots=True)
class Result:
    msg_id: int
    status: int
    data: bytes = b""

    def encode(self) -> bytes:
        return _HDR2(OP_RESULT, self.msg_id) + bytes([self.status]) + self.data


@dataclass(frozen=True, slots=True)
class Oneway:
    uid: int
    args: bytes = b""

    def encode(self) -> bytes:
        return _HDR2(OP_ONEWAY, self.uid) + self.args


@dataclass(frozen=True, slots=True)
class Malformed:
    """A payload that is no message: too short for its header, or an unknown opcode."""

    reason: str
    payload: bytes


Message = Invoke | Result | Oneway


def _HDR2(a: int, b: int) -> bytes:
    return a.to_bytes(2, "little") + b.to_bytes(2, "little")


def _HDR3(a: int, b: int, c: int) -> bytes:
    return a.to_bytes(2, "little") + b.to_bytes(2, "little") + c.to_bytes(2, "little")


def parse(payload: bytes) -> Message | Malformed:
    if len(payload) < 2:
        return Malformed("short", payload)
    op = payload[0] | payload[1] << 8
    if op == OP_INVOKE:
        if len(payload) < 6:
            return Malformed("short", payload)
        uid = payload[2] | payload[3] << 8
        return Invoke(uid, payload[4] | payload[5] << 8, payload[6:])
    if op == OP_RESULT:
        if len(payload) < 5:
            return Malformed("short", payload)
        return Result(payload[2] | payload[3] << 8, payload[4], payload[5:])
    if op == OP_ONEWAY:
        if len(payload) < 4:
            return Malformed("short", payload)
        return Oneway(payload[2] | payload[3] << 8, payload[4:])
    return Malformed("reserved_opcode" if op in RESERVED_OPS else "unknown_opcode", payload)
