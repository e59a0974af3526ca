"""Decoding captured UART bytes into readable RPC records (the ``decode`` command)."""

from __future__ import annotations

from typing import Any, Iterator

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


def parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "").replace(",", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError("not a hex string: use pairs of hex digits, spaces allowed") from None


def looks_like_hex(data: bytes) -> bool:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    stripped = "".join(text.split())
    return bool(stripped) and all(c in "0123456789abcdefABCDEF:," for c in stripped)


def decode_capture(data: bytes, framing: str, interface: Interface = INTERFACE) -> Iterator[dict]:
    """Every frame of a capture as a record, in order, with RESULTs typed by their request.

    A capture may hold both directions; msg_ids are per side, so the request a RESULT answers is
    taken to be the latest INVOKE with that msg_id not yet answered.
    """
    profile = get_profile(framing, max_message=0xFFFF)
    dec = profile.decoder()
    waiting: dict[int, Function | None] = {}
    for item in dec.feed(data) + dec.close():
        if isinstance(item, Dropped):
            yield {"kind": "error", "reason": item.reason, "size": item.size, "raw": item.raw.hex()}
            continue
        yield _record(parse(item.message), item.message, waiting, interface)


def decode_directions(one: bytes, other: bytes, framing: str, interface: Interface = INTERFACE) -> Iterator[dict]:
    """Both directions of a link, captured apart: each RESULT is typed by the INVOKE that went
    the other way.  Both sides number their calls from 1, so pairing within one direction
    would give plausible but wrong names.  Records of ``one`` come first, then ``other``, each
    with ``dir`` set to "one" or "other" (a capture of each direction has no common clock)."""
    streams = {"one": _frames(one, framing), "other": _frames(other, framing)}
    asked: dict[str, dict[int, list]] = {name: {} for name in streams}
    for name, items in streams.items():
        for item in items:
            msg = parse(item.message) if not isinstance(item, Dropped) else None
            if isinstance(msg, Invoke):
                asked[name].setdefault(msg.msg_id, []).append(interface.get(msg.uid))
    for name, items in streams.items():
        answers = _FirstUnanswered(asked["other" if name == "one" else "one"])
        for item in items:
            if isinstance(item, Dropped):
                rec = {"kind": "error", "reason": item.reason, "size": item.size, "raw": item.raw.hex()}
            else:
                rec = _record(parse(item.message), item.message, answers, interface, track=False)
            rec["dir"] = name
            yield rec


class _FirstUnanswered(dict):
    """msg_id -> the earliest INVOKE of the other direction not yet answered."""

    def __init__(self, asked: dict[int, list]):
        super().__init__()
        self.asked = asked

    def pop(self, msg_id, default=None):
        queue = self.asked.get(msg_id)
        return queue.pop(0) if queue else default


def _frames(data: bytes, framing: str) -> list:
    dec = get_profile(framing, max_message=0xFFFF).decoder()
    return dec.feed(data) + dec.close()


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
        return f"dropped  {rec['reason']:<14} {rec['size']} bytes  {rec['raw']}"
    if kind == "error":
        return f"error    {rec['reason']:<14} {rec['raw']}"
    parts = ([f"[{rec['dir']}]"] if rec.get("dir") else []) + [f"{kind:<8}"]
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
