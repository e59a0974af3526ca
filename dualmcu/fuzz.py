"""``dualmcu fuzz``: Hypothesis-driven fuzzing of a live peer on a port.

The fuzzer plays the other side of the link.  A responder (an RPC endpoint of the other
side with neutral answers) keeps the target's own calls answered, so the target stays in its
normal loop; on top of that each *case* sends a short list of steps drawn from the interface
table:

* valid calls with boundary arguments, and ONEWAYs;
* malformed arguments, unknown uids;
* frames with a bad CRC, oversize frames, truncated frames, garbage;
* against a primary: OTA sequences out of order (writes before an offer, offsets that skip
  or repeat, duplicate chunks, empty chunks, finish early, cancel at random).

After each case the target must still be alive (it answers ping), still behave (hasUID of
ping says yes), and have kept the protocol's promises the case checks: a resend of the last
accepted chunk is acknowledged, a write at a wrong offset is refused.

Every failure has a class: its oracle and the uid of the step that showed it.  Hypothesis
shrinks each class on its own (each is raised as its own exception type), and the shortest
case of each class is kept.  Before anything is reported, each class's case is replayed
``confirm`` times against a fresh target: a class that fails every time is confirmed, one
that fails only sometimes is flaky (with its rate), one that never fails again is not a
finding.  Each case is saved as the exact bytes sent, with what each step expected, to a
file that ``dualmcu fuzz --replay FILE`` plays again.

A campaign runs in batches of cases until ``--examples`` are used or ``--duration`` is up;
with ``--db`` Hypothesis keeps the failing cases it saw in a directory and replays them first
next time.

A target that stops answering must be brought back before the next case, or every case after
it would fail for the wrong reason: give ``--target-cmd`` (the fuzzer runs the target itself,
on a pty, and restarts it) or ``--reset-cmd`` (a command that resets real hardware).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from dualmcu.framing import Frame, get_profile
from dualmcu.image.inputs import MAX_TEXT, InputFileError, read_input
from dualmcu.rpc import INTERFACE, NCP, PRIMARY, Endpoint, Incoming
from dualmcu.rpc import strategies as S
from dualmcu.rpc.message import Invoke, Oneway, Result, Status, parse

from .paths import write_whole
from .ports import Port, open_port

FUZZ_IDS = range(0x8000, 0xFFFF)  # the fuzzer's own msg_ids, apart from its responder's
SETTLE = 0.03  # how long to listen after a step that expects no answer
# How long to wait for an answer before probing with ping.  A late answer is no failure (the
# probe finds the target alive and the case goes on); only steps whose answer is checked
# wait the table's full timeout.
PROBE_AFTER = 0.5
PING_WAIT = 3.2  # seconds a liveness check waits in all, over three pings
CONFIRM = 3  # replays of each failure class before it is reported
BATCH = 25  # cases per Hypothesis run of a campaign
NEVER_SEND = {"ncp_reboot", "mcu_reboot", "hw_setUartBaudRate", "blynk_factoryReset"}
OTA_SIZE = 4096
START_WAIT = 2.0  # how long an accepted offer waits for the primary to start the transfer
OTA_CHUNK = 256
RSS_GROWTH = 1 << 20  # a case that leaves the target this much bigger has leaked (bytes)
RSS_CEILING = 256 << 20  # a target this much bigger than when it started is restarted
START_WAIT = 15.0  # seconds a target process has to answer ping after it starts


class Failure(AssertionError):
    pass


_FAILURE_TYPES: dict[str, type] = {}


def failure_type(key: str) -> type:
    """One exception type per failure class: Hypothesis shrinks distinct types separately, so
    a campaign that finds two bugs shrinks and reports both."""
    if key not in _FAILURE_TYPES:
        _FAILURE_TYPES[key] = type(f"Failure[{key}]", (Failure,), {})
    return _FAILURE_TYPES[key]


class Dead(Exception):
    """The target died during a case."""

    def __init__(self, problem: Problem):
        super().__init__(problem.reason)
        self.problem = problem


@dataclass
class Step:
    """One thing sent, and what its answer must be (None: anything, or nothing)."""

    what: str
    data: bytes
    msg_id: int | None = None
    timeout: float = SETTLE
    expect: str | None = None  # "true": status OK and return true; "refused": false or an error status
    answered: bool = False  # the target must answer it (a call it serves, or args it must refuse)
    fn: str = "frame"  # the function it calls (for classing failures); "frame" for raw bytes
    # The facts ``expect`` stands on, so that a replay judges by the same ones: the step
    # (its index in the case) that must have been answered true in this very run (the write a
    # resend repeats, the offer a wrong offset follows), and a call of the target's own to wait
    # for once this step is answered (the primary's blynk_otaUpdateStart after an offer).
    needs: int | None = None
    waits_for: str | None = None

    def to_json(self) -> dict:
        return {"what": self.what, "send": self.data.hex(), "msg_id": self.msg_id, "timeout": self.timeout,
                "expect": self.expect, "answered": self.answered, "fn": self.fn, "needs": self.needs,
                "waits_for": self.waits_for}

    @classmethod
    def from_json(cls, d: dict) -> Step:
        if not isinstance(d, dict) or not isinstance(d.get("what"), str) or not isinstance(d.get("send"), str):
            raise ValueError("a step needs 'what' and 'send' (hex)")
        msg_id, timeout = d.get("msg_id"), d.get("timeout", SETTLE)
        if msg_id is not None and not (isinstance(msg_id, int) and 0 <= msg_id <= 0xFFFF):
            raise ValueError(f"msg_id {msg_id!r} is not 0..65535")
        if not isinstance(timeout, (int, float)) or not 0 <= timeout <= 60:
            raise ValueError(f"timeout {timeout!r} is not 0..60 seconds")
        if d.get("expect") not in (None, "true", "refused"):
            raise ValueError(f"expect {d.get('expect')!r} is not true, refused or null")
        needs, waits_for = d.get("needs"), d.get("waits_for")
        if needs is not None and not (isinstance(needs, int) and needs >= 0):
            raise ValueError(f"needs {needs!r} is not the index of an earlier step")
        if waits_for is not None and waits_for not in INTERFACE.by_name:
            raise ValueError(f"waits_for {waits_for!r} is not a function of the interface")
        return cls(d["what"], bytes.fromhex(d["send"]), msg_id, float(timeout), d.get("expect"),
                   bool(d.get("answered", False)), str(d.get("fn", "frame")), needs, waits_for)


@dataclass(frozen=True)
class Problem:
    """Why a case failed: the oracle that caught it, at which function, in words."""

    oracle: str  # liveness, behaviour, answer_due, resend_acknowledged, wrong_offset_refused
    fn: str
    reason: str

    @property
    def key(self) -> str:
        return f"{self.oracle} {self.fn}"

    def __str__(self) -> str:
        return self.reason


def neutral(t) -> Any:
    return {bool: True, int: 0, float: 0.0, str: "", bytes: b""}[t.py]


class Session:
    """The fuzzer's end of the link."""

    def __init__(self, port, framing: str, target: str, ping_wait: float = PING_WAIT):
        self.port = port
        # A quick first ping, then longer ones for a target busy in a call of its own.
        first = min(0.2, ping_wait)
        rest = max(0.0, ping_wait - first)
        self.alive_waits = (first,) + ((rest / 3, 2 * rest / 3) if rest else ())
        self.profile = get_profile(framing)
        self.target = target
        me = NCP if target == PRIMARY else PRIMARY
        self.ep = Endpoint(me, self.profile)
        self.watch = self.profile.decoder()
        self.results: dict[int, Result] = {}
        self.info: dict[str, str] = {}
        self.called: Counter[str] = Counter()  # the target's own calls, by function
        self._next = FUZZ_IDS.start
        # What the fuzzer can see of a target process it runs itself (--target-cmd): its
        # resident memory and, once it has died, its exit code.  None for a real board.
        self.rss: Callable[[], int | None] = lambda: None
        self.exit_code: Callable[[], int | None] = lambda: None
        self.rss_growth = RSS_GROWTH
        self.growth: list[tuple[int, str]] = []  # (bytes, fn) the target grew by, per step of a case
        self._mark: int | None = None  # the target's memory after the last step
        for fn in INTERFACE.served_by(me):
            self.ep.handle(fn.name, self._answer)

    # -- the responder ---------------------------------------------------------------------------

    def _answer(self, inc: Incoming) -> Any:
        fn = inc.fn
        self.called[fn.name] += 1
        if fn.name == "blynk_setFirmwareInfo":
            self.info = dict(inc.args)
        if fn.name == "blynk_getState":
            return 5
        if fn.name == "client_otaUpdateAvailable":
            return False  # an NCP target may offer its own update: keep it quiet
        if fn.name in ("blynk_otaUpdatePrefetch",):
            return 1
        return {p.name: neutral(p.type) for p in fn.results}

    # -- I/O -------------------------------------------------------------------------------------

    def pump(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        end = time.monotonic() + seconds
        while True:
            if until is not None and until():
                return True
            now = time.monotonic()
            if now >= end:
                return until() if until else True
            deadline = self.ep.next_deadline()
            wait = end - now if deadline is None else min(end, deadline) - now
            data = self.port.wait_read(min(wait, 0.05))
            now = time.monotonic()
            if data:
                for item in self.watch.feed(data):
                    if isinstance(item, Frame):
                        msg = parse(item.message)
                        if isinstance(msg, Result) and msg.msg_id in FUZZ_IDS:
                            self.results[msg.msg_id] = msg
                self.ep.receive(data, now)
            self.ep.tick(now)
            out = self.ep.data_to_send()
            if out:
                self.port.write(out)

    def msg_id(self) -> int:
        mid = self._next
        self._next = mid + 1 if mid + 1 < FUZZ_IDS.stop else FUZZ_IDS.start
        return mid

    def send(self, step: Step) -> Result | None:
        """Send a step; wait for its answer (or a moment, when none is due)."""
        try:
            return self._send(step)
        finally:
            after = self.rss()  # one read per step: it is also where the next step starts
            if self._mark is not None and after is not None:
                self.growth.append((after - self._mark, step.fn))
            self._mark = after

    def start_case(self) -> int | None:
        """The target's memory as a case begins; its steps' growth is counted from here."""
        self._mark, self.growth = self.rss(), []
        return self._mark

    def _send(self, step: Step) -> Result | None:
        self.port.write(step.data)
        if step.msg_id is None:
            self.pump(step.timeout)
            if self.exit_code() is not None:
                # The process died on this step: said now, so the crash is charged to the
                # step that caused it, not to whatever the case sends next.
                raise Dead(self.silent(step.fn, step.what))
            return None
        self.results.pop(step.msg_id, None)
        self.pump(step.timeout, lambda: step.msg_id in self.results or self.exit_code() is not None)
        result = self.results.pop(step.msg_id, None)
        if result is None and step.answered and not self.alive():
            # A call the target must answer went unanswered and it no longer answers ping:
            # the case has failed; the rest of it would only wait out timeouts.
            raise Dead(self.silent(step.fn, step.what))
        return result

    def silent(self, fn: str, what: str) -> Problem:
        """Why a target stopped answering: its process ended (a crash), or it hangs."""
        code = self.exit_code()
        if code is not None:
            return Problem("crash", fn, f"the target process exited with code {code} (after: {what})")
        return Problem("liveness", fn, f"the target stopped answering ping (after: {what})")

    # -- building steps --------------------------------------------------------------------------

    def invoke(self, name: str, args: Any = None, expect: str | None = None, what: str = "call") -> Step:
        fn = INTERFACE[name]
        body = fn.encode_args(args)
        if fn.kind == "oneway":
            return Step(what, self.profile.encode_unchecked(Oneway(fn.uid, body).encode()), fn=fn.name)
        mid = self.msg_id()
        wait = fn.timeout if expect else min(fn.timeout, PROBE_AFTER)
        message = Invoke(fn.uid, mid, body).encode()
        # Long arguments may make a message longer than a frame may carry: it is sent all the
        # same (the target must drop it) and no answer is due.  This project's extension uids
        # are answered by dualmcu peers only: real firmware stays silent for them, as it does
        # for any uid it does not know.
        fits = len(message) <= self.profile.send_limit
        return Step(what, self.profile.encode_unchecked(message), mid, wait if fits else SETTLE, expect if fits else None,
                    answered=fits and fn.server == self.target and not fn.extension, fn=fn.name)

    def raw_invoke(self, uid: int, body: bytes, what: str, timeout: float = 0.1) -> Step:
        """Any uid with any argument bytes: a ONEWAY for the table's ONEWAYs, else an INVOKE."""
        fn = INTERFACE.get(uid)
        name = fn.name if fn is not None else f"uid {uid:#06x}"
        if fn is not None and fn.kind == "oneway":
            return Step(what, self.profile.encode_unchecked(Oneway(uid, body).encode()), fn=name)
        mid = self.msg_id()
        # answered: values, or 0x15 (extension uids: only by dualmcu peers, see invoke)
        must = fn is not None and fn.server == self.target and not fn.extension
        return Step(what, self.profile.encode_unchecked(Invoke(uid, mid, body).encode()), mid,
                    min(fn.timeout, PROBE_AFTER) if must else timeout, answered=must, fn=name)

    # -- checks ----------------------------------------------------------------------------------

    def alive(self, waits: tuple[float, ...] | None = None) -> bool:
        """Whether the target answers ping.  The first try is quick; the later ones wait longer,
        for a target busy in a call of its own (which the responder answers meanwhile)."""
        ping = "mcu_ping" if self.target == PRIMARY else "ncp_ping"
        for timeout in waits or self.alive_waits:
            if self.exit_code() is not None:
                return False  # a process that has ended answers nothing: no need to wait
            c = self.ep.call(ping, now=time.monotonic(), timeout=timeout)
            self.pump(timeout + 0.05, lambda: c.done)
            if c.ok:
                return True
        return False

    def behaves(self) -> bool:
        """Whether the target still says yes to hasUID(ping).  Only a wrong answer counts: a
        late one (a loaded machine, a target busy in a call of its own) is asked again with
        the liveness check's longer waits, so the oracle does not flake on a slow host."""
        has, ping = ("mcu_hasUID", "mcu_ping") if self.target == PRIMARY else ("ncp_hasUID", "ncp_ping")
        for timeout in (1.5,) + self.alive_waits[1:]:
            c = self.ep.call(has, {"uid": INTERFACE[ping].uid}, now=time.monotonic(), timeout=timeout)
            self.pump(timeout + 0.05, lambda: c.done)
            if c.done and c.status != Status.TIMEOUT:
                return c.ok and c.result is True
        return False

    def learn_type(self) -> None:
        """Make a primary report its firmware (the NCP "reboots"), to offer it matching updates."""
        if self.target != PRIMARY or self.info:
            return
        self.port.write(self.invoke("client_processEvent", {"event": 1}).data)
        self.pump(3.0, lambda: bool(self.info))


def answered_true(result: Result | None) -> bool:
    return result is not None and result.status == 0 and result.data == b"\x01"


def check(step: Step, result: Result | None, facts: list[bool] | None = None) -> Problem | None:
    """The oracle of one step.  ``facts``: for each step before it, whether it was answered
    true in this run; an expectation that stands on one that was not does not apply (the case
    did not reach the state it is about: the transfer never started, say)."""
    if step.expect is None:
        return None
    if step.needs is not None and not (facts is not None and step.needs < len(facts) and facts[step.needs]):
        return None
    if result is None:
        return Problem("answer_due", step.fn, f"{step.what}: no answer within {step.timeout} s")
    ok_true = answered_true(result)
    if step.expect == "true" and not ok_true:
        return Problem("resend_acknowledged", step.fn,
                       f"{step.what}: expected true, got status {result.status:#x} data {result.data.hex()}")
    if step.expect == "refused" and ok_true:
        return Problem("wrong_offset_refused", step.fn, f"{step.what}: expected a refusal, got true")
    return None


# -- strategies ----------------------------------------------------------------------------------


def case_strategy(target: str) -> st.SearchStrategy:
    """A case: a list of step descriptions, turned into bytes by :func:`build`."""
    served = [f for f in INTERFACE.served_by(target) if f.name not in NEVER_SEND]
    known = set(INTERFACE.by_uid)
    kinds = {
        "call": st.sampled_from(served).flatmap(lambda f: st.tuples(st.just("call"), st.just(f.name), S.args_for(f))),
        "bad_args": st.tuples(st.just("bad_args"), st.sampled_from([f.name for f in served]), st.binary(max_size=24)),
        "unknown_uid": st.tuples(st.just("unknown_uid"), st.integers(0, 0xFFFF).filter(lambda u: u not in known),
                                 st.binary(max_size=8)),
        "bad_crc": st.tuples(st.just("bad_crc"), st.integers(0, 64)),
        "oversize": st.tuples(st.just("oversize"), st.integers(1, 64)),
        "truncated": st.tuples(st.just("truncated"), st.integers(1, 12)),
        "garbage": st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=64)),
    }
    # How often each kind of step is drawn.  Hypothesis picks the branches of one_of evenly
    # (and flattens nested ones), so the weights are repeats in a list it samples from.
    # Valid calls with boundary arguments reach the handlers, where a remote crash or a leak
    # lives: as many of them as of all the malformed kinds together.
    weights = {"call": 6, "bad_args": 1, "unknown_uid": 1, "bad_crc": 1, "oversize": 1, "truncated": 1, "garbage": 1}
    if target == PRIMARY:
        # Writes in order and resends are what an update is made of: each has its own branch.
        ota_op = st.one_of(
            st.just(("write_next",)), st.just(("write_next",)), st.just(("write_dup",)),
            st.sampled_from([("write_empty",), ("finish",), ("cancel",)]),
            st.tuples(st.just("write_at"), st.integers(0, OTA_SIZE)),
        )
        kinds["ota"] = st.tuples(st.just("ota"), st.lists(ota_op, min_size=1, max_size=8))
        weights["ota"] = 3
    one = st.sampled_from([k for k, n in weights.items() for _ in range(n)]).flatmap(kinds.__getitem__)
    return st.lists(one, min_size=1, max_size=6)


@dataclass
class Ota:
    offset: int = 0
    last: tuple[int, bytes, int] | None = None  # the last write acknowledged: offset, bytes, step


def send_waiting(session: Session, step: Step) -> Result | None:
    """Send a step and, when it names one, wait for the target's own call that must follow."""
    before = session.called[step.waits_for] if step.waits_for else 0
    result = session.send(step)
    if step.waits_for and answered_true(result):
        session.pump(START_WAIT, lambda: session.called[step.waits_for] > before)
    return result


def chunk_at(offset: int, n: int) -> bytes:
    return bytes((offset + i) * 7 & 0xFF for i in range(n))


def build(session: Session, case: list) -> list[Step]:
    """Turn a case into the exact steps to send (OTA oracles are decided as answers come)."""
    steps: list[Step] = []
    ping = INTERFACE["mcu_ping" if session.target == PRIMARY else "ncp_ping"]
    valid = Invoke(ping.uid, 1).encode()
    for item in case:
        kind = item[0]
        if kind == "call":
            steps.append(session.invoke(item[1], item[2], what=f"call {item[1]}"))
        elif kind == "bad_args":
            steps.append(session.raw_invoke(INTERFACE[item[1]].uid, item[2], f"bad args {item[1]}"))
        elif kind == "unknown_uid":
            steps.append(session.raw_invoke(item[1], item[2], f"unknown uid {item[1]:#06x}"))
        elif kind == "bad_crc":
            frame = bytearray(session.profile.encode(valid))
            i = 1 + item[1] % (len(frame) - 2)
            frame[i] ^= 0x01 if frame[i] not in (0x01, 0xAB, 0xBA) else 0x02
            steps.append(Step("bad crc", bytes(frame)))
        elif kind == "oversize":
            body = bytes(session.profile.max_message + item[1])
            steps.append(Step("oversize", session.profile.encode_unchecked(valid + body)))
        elif kind == "truncated":
            frame = session.profile.encode(Invoke(ping.uid, 1, bytes(16)).encode())
            steps.append(Step("truncated", frame[: max(1, len(frame) - item[1])]))
        elif kind == "garbage":
            steps.append(Step("garbage", item[1]))
        elif kind == "ota":
            steps.append(Step("ota", json.dumps(item[1]).encode()))  # expanded while running
    return steps


def run_ota(session: Session, ops: list, record: list[Step]) -> Problem | None:
    """An OTA sequence against a primary, with its oracles; every step sent is recorded, with
    the facts each expectation stands on (:class:`Step`), which a replay checks again."""
    def go(step: Step) -> Result | None:
        record.append(step)
        return send_waiting(session, step)

    session.learn_type()
    fw_type = session.info.get("type", "")
    go(session.invoke("client_otaUpdateCancel", what="ota cancel (clean start)"))
    offer = session.invoke("client_otaUpdateAvailable", {"filename": "fuzz.bin", "size": OTA_SIZE, "fw_type": fw_type,
                                                        "fw_version": "999.0.0", "fw_build": "fuzz"}, what="ota offer")
    # A primary starts the transfer itself, with its own blynk_otaUpdateStart: writes wait for
    # it. A fixed pause raced a firmware slower than it, whose refusals of writes sent before
    # its Start read as a refused resend.
    offer.waits_for = "blynk_otaUpdateStart"
    accepted = answered_true(go(offer))
    offered_at = len(record) - 1
    ota = Ota()
    for op in ops:
        kind = op[0]
        if kind not in ("write_next", "write_dup"):
            # A resend is judged only right after the write it repeats, as a real NCP sends it
            # when that write's answer was lost: after a premature Finish, a write at a wrong
            # offset or an empty one, a firmware may rightly have ended the transfer.
            ota.last = None
        if kind == "write_next" and ota.offset < OTA_SIZE:
            n = min(OTA_CHUNK, OTA_SIZE - ota.offset)
            data = chunk_at(ota.offset, n)
            step = session.invoke("client_otaUpdateWrite", {"offset": ota.offset, "chunk": data, "crc32": zlib.crc32(data)},
                                  what=f"ota write {ota.offset}")
            if answered_true(go(step)):
                ota.last = (ota.offset, data, len(record) - 1)
                ota.offset += n
        elif kind == "write_dup" and ota.last is not None and accepted:
            off, data, first = ota.last
            step = session.invoke("client_otaUpdateWrite", {"offset": off, "chunk": data, "crc32": zlib.crc32(data)},
                                  expect="true", what=f"ota resend of the last chunk {off}")
            step.needs = first  # an exact resend of a write that was acknowledged, and no other
            problem = check(step, go(step), facts=[True] * len(record))
            if problem:
                return problem
        elif kind == "write_empty":
            go(session.invoke("client_otaUpdateWrite", {"offset": ota.offset, "chunk": b"", "crc32": 0},
                              what=f"ota empty write {ota.offset}"))
        elif kind == "write_at":
            off = op[1]
            if off == ota.offset or (ota.last and off == ota.last[0]):
                continue
            # Bytes unlike what an in-order write puts there: a matching resend of written bytes
            # is rightly acknowledged; these must be refused.
            data = bytes(b ^ 0x5A for b in chunk_at(off, 16))
            step = session.invoke("client_otaUpdateWrite", {"offset": off, "chunk": data, "crc32": zlib.crc32(data)},
                                  expect="refused" if accepted else None, what=f"ota write at wrong offset {off}")
            step.needs = offered_at
            problem = check(step, go(step), facts=[True] * len(record))
            if problem:
                return problem
        elif kind == "finish":
            go(session.invoke("client_otaUpdateFinish", what="ota finish"))
        elif kind == "cancel":
            go(session.invoke("client_otaUpdateCancel", what="ota cancel"))
            accepted, ota = False, Ota()
    go(session.invoke("client_otaUpdateCancel", what="ota cancel (clean end)"))
    return None


def execute(session: Session, case: list, record: list[Step]) -> Problem | None:
    """Send one case; the reason it fails, or None."""
    try:
        return _execute(session, case, record)
    except Dead as d:
        return d.problem


def _execute(session: Session, case: list, record: list[Step]) -> Problem | None:
    rss = session.start_case()
    for step in build(session, case):
        if step.what == "ota":
            problem = run_ota(session, json.loads(step.data), record)
            if problem:
                return problem
            continue
        record.append(step)
        problem = check(step, session.send(step))
        if problem:
            return problem
    return health(session, record[-1].fn if record else "-", rss)


def health(session: Session, last: str, rss: int | None = None) -> Problem | None:
    """The checks after every case: alive, still behaving, and (for a target process the
    fuzzer runs) no bigger than before the case by more than ``session.rss_growth``.

    Memory is read after the liveness checks, so the target has answered everything the
    case sent.  Memory a case only used is reused by the next one; a leak is not, so a
    leaking call shows on every replay, and noise does not (it is reported flaky)."""
    if not session.alive():
        return session.silent(last, last)
    if not session.behaves():
        return Problem("behaviour", last, "the target is alive but hasUID(ping) no longer says yes")
    after = session.rss()
    if rss is not None and after is not None and after - rss > session.rss_growth:
        # Charged to the step after which the target grew most: the leak, not the last step.
        fn = max(session.growth)[1] if session.growth else last
        return Problem("memory", fn, f"the target's memory grew by {(after - rss) / 2**20:.1f} MiB in one case "
                                     f"(to {after / 2**20:.1f} MiB)")
    return None


# -- the target's lifetime -----------------------------------------------------------------------


@dataclass
class Target:
    """Where the target is, and how to bring it back when it stops answering."""

    port_url: str | None = None
    baud: int = 38400
    target_cmd: str | None = None
    reset_cmd: str | None = None
    proc: subprocess.Popen | None = None
    relay: Any = None
    restarts: int = 0
    started_rss: int | None = None  # the process's memory once it answered after its start
    # The target process's stderr, kept so that one that will not start can say why.
    stderr: Any = None

    def rss(self) -> int | None:
        """Resident memory of the target process (Linux /proc), or None."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def bloated(self) -> bool:
        """Grown so far past its start that the next cases would measure the swap, not it."""
        now = self.rss()
        return now is not None and self.started_rss is not None and now - self.started_rss > RSS_CEILING

    def open(self):
        if self.target_cmd:
            from .relay import Relay

            self.relay = Relay("pty").start()
            self._spawn()
            return Port(open_port(self.relay.paths["a"], self.baud))
        return Port(open_port(self.port_url, self.baud))

    def _spawn(self) -> None:
        cmd = self.target_cmd.replace("{port}", self.relay.paths["b"])
        if self.stderr is not None:
            self.stderr.close()
        self.stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(shlex.split(cmd), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self.stderr)
        except (OSError, ValueError) as e:
            why = getattr(e, "strerror", None) or e
            raise TargetDown(f"cannot run the target command {cmd!r}: {why}") from None

    def ended(self, code: int) -> str:
        """Why the target process is gone: its exit code and the last line it wrote to stderr."""
        said = ""
        if self.stderr is not None:
            self.stderr.seek(0, 2)
            self.stderr.seek(max(0, self.stderr.tell() - 4096))
            lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
            said = f": {lines[-1].strip()}" if lines else ""
        return f"the target command exited with code {code}{said}"

    def revive(self) -> bool:
        """Bring a dead target back; False when there is no way to."""
        if self.target_cmd:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
            self._spawn()
        elif self.reset_cmd:
            subprocess.run(self.reset_cmd, shell=True, timeout=60)
        else:
            return False
        self.restarts += 1
        return True

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        if self.stderr is not None:
            self.stderr.close()
        if self.relay is not None:
            self.relay.close()


class TargetDown(Exception):
    pass


def ensure_alive(session: Session, target: Target, known_dead: bool = False) -> None:
    if not known_dead and not target.bloated() and session.alive(waits=(0.2,)):
        return
    if not target.revive():
        raise TargetDown("the target does not answer ping and there is no --target-cmd or --reset-cmd to revive it")
    fresh_start(session, target)


def fresh_start(session: Session, target: Target | None = None, after: str = "a restart") -> None:
    """Wait for a target that was just (re)started to answer, and let it finish initialising."""
    session.info = {}
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        code = session.exit_code()
        if code is not None:
            # A process that has ended answers nothing: said at once, with its own words,
            # instead of pinging it until the deadline.
            raise TargetDown(target.ended(code) if target is not None
                             else f"the target exited with code {code}")
        if session.alive(waits=(0.1,)):
            session.pump(0.2)
            if target is not None:
                target.started_rss = target.rss()
            return
    raise TargetDown(f"the target did not answer ping within {START_WAIT:g} s of {after}")


@dataclass
class Finding:
    problem: Problem
    steps: list[Step]
    seen: int = 1  # cases of the campaign that failed in this class
    replays: int = 0
    reproduced: int = 0
    replayed_all: bool = False  # every replay confirm() was asked for was made

    @property
    def reason(self) -> str:
        return self.problem.reason

    @property
    def verdict(self) -> str:
        """confirmed (every replay failed alike), flaky (some did), not reproduced, or
        unconfirmed (the campaign was stopped before its replays were all made)."""
        if not self.replayed_all:
            return "unconfirmed"
        if self.reproduced == self.replays:
            return "confirmed"
        return "flaky" if self.reproduced else "not_reproduced"

    def summary(self) -> dict:
        return {"class": self.problem.key, "oracle": self.problem.oracle, "fn": self.problem.fn,
                "failure": self.reason, "verdict": self.verdict, "reproduced": f"{self.reproduced}/{self.replays}",
                "seen": self.seen, "steps": len(self.steps)}


@dataclass
class Campaign:
    findings: dict[str, Finding]
    cases: int
    seconds: float
    stopped: KeyboardInterrupt | None = None  # Ctrl-C or SIGTERM ended it early


def fuzz(session: Session, target: Target, examples: int, seed_value: int,
         progress: Callable[[int, Problem | None], None] = lambda n, p: None, duration: float | None = None,
         db: str | None = None) -> Campaign:
    """Run cases until ``examples`` are used or ``duration`` seconds are up; every failure
    class found, each with its shortest case (not yet confirmed: see ``confirm``)."""
    from hypothesis.database import DirectoryBasedExampleDatabase

    findings: dict[str, Finding] = {}
    count = [0]
    dead = [False]
    t0 = time.monotonic()
    database = DirectoryBasedExampleDatabase(db) if db else None
    strategy = case_strategy(session.target)

    def run_batch(n: int, batch_seed: int) -> None:
        @settings(max_examples=n, database=database, deadline=None, derandomize=False, report_multiple_bugs=True,
                  suppress_health_check=list(HealthCheck),
                  phases=[Phase.reuse, Phase.generate, Phase.shrink] if database else [Phase.generate, Phase.shrink])
        @seed(batch_seed)
        @given(strategy)
        def dualmcu_fuzz_case(case):
            ensure_alive(session, target, known_dead=dead[0])
            record: list[Step] = []
            count[0] += 1
            problem = execute(session, case, record)
            dead[0] = problem is not None and problem.oracle in ("liveness", "crash")
            if problem:
                old = findings.get(problem.key)
                if old is None:
                    findings[problem.key] = Finding(problem, record)
                else:
                    old.seen += 1
                    if _size(record) < _size(old.steps):  # shrinking: keep the smallest case of the class
                        old.problem, old.steps = problem, record
            # Said once kept: a user who stops the campaign on seeing a failure finds it saved.
            progress(count[0], problem)
            if problem:
                raise failure_type(problem.key)(problem.reason)

        # The database keeps each side's cases apart (as pytest does for parametrized tests).
        dualmcu_fuzz_case._hypothesis_internal_add_digest = session.target.encode()
        try:
            dualmcu_fuzz_case()
        except TargetDown:
            raise
        except Exception as e:
            # The failures the cases found (one, or a group) are recorded; Hypothesis may also
            # call one flaky.  Anything else is the fuzzer's own fault and must not pass for
            # "nothing found".
            if not _only_findings(e):
                raise

    batch = 0
    try:
        while count[0] < examples and (duration is None or time.monotonic() - t0 < duration):
            run_batch(min(BATCH, examples - count[0]), seed_value + batch)
            batch += 1
    except KeyboardInterrupt as e:
        # A user who stops a long campaign keeps what it found: each class's smallest case
        # so far, unconfirmed.
        return Campaign(findings, count[0], time.monotonic() - t0, stopped=e)
    return Campaign(findings, count[0], time.monotonic() - t0)


def _size(steps: list[Step]) -> tuple[int, int]:
    """Fewer steps first, then fewer bytes: a long argument shrinks to the shortest that fails."""
    return len(steps), sum(len(s.data) for s in steps)


def _only_findings(e: BaseException) -> bool:
    from hypothesis.errors import Flaky

    group = getattr(e, "exceptions", None)  # an exception group (the backport's too, on 3.10)
    if isinstance(group, tuple):
        return all(_only_findings(x) for x in group)
    return isinstance(e, (Failure, Flaky))


def confirm(session: Session, target: Target, finding: Finding, times: int = CONFIRM) -> Finding:
    """Replay a finding's case ``times`` times, each against a fresh target where the target
    can be restarted; count the replays that fail in the same class."""
    for _ in range(times):
        if target.revive():
            fresh_start(session, target)
        else:
            ensure_alive(session, target)
        problem = play(session, finding.steps)
        finding.replays += 1
        finding.reproduced += problem is not None and problem.key == finding.problem.key
    finding.replayed_all = True
    return finding


def save(path: str, finding: Finding, meta: dict) -> None:
    """Write a finding's case file, whole or not at all (OSError)."""
    case = {**meta, **finding.summary(), "steps": [s.to_json() for s in finding.steps]}
    write_whole(path, json.dumps(case, indent=1).encode())


class CaseFileError(ValueError):
    pass


def load_case(path: str) -> list[Step]:
    """The steps of a saved case, or one line saying why the file is not one."""
    return read_case(path)[0]


def read_case(path: str) -> tuple[list[Step], dict]:
    """The steps of a saved case and what the file says of its target (``target``,
    ``framing``, ``baud``), or one line saying why the file is not one."""
    try:
        data = json.loads(read_input(path, "saved case", MAX_TEXT).decode("utf-8"))
    except InputFileError as e:
        raise CaseFileError(str(e)) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CaseFileError(f"{path} is not a saved case: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise CaseFileError(f"{path} is not a saved case: it has no list of steps")
    try:
        steps = [Step.from_json(d) for d in data["steps"]]
    except (ValueError, TypeError) as e:
        raise CaseFileError(f"{path}: step does not read: {e}") from None
    meta = {k: data[k] for k in ("target", "framing", "baud") if k in data}
    if meta.get("target") not in (None, PRIMARY, NCP):
        raise CaseFileError(f"{path}: target {meta['target']!r} is neither primary nor ncp")
    return steps, meta


def play(session: Session, steps: list[Step]) -> Problem | None:
    """Send a recorded case again and judge it as the run that found it did: each expectation
    only where the steps it stands on were answered true in this replay too."""
    rss = session.start_case()
    facts: list[bool] = []
    for step in steps:
        try:
            result = send_waiting(session, step)
        except Dead as dead:
            return dead.problem
        problem = check(step, result, facts)
        facts.append(answered_true(result))
        if problem:
            return problem
    return health(session, steps[-1].fn if steps else "-", rss)


def replay(session: Session, path: str) -> Problem | None:
    return play(session, load_case(path))
