"""Decoding captured UART bytes into readable RPC records (the ``decode`` command)."""

from __future__ import annotations

import heapq
import re
from typing import IO, Any, Iterable, Iterator

from dualmcu.framing import Dropped, get_profile
from dualmcu.rpc.interface import INTERFACE, Function, Interface
from dualmcu.rpc.message import Invoke, Malformed, Result, parse, status_name
from dualmcu.rpc.types import ArgsError


def jsonable(value: Any) -> Any:
    """Arguments as JSON can carry them: bytes become lowercase hex."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


NOT_HEX = "not a hex string: use pairs of hex digits, spaces allowed"


def parse_hex(text: str) -> bytes:
    return b"".join(hex_blocks([text.encode()]))


def looks_like_hex(data: bytes) -> bool:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    stripped = "".join(text.split())
    if stripped[:2].lower() == "0x":
        stripped = stripped[2:]
    return bool(stripped) and all(c in "0123456789abcdefABCDEF:," for c in stripped)


READ_BLOCK = 1 << 16


def blocks(f: IO[bytes]) -> Iterator[bytes]:
    """A binary stream in blocks, as they can be read: a capture is decoded as it is read, so
    that one of any length, or a device that never ends (a port, a FIFO), takes bounded
    memory and shows each record as soon as its frame has ended."""
    while True:
        # read1: what one read gives (a pipe's or a FIFO's bytes as they come), never waiting
        # to fill the block; a raw file object has only read, which does the same.
        block = f.read1(READ_BLOCK) if hasattr(f, "read1") else f.read(READ_BLOCK)
        if not block:
            return
        yield block


def hex_blocks(texts: Iterable[bytes]) -> Iterator[bytes]:
    """Hex text (spaces, colons and commas allowed, one 0x in front) in blocks, as bytes:
    a pair of digits split between two blocks is joined."""
    carry = ""
    first = True
    for raw in texts:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(NOT_HEX) from None
        cleaned = carry + "".join(text.split()).replace(":", "").replace(",", "")
        if first:  # the 0x in front, once two characters have come
            if len(cleaned) < 2:
                carry = cleaned
                continue
            first = False
            if cleaned[:2].lower() == "0x":
                cleaned = cleaned[2:]
        cut = len(cleaned) - len(cleaned) % 2
        carry = cleaned[cut:]
        try:
            yield bytes.fromhex(cleaned[:cut])
        except ValueError:
            raise ValueError(NOT_HEX) from None
    if carry:
        raise ValueError(NOT_HEX)


def decode_capture(data: bytes | Iterable[bytes], framing: str,
                   interface: Interface = INTERFACE) -> Iterator[dict]:
    """Every frame of a capture as a record, in order, with RESULTs typed by their request.
    ``data``: the capture's bytes, or its blocks as they are read (records come as each
    frame ends).

    A capture may hold both directions; msg_ids are per side, so the request a RESULT answers is
    taken to be the latest INVOKE with that msg_id not yet answered.
    """
    profile = get_profile(framing, max_message=0xFFFF)
    dec = profile.decoder()
    waiting: dict[int, Function | None] = {}
    for block in [data] if isinstance(data, (bytes, bytearray)) else data:
        yield from _records(dec.feed(block), waiting, interface)
    yield from _records(dec.close(), waiting, interface)


def _records(items: list, waiting: dict[int, Function | None],
             interface: Interface) -> Iterator[dict]:
    for item in items:
        if isinstance(item, Dropped):
            yield {"kind": "error", "reason": item.reason, "size": item.size, "raw": item.raw.hex()}
            continue
        yield _record(parse(item.message), item.message, waiting, interface)


# Bytes as a log saw them: (time or None, position in the log, bytes).  The position orders
# the two directions where the log's times (to the millisecond) tie.
Chunks = list[tuple["float | None", int, bytes]]


def decode_directions(one: "bytes | Chunks", other: "bytes | Chunks", framing: str,
                      interface: Interface = INTERFACE, names: tuple[str, str] = ("one", "other")) -> Iterator[dict]:
    """Both directions of a link, captured apart: each RESULT is typed by the INVOKE that went
    the other way.  Both sides number their calls from 1, so pairing within one direction
    would give plausible but wrong names.  Each record has ``dir`` set to the name of its
    direction.

    Chunks with times (a spy log) give each record the time ``t`` its frame ended; the records
    of both directions come in time order, and a RESULT answers the latest INVOKE of its msg_id
    from the other direction not yet answered.  A side that reboots numbers its calls from 1
    again, so an earlier call with the same msg_id (answered or lost) is not the one answered.
    Two files of plain bytes have no common clock: the records of ``one`` come first, then
    those of ``other``, and a RESULT answers the earliest INVOKE of its msg_id not yet
    answered (the best guess without times)."""
    timed = not isinstance(one, (bytes, bytearray)) and not isinstance(other, (bytes, bytearray))
    # Plain bytes have no time; positions 0 and 1 put the first file's records before the other's.
    one, other = ([(None, k, d)] if isinstance(d, (bytes, bytearray)) else d for k, d in enumerate((one, other)))
    streams = {names[0]: _timed_frames(one, framing), names[1]: _timed_frames(other, framing)}
    waiting: dict[str, dict] = {name: {} for name in names}  # INVOKEs of each direction
    if not timed:
        for name, items in streams.items():
            asked: dict[int, list] = {}
            for _, _, item in items:
                msg = parse(item.message) if not isinstance(item, Dropped) else None
                if isinstance(msg, Invoke):
                    asked.setdefault(msg.msg_id, []).append(interface.get(msg.uid))
            waiting[name] = _FirstUnanswered(asked)
    crossed = heapq.merge(*([(seq, k, t, item) for t, seq, item in streams[name]] for k, name in enumerate(names)),
                          key=lambda x: (x[0], x[1]))
    for _, k, t, item in crossed:
        name, peer = names[k], names[1 - k]
        if isinstance(item, Dropped):
            rec = {"kind": "error", "reason": item.reason, "size": item.size, "raw": item.raw.hex()}
        else:
            msg = parse(item.message)
            rec = _record(msg, item.message, waiting[peer], interface, track=False)
            if timed and isinstance(msg, Invoke):
                waiting[name][msg.msg_id] = interface.get(msg.uid)  # the latest with this msg_id
        rec["dir"] = name
        if t is not None:
            rec["t"] = t
        yield rec


_SPY_LINE = re.compile(r"^(\d+\.\d+) (RX|TX)\s+([0-9A-F]{4})  (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_spy(text: str) -> tuple[Chunks, Chunks]:
    """A pyserial ``spy://`` log (its default hexdump format) as the bytes the port sent (TX)
    and received (RX), each line's bytes with its time.  Control lines (RTS, DTR, flushes)
    are skipped.  A log in ``?raw`` format mixes both directions and cannot be split."""
    tx: Chunks = []
    rx: Chunks = []
    seen = 0
    for n, line in enumerate(text.splitlines(), 1):
        line = _ANSI.sub("", line).rstrip("\n")
        m = _SPY_LINE.match(line)
        if not m:
            continue
        # The row is 16 "XX " cells with one more space after the eighth, then the ASCII:
        # only the first 49 characters are bytes.
        cells = m.group(4)[:49].split()
        try:
            data = bytes(int(c, 16) for c in cells if len(c) == 2)
        except ValueError:
            raise ValueError(f"line {n} of the spy log is not a hexdump row: {line[:60]!r}") from None
        (tx if m.group(2) == "TX" else rx).append((float(m.group(1)), n, data))
        seen += 1
    if not seen and text.strip():
        raise ValueError("no TX or RX lines: not a spy:// log in its hexdump format "
                         "(a ?raw log mixes both directions and cannot be split)")
    return tx, rx


def _timed_frames(chunks: Chunks, framing: str) -> list:
    """(time, position, item) for each frame or drop: when and where the chunk that ended it
    was seen."""
    dec = get_profile(framing, max_message=0xFFFF).decoder()
    out = []
    for t, seq, chunk in chunks:
        out += [(t, seq, item) for item in dec.feed(chunk)]
    last = chunks[-1][:2] if chunks else (None, 0)
    return out + [(*last, item) for item in dec.close()]


class _FirstUnanswered(dict):
    """msg_id -> the earliest INVOKE of the other direction not yet answered."""

    def __init__(self, asked: dict[int, list]):
        super().__init__()
        self.asked = asked

    def pop(self, msg_id, default=None):
        queue = self.asked.get(msg_id)
        return queue.pop(0) if queue else default


def _record(msg, payload: bytes, waiting: dict, interface: Interface, track: bool = True) -> dict:
    rec: dict[str, Any] = {"kind": None, "uid": None, "name": None, "msg_id": None, "args": None, "status": None}
    if isinstance(msg, Malformed):
        rec.update(kind="error", reason=msg.reason)
    elif isinstance(msg, Result):
        fn = waiting.pop(msg.msg_id, None)
        rec.update(kind="result", msg_id=msg.msg_id, status=status_name(msg.status))
        if fn is not None:
            rec.update(uid=fn.uid, name=fn.name)
        if msg.status == 0 and fn is not None:
            try:
                rec["args"] = fn.decode_result(msg.data)
            except ArgsError as e:
                rec.update(reason=f"results do not decode: {e}", data=msg.data.hex())
        elif msg.data or fn is None:
            rec["data"] = msg.data.hex()
    else:
        fn = interface.get(msg.uid)
        kind = "invoke" if isinstance(msg, Invoke) else "oneway"
        rec.update(kind=kind, uid=msg.uid, name=fn.name if fn else None)
        if isinstance(msg, Invoke):
            rec["msg_id"] = msg.msg_id
            if track:
                waiting[msg.msg_id] = fn
        if fn is None:
            rec.update(reason="unknown uid", data=msg.args.hex())
        else:
            try:
                rec["args"] = fn.decode_args(msg.args)
            except ArgsError as e:
                rec.update(reason=f"bad args: {e}", data=msg.args.hex())
    rec["raw"] = payload.hex()
    return rec


def _show(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex() if value else "''"
    return repr(value) if isinstance(value, str) else str(value)


def format_record(rec: dict) -> str:
    kind = rec["kind"]
    if kind == "error" and rec.get("uid") is None and "size" in rec:
        where = (f"{rec['t']:10.3f} " if "t" in rec else "") + (f"[{rec['dir']}] " if rec.get("dir") else "")
        return f"{where}dropped  {rec['reason']:<14} {rec['size']} bytes  {rec['raw']}"
    if kind == "error":
        return f"error    {rec['reason']:<14} {rec['raw']}"
    parts = ([f"{rec['t']:10.3f}"] if "t" in rec else []) + ([f"[{rec['dir']}]"] if rec.get("dir") else [])
    parts.append(f"{kind:<8}")
    parts.append(f"0x{rec['uid']:04X}" if rec["uid"] is not None else "------")
    parts.append(f"{rec['name'] or '?':<26}")
    if rec["msg_id"] is not None:
        parts.append(f"msg_id={rec['msg_id']}")
    if rec["status"] is not None:
        parts.append(f"status={rec['status']}")
    if rec["args"]:
        parts.append(" ".join(f"{k}={_show(v)}" for k, v in rec["args"].items()))
    if rec.get("data"):
        parts.append(f"data=0x{rec['data']}")
    if rec.get("reason"):
        parts.append(f"({rec['reason']})")
    return " ".join(parts)
