"""One side of the RPC link, sans-IO: bytes and the current time in, bytes and deadlines out.

An :class:`Endpoint` owns a framing codec and a table of local handlers.  The I/O shell around
it does four things and nothing else:

    endpoint.receive(data, now)      # bytes read from the port
    endpoint.tick(now)               # when the clock reaches endpoint.next_deadline()
    port.write(endpoint.data_to_send())
    endpoint.call(...) / endpoint.notify(...)   # from the side's own logic

Rules (as the Blynk.NCP C driver behaves, unless noted):

* ``msg_id`` is a per-side counter from 1 that wraps at 16 bits; this endpoint also skips 0 and
  any id still pending, so a late RESULT can never complete the wrong call.
* A RESULT completes the pending call with its msg_id.  A RESULT for an id that is not pending
  (never sent, already answered, or already timed out) is dropped and counted as stale.
* A call with no RESULT by its deadline (the table's timeout unless given) completes with
  status 0x11 (timeout, local only).  A RESULT whose values do not decode completes it with
  0x17 (results read, local only).
* INVOKEs and ONEWAYs that arrive while calls are pending are dispatched at once: the primary
  calls ``blynk_otaUpdateGetCRC32`` from inside its ``client_otaUpdateFinish`` handler while the
  NCP is still waiting for the Finish RESULT.
* An INVOKE whose arguments do not decode exactly (short, or bytes left over) is answered with
  status 0x15.  A uid this side does not serve gets no answer, as from the C driver, unless
  ``answer_unknown`` is set, in which case it gets 0x13.
* A handler that raises is answered with 0x10 and logged; the endpoint carries on.
* A handler may return :data:`DEFER` and answer later with :meth:`Endpoint.reply`, e.g. after
  calls of its own have completed, or with ``reply(..., at=when)``: the RESULT is encoded at
  once and goes out when the clock reaches ``when`` (an answer due when the flash is done), so
  the moment it is due costs a write and no work.

Callbacks (``on_done`` of a call, handlers) run synchronously inside ``receive``/``tick``; they
may call and reply freely, which only appends to the output buffer.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from dualmcu.framing import Dropped, Frame, FramingError, Profile
from dualmcu.rpc.interface import INTERFACE, INVOKE, ONEWAY, Function, Interface
from dualmcu.rpc.events import Event
from dualmcu.rpc.message import Invoke, Malformed, Oneway, Result, Status, parse
from dualmcu.rpc.types import ArgsError

log = logging.getLogger("dualmcu.rpc")

DEFER = object()  # returned by a handler that will answer later with Endpoint.reply()
ECHO_HINT = ("this side hears its own calls: the port echoes what it sends (TX wired to RX, "
             "local echo in the adapter or an RS-485 transceiver, or loop://)")


def earliest(*deadlines: float | None) -> float | None:
    """The first of some deadlines, None among them meaning none; None when there is none."""
    known = [d for d in deadlines if d is not None]
    return min(known) if known else None


@dataclass(eq=False)
class Call:
    """A call this side made; ``status`` is None until it completes."""

    fn: Function
    msg_id: int
    args: dict[str, Any]
    sent_at: float
    deadline: float | None
    on_done: Callable[[Call], None] | None = None
    status: int | None = None
    values: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status is not None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def result(self) -> Any:
        """The return value (None for status-only functions or failed calls)."""
        return (self.values or {}).get("return")


@dataclass(eq=False)
class Incoming:
    """An INVOKE or ONEWAY from the peer, handed to a local handler."""

    fn: Function
    msg_id: int | None  # None for a ONEWAY
    args: dict[str, Any]
    received_at: float
    replied: bool = False
    # Run right after the RESULT is queued, e.g. to switch the baud rate only once the
    # answer has been sent at the old one.
    then: Callable[[], None] | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class Framed:
    """An INVOKE framed ahead of its call, for the msg_id the call is expected to get
    (see :meth:`Endpoint.frame_ahead`)."""

    uid: int
    msg_id: int
    args: bytes  # the encoded arguments it carries
    frame: bytes


Handler = Callable[[Incoming], Any]


class Endpoint:
    def __init__(
        self,
        side: str,
        profile: Profile,
        *,
        interface: Interface = INTERFACE,
        answer_unknown: bool = False,
        on_event: Callable[..., None] | None = None,
        blocking: bool = False,
    ):
        self.side = side
        # blocking: serve nothing while an own call waits for its answer, as a driver that
        # calls and then waits in a loop does; what arrives meanwhile is served afterwards.
        self.blocking = blocking
        self._held: list[Invoke | Oneway] = []
        self.profile = profile
        self.interface = interface
        self.answer_unknown = answer_unknown
        self.on_event = on_event or (lambda kind, **fields: None)
        self._encode = profile.encode
        self._decoder = profile.decoder()
        self._handlers: dict[int, Handler] = {}
        self._pending: dict[int, Call] = {}
        self._deferred: set[Incoming] = set()
        self._next_id = 1
        self._out = bytearray()
        # The RESULTs and ONEWAYs this side sent last, by payload, with the function each was
        # for: on a port that echoes they come back, and must not answer a waiting call that
        # happens to share a RESULT's msg_id, nor count as hearing from the peer.
        self._said: deque[tuple[bytes, str | None]] = deque(maxlen=16)
        self._timed: list[tuple[float, int, bytes, Incoming]] = []  # (due, order, frame, inc): replies at a time
        self._order = 0
        self.now = 0.0
        self.last_heard: float | None = None  # when the last well-formed message from the peer arrived
        self.stats = {
            "frames_out": 0,
            "invokes_in": 0,
            "oneways_in": 0,
            "results_in": 0,
            "stale_results": 0,
            "unknown_uids": 0,
            "bad_args": 0,
            "handler_errors": 0,
            "callback_errors": 0,
            "malformed": 0,
            "timeouts": 0,
            "echoes": 0,
        }

    # -- configuration -----------------------------------------------------------------------

    def handle(self, name: str, handler: Handler) -> None:
        fn = self.interface[name]
        if fn.server != self.side:
            raise ValueError(f"{name} is served by the {fn.server}, not by the {self.side}")
        self._handlers[fn.uid] = handler

    def serves(self, uid: int) -> bool:
        """True for the uids this side answers: what hasUID reports."""
        return uid in self._handlers

    # -- the I/O shell's side ----------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> int:
        """Take bytes from the wire; how many frames they ended (dropped ones included).
        Zero means they only continued a frame: nothing here changed but the decoder's buffer."""
        self.now = now
        items = self._decoder.feed(data)
        for item in items:
            if type(item) is Frame:
                self._on_payload(item.message)
            else:
                self._on_dropped(item)
        return len(items)

    def tick(self, now: float) -> None:
        self.now = now
        while self._timed and self._timed[0][0] <= now:
            _, _, frame, inc = heapq.heappop(self._timed)
            self._put(frame)
            if inc.then is not None:
                inc.then()
        expired = [c for c in self._pending.values() if c.deadline is not None and c.deadline <= now]
        for c in expired:
            # A callback of an earlier expiry may have answered or re-armed this call.
            if self._pending.get(c.msg_id) is not c or c.deadline is None or c.deadline > now:
                continue
            del self._pending[c.msg_id]
            self.stats["timeouts"] += 1
            self.on_event(Event.RPC_TIMEOUT, name=c.fn.name, msg_id=c.msg_id)
            self._complete(c, Status.TIMEOUT, None)

    def next_deadline(self) -> float | None:
        return earliest(*(c.deadline for c in self._pending.values()), self._timed[0][0] if self._timed else None)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def decoder_stats(self) -> dict[str, int]:
        return self._decoder.stats

    # -- calls -------------------------------------------------------------------------------

    @property
    def pending(self) -> dict[int, Call]:
        return self._pending

    def call(
        self,
        name: str,
        args: Any = None,
        *,
        now: float | None = None,
        timeout: float | None = None,
        on_done: Callable[[Call], None] | None = None,
        encoded: bytes | None = None,
        framed: Framed | None = None,
    ) -> Call:
        """INVOKE ``name`` on the peer; the returned Call completes later.  ``encoded`` is
        ``args`` already encoded (:meth:`Function.encode_args`), prepared ahead of time;
        ``framed`` the whole frame, used when it is for this call's msg_id and these args."""
        fn = self.interface[name]
        if fn.kind != INVOKE:
            raise ValueError(f"{name} is a ONEWAY: use notify()")
        if fn.server == self.side:
            raise ValueError(f"{name} is served by this side ({self.side}); the peer cannot answer it")
        now = self.now if now is None else now
        if encoded is None:
            encoded = fn.encode_args(args)
        msg_id = self._allocate_id()
        if framed is not None and framed.msg_id == msg_id and framed.uid == fn.uid and framed.args is encoded:
            self._put(framed.frame)
        else:
            self._send(Invoke(fn.uid, msg_id, encoded).encode())
        timeout = fn.timeout if timeout is None else timeout
        kept = dict(args) if isinstance(args, dict) else fn.decode_args(encoded)
        c = Call(fn, msg_id, kept, now, None if timeout <= 0 else now + timeout, on_done)
        self._pending[msg_id] = c
        return c

    def frame_ahead(self, name: str, encoded: bytes) -> Framed | None:
        """The frame of a call of ``name`` with ``encoded`` arguments, made now for the msg_id
        the next call would get, so that the call itself only queues it (a 64 KiB write is
        0.13 ms of COBS and CRC-32 here).  Another call in between takes that id, and the call
        then frames its own.  None when the arguments do not fit a frame: the call says so."""
        fn = self.interface[name]
        msg_id = self._free_id()
        try:
            return Framed(fn.uid, msg_id, encoded, self._encode(Invoke(fn.uid, msg_id, encoded).encode()))
        except FramingError:
            return None

    def notify(self, name: str, args: Any = None) -> None:
        """Send ``name`` as a ONEWAY: no answer comes back."""
        fn = self.interface[name]
        if fn.kind != ONEWAY:
            raise ValueError(f"{name} is answered: use call()")
        if fn.server == self.side:
            raise ValueError(f"{name} is served by this side ({self.side})")
        self._send(self._kept(Oneway(fn.uid, fn.encode_args(args)).encode(), fn.name))

    def invoke_raw(self, uid: int, msg_id: int, args: bytes = b"") -> None:
        """Send an INVOKE the table may not know (fuzzing, probing a peer)."""
        self._send(Invoke(uid, msg_id, args).encode())

    # -- answering ---------------------------------------------------------------------------

    def reply(self, inc: Incoming, ret: Any = None, status: int = Status.OK, at: float | None = None) -> None:
        """Answer a deferred invocation (also used internally for immediate answers); with
        ``at`` later than now, the answer is encoded now and sent when the clock reaches it.
        Answers given the same ``at`` go out in the order they were given."""
        if inc.msg_id is None or inc.replied:
            return
        inc.replied = True
        self._deferred.discard(inc)
        frame = self._result_frame(inc, ret, status)
        if at is not None and at > self.now:
            self._order += 1
            heapq.heappush(self._timed, (at, self._order, frame, inc))
            return
        self._put(frame)
        if inc.then is not None:
            inc.then()

    def _result_frame(self, inc: Incoming, ret: Any, status: int) -> bytes:
        data = b""
        if status == Status.OK:
            try:
                data = inc.fn.encode_result(ret)
            except ArgsError as e:
                log.error("%s handler returned %r, which does not encode: %s", inc.fn.name, ret, e)
                status = Status.RESULTS_WRITE
        try:
            return self._encode(self._kept(Result(inc.msg_id, status, data).encode(), inc.fn.name))
        except FramingError:
            # An answer larger than a frame carries: say so in a RESULT that fits, instead of
            # letting a peer that asks for it end this side.
            self.stats["handler_errors"] += 1
            self.on_event(Event.RPC_RESULT_TOO_LARGE, name=inc.fn.name, msg_id=inc.msg_id, size=len(data))
            return self._encode(self._kept(Result(inc.msg_id, Status.RESULTS_WRITE).encode(), inc.fn.name))

    @property
    def deferred(self) -> set[Incoming]:
        return self._deferred

    # -- internals ---------------------------------------------------------------------------

    def _allocate_id(self) -> int:
        msg_id = self._free_id()
        self._next_id = msg_id % 0xFFFF + 1
        return msg_id

    def _free_id(self) -> int:
        """The msg_id the next call gets: the next one in turn that no pending call holds."""
        msg_id = self._next_id
        for _ in range(0xFFFF):
            if msg_id not in self._pending:
                return msg_id
            msg_id = msg_id % 0xFFFF + 1
        raise RuntimeError("all 65535 msg_ids are pending")

    def _send(self, message: bytes) -> None:
        self._put(self._encode(message))

    def _put(self, frame: bytes) -> None:
        self._out += frame
        self.stats["frames_out"] += 1

    def _on_dropped(self, d: Dropped) -> None:
        self.on_event(Event.RPC_FRAME_DROPPED, reason=d.reason, size=d.size, raw=d.raw.hex())

    def _on_payload(self, payload: bytes) -> None:
        msg = parse(payload)
        t = type(msg)
        if t is Invoke and self._echoed(msg):
            return  # this side's own call: nothing was heard from the peer
        if (t is Result or t is Oneway) and self._said and self._said_back(payload, msg):
            return  # this side's own answer or ONEWAY come back
        if t is not Malformed:
            self.last_heard = self.now
        if t is Result:
            self._on_result(msg)
        elif (t is Invoke or t is Oneway) and self.blocking and self._pending:
            self._held.append(msg)
        elif t is Invoke:
            self._on_invoke(msg)
        elif t is Oneway:
            self._on_oneway(msg)
        else:
            assert isinstance(msg, Malformed)
            self.stats["malformed"] += 1
            self.on_event(Event.RPC_MALFORMED, reason=msg.reason, raw=msg.payload[:64].hex())

    def _echoed(self, m: Invoke) -> bool:
        """Whether ``m`` is this side's own waiting call come back. A peer never calls a
        function it serves itself, so the port echoes what this side sends: TX wired to RX, a
        transceiver or adapter with local echo, or loop://. Said once; with no peer on such a
        port every call times out, and the echoes never count as hearing from the peer."""
        c = self._pending.get(m.msg_id)
        if c is None or c.fn.uid != m.uid:
            return False
        self._heard_echo(c.fn.name, m.msg_id)
        return True

    def _heard_echo(self, name: str | None, msg_id: int | None) -> None:
        self.stats["echoes"] += 1
        if self.stats["echoes"] == 1:
            self.on_event(Event.RPC_ECHO, name=name, msg_id=msg_id, hint=ECHO_HINT)

    def _kept(self, payload: bytes, name: str | None) -> bytes:
        self._said.append((payload, name))
        return payload

    def _said_back(self, payload: bytes, m: Result | Oneway) -> bool:
        """Whether ``m`` is a RESULT or ONEWAY this side sent, come back on a port that echoes.
        A ONEWAY for a function the peer serves is always one: a peer never sends those. A
        RESULT is one only once the port is known to echo: before that, one alike to a RESULT
        sent may be the peer's (both sides number their calls from 1, and two pings are
        answered alike), and it is taken as the peer's."""
        if type(m) is Result:
            if not self.stats["echoes"]:
                return False
        else:
            fn = self.interface.get(m.uid)
            if fn is None or fn.server == self.side:
                return False
        for i, (said, name) in enumerate(self._said):
            if said == payload:
                break
        else:
            return False
        del self._said[i]
        self._heard_echo(name, getattr(m, "msg_id", None))
        return True

    def _on_result(self, r: Result) -> None:
        self.stats["results_in"] += 1
        c = self._pending.pop(r.msg_id, None)
        if c is None:
            self.stats["stale_results"] += 1
            self.on_event(Event.RPC_STALE_RESULT, msg_id=r.msg_id, status=r.status)
            return
        if r.status != Status.OK:
            return self._complete(c, r.status, None)
        try:
            values = c.fn.decode_result(r.data)
        except ArgsError as e:
            self.on_event(Event.RPC_BAD_RESULT, name=c.fn.name, msg_id=r.msg_id, error=str(e))
            return self._complete(c, Status.RESULTS_READ, None)
        self._complete(c, Status.OK, values)

    def _complete(self, c: Call, status: int, values: dict | None) -> None:
        c.status, c.values = int(status), values
        if c.on_done is not None:
            try:
                c.on_done(c)
            except Exception:
                self.stats["callback_errors"] += 1
                log.exception("callback of %s (msg_id %d) raised", c.fn.name, c.msg_id)
                self.on_event(Event.RPC_CALLBACK_ERROR, name=c.fn.name)
        while self._held and not self._pending:  # the wait is over: serve what arrived meanwhile
            m = self._held.pop(0)
            self._on_invoke(m) if type(m) is Invoke else self._on_oneway(m)

    def _lookup(self, uid: int, kind: str) -> Function | None:
        fn = self.interface.get(uid)
        if fn is None or fn.kind != kind or uid not in self._handlers:
            return None
        return fn

    def _on_invoke(self, m: Invoke) -> None:
        self.stats["invokes_in"] += 1
        fn = self._lookup(m.uid, INVOKE)
        if fn is None:
            self.stats["unknown_uids"] += 1
            self.on_event(Event.RPC_UNKNOWN_UID, uid=m.uid, msg_id=m.msg_id, answered=self.answer_unknown)
            if self.answer_unknown:
                self._send(self._kept(Result(m.msg_id, Status.UNKNOWN_UID).encode(), None))
            return
        try:
            args = fn.decode_args(m.args)
        except ArgsError as e:
            self.stats["bad_args"] += 1
            self.on_event(Event.RPC_BAD_ARGS, name=fn.name, msg_id=m.msg_id, error=str(e))
            self._send(self._kept(Result(m.msg_id, Status.ARGS_READ).encode(), fn.name))
            return
        inc = Incoming(fn, m.msg_id, args, self.now)
        try:
            ret = self._handlers[fn.uid](inc)
        except Exception as e:
            self.stats["handler_errors"] += 1
            log.exception("handler of %s raised", fn.name)
            self.on_event(Event.RPC_HANDLER_ERROR, name=fn.name, msg_id=m.msg_id, error=repr(e))
            self.reply(inc, status=Status.GENERIC)
            return
        if ret is DEFER:
            if not inc.replied:
                self._deferred.add(inc)
            return
        self.reply(inc, ret)

    def _on_oneway(self, m: Oneway) -> None:
        self.stats["oneways_in"] += 1
        fn = self._lookup(m.uid, ONEWAY)
        if fn is None:
            self.stats["unknown_uids"] += 1
            self.on_event(Event.RPC_UNKNOWN_UID, uid=m.uid, msg_id=None, answered=False)
            return
        try:
            args = fn.decode_args(m.args)
        except ArgsError as e:
            self.stats["bad_args"] += 1
            self.on_event(Event.RPC_BAD_ARGS, name=fn.name, msg_id=None, error=str(e))
            return
        try:
            self._handlers[fn.uid](Incoming(fn, None, args, self.now))
        except Exception as e:
            self.stats["handler_errors"] += 1
            log.exception("handler of %s raised", fn.name)
            self.on_event(Event.RPC_HANDLER_ERROR, name=fn.name, msg_id=None, error=repr(e))
