"""The loop around a core: its port (dualmcu.ports) and the monotonic clock.

The shell owns the only loop: read what the port has, hand it to the core with the time, let
the core's deadlines pass, write what the core wants sent, carry out its actions.  It waits in
select() for the next byte or the core's next deadline, whichever comes first, so it adds no
latency of its own to a round trip; all timing is the core's, against ``time.monotonic()``.
What the side says goes through dualmcu.output.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable, Protocol

from dualmcu.rpc.endpoint import earliest
from dualmcu.rpc.device import Reboot
from dualmcu.rpc.events import Event

from .output import EventPrinter
from .ports import Port, SignalWake

IDLE_WAKE = 0.5  # with no deadline, wake this often anyway (signals, --once checks, silence)
# A frame this far along is larger than a pty holds (12 to 20 KiB): its writer is blocked on
# the full pty, and the rest is read in one go (Port.read_rest).  Below it nothing is read
# ahead: with small frames that would take a whole window of writes at once, answer them all
# at once, and leave the wire idle while the writer waits for the answers (1 KiB chunks, eight
# in flight: 1.8 times the transfer, measured).
BIG_FRAME = 8 << 10
# A sleeping process wakes 0.1-0.3 ms after its timer on a busy 2-core machine (measured in the
# relay: 155-226 us late at the median), and a paced round trip has several timed steps.  So
# a wait ends this much before a deadline, and the rest is polled: the deadline is met to a
# few microseconds, for at most this much CPU per deadline.
SPIN = 0.0003


def wait_for(deadline: float | None, now: float, idle: float) -> float:
    """How long to block before ``deadline`` (at most ``idle``): 0 within SPIN of it."""
    if deadline is None:
        return idle
    left = deadline - now
    return min(idle, left - SPIN) if left > SPIN else 0.0


class Core(Protocol):
    actions: list

    def receive(self, data: bytes, now: float) -> int | None: ...  # frames the bytes ended
    def tick(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def data_to_send(self) -> bytes: ...
    def idle(self) -> None: ...



# SIGUSR1 and SIGUSR2 a side received, in order (Runner._requested): kept from the side's start,
# so that one sent as soon as the side said port_open is not lost, nor kills the process.
REQUESTS: list[int] = []


def take_requests() -> None:
    """From now on SIGUSR1 and SIGUSR2 are requests to the side, not the end of the process."""
    for s in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, lambda signum, _frame: REQUESTS.append(signum))


class Runner:
    """Drive a core over a port until told to stop.

    The loop waits for whichever comes first: the next byte, or the core's next deadline.
    ``on_action(action, port)`` carries out what the core asks for; it returns a new core
    (after a reboot), None to go on, or raises :class:`Stop` to end the loop.  ``check`` runs
    after every step and may raise Stop; ``watchdog`` (a :class:`Silence`) counts the bytes
    that arrive and reads the core's frame count, to say once when nothing sensible arrives.
    """

    def __init__(self, port: Port, core: Core,
                 on_action: Callable[[Any, Port], Core | None],
                 check: Callable[[], None] | None = None,
                 watchdog: Silence | None = None, events: EventPrinter | None = None):
        self.port = port
        self.core = core
        self.on_action = on_action
        self.check = check
        self.watchdog = watchdog
        self.events = events  # held during a step, released once its bytes are sent
        self._stopping = False
        self.requests = REQUESTS  # SIGUSR1, SIGUSR2 received, handled in the loop

    def stop(self, *_: Any) -> None:
        self._stopping = True

    def _requested(self) -> None:
        """What a test script asks of a running side by signal (docs/testing.md): SIGUSR1
        reboots this side now (its state gone, its UART back at the initial rate), SIGUSR2
        cuts the power of an exec: target on its port."""
        while self.requests:
            if self.requests.pop(0) == signal.SIGUSR1:
                self._flush()
                replaced = self.on_action(Reboot("signal"), self.port)
                if replaced is not None:
                    self.core = replaced
                    self._flush()
            elif getattr(self.port, "owner", None) is not None:
                self.port.owner.power_cycle()

    def run(self) -> None:
        port = self.port
        # SIGTERM ends the loop cleanly; once the loop is over it ends the process again, so
        # that a side waiting at its end for a --json reader that never reads can be stopped.
        previous = signal.signal(signal.SIGTERM, self.stop)
        asked = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
        take_requests()
        deadline = self.core.next_deadline()  # the core's, as the last full step left it
        stepped = time.monotonic()  # when the last full step ran
        wake = None
        inside = 0  # bytes handed to the core since it last ended a frame
        try:
            wake = port.wake = SignalWake()
            while not self._stopping:
                if self.requests:
                    self._requested()
                    deadline = self.core.next_deadline()
                data = port.read_waiting() if port.reads_first else b""
                if not data:
                    # A full step at least every IDLE_WAKE (signals, --once checks, silence),
                    # even for a side whose wakes all only let queued bytes out.
                    due = earliest(deadline, port.next_deadline(), stepped + IDLE_WAKE)
                    data = port.wait_read(wait_for(due, time.monotonic(), IDLE_WAKE))
                    if not data and port.made_room and due > time.monotonic():
                        # The wake only let queued bytes out: a pty takes about 12 KiB at a
                        # time, so a 64 KiB write wakes its writer four or five times.  Nothing
                        # reached the core and nothing is due, so there is no step to take.
                        continue
                if inside >= BIG_FRAME and port.reads_first:
                    data = port.read_rest(data)
                now = time.monotonic()
                port.pump(now)  # what has arrived at the peer goes out first: it is due
                core = self.core
                if self.events is not None:
                    self.events.hold()
                if data:
                    if self.watchdog is not None:
                        self.watchdog.bytes += len(data)
                    ended = core.receive(data, now)
                    inside = inside + len(data) if ended == 0 else 0
                    if ended == 0 and (deadline is None or deadline > now):
                        # The bytes only continued a frame: nothing the core sends, does or
                        # waits for has changed, so the step ends here.  A pty hands over 4 to
                        # 6 KiB a read, so this is ten of eleven reads of a 64 KiB write.
                        if self.events is not None:
                            self.events.release()
                        if self.watchdog is not None:
                            self.watchdog.check(core, now)
                        continue
                stepped = now
                deadline = core.next_deadline()
                if deadline is not None and deadline <= now:
                    core.tick(now)
                self._flush(now)
                core.idle()  # work nothing waits for, once the bytes are out
                self._flush(now)  # what that work had to say (a failure found in it)
                if self.events is not None:
                    self.events.release()
                self._act()
                notes = getattr(port, "notes", None)  # stand-in ports in tests have none
                if self.events is not None and notes is not None:
                    for kind, fields in notes():
                        self.events(kind, **fields)
                deadline = self.core.next_deadline()  # after the tick, the idle work and a reboot
                if self.watchdog is not None:
                    self.watchdog.check(core, now)
                self._check_events()
                if self.check is not None:
                    self.check()
        except Stop:
            self._flush()  # the last answers still go out; after a power cut nothing does
            port.flush()
            raise
        finally:
            if wake is not None:
                wake.close()
                port.wake = None
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            for s, handler in asked.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
            if self.events is not None:
                self.events.release()  # a power cut loses the step's bytes, never its events

    def start(self) -> None:
        """Send what the core has to say at boot (a primary's first ping) and carry out what it
        asked for (e.g. a device that halts at once)."""
        self._flush()
        self._act()
        self._check_events()
        if self.check is not None:
            self.check()

    def _check_events(self) -> None:
        """A side whose event lines cannot be written ends: it would go on unwatched, and a
        reader that went away has stopped watching (as a closed pipe ends any program)."""
        if self.events is not None and self.events.outlet.code is not None:
            raise Stop(self.events.outlet.code, "the event lines cannot be written")

    def _act(self) -> None:
        while self.core.actions:
            action = self.core.actions.pop(0)
            self._flush()
            replaced = self.on_action(action, self.port)
            if replaced is not None:
                self.core = replaced
                self._flush()

    def _flush(self, now: float | None = None) -> None:
        out = self.core.data_to_send()
        if out:
            self.port.write(out, now)


class Silence:
    """Says once, with counts and the likely cause, when a side hears nothing it can use.

    After ``after`` seconds with no byte at all, or with bytes but no valid frame, it emits one
    ``no_peer`` event, as esptool says "No serial data received": a user on real hardware
    learns to check the wiring, the baud rate or the framing instead of waiting.
    """

    def __init__(self, emit: Callable[..., None], framing: str, baud: int, after: float = 5.0):
        self.emit = emit
        self.framing = framing
        self.baud = baud
        self.after = after
        self.started = time.monotonic()
        self.bytes = 0
        self.said = False

    def check(self, core: Core, now: float) -> None:
        if self.said or now - self.started < self.after:
            return
        ep = getattr(core, "ep", None)
        frames = ep.decoder_stats.get("frames", 0) if ep is not None else 0
        if frames:
            self.said = True  # a peer speaks our framing: nothing to say
            return
        self.said = True
        if self.bytes == 0:
            self.emit(Event.NO_PEER, seconds=round(now - self.started, 1), bytes=0,
                      hint=f"no bytes at all in {self.after:.0f} s: is the peer powered and running, "
                           "are TX and RX crossed (TX to RX), is it the right port?")
        else:
            drops = {k: v for k, v in ep.decoder_stats.items() if k != "frames" and v} if ep is not None else {}
            self.emit(Event.NO_PEER, seconds=round(now - self.started, 1), bytes=self.bytes, dropped=drops,
                      hint=f"{self.bytes} bytes but no valid {self.framing} frame: check --framing "
                           f"(cobs or blynk) and --baud ({self.baud})")


class Stop(Exception):
    """End a side: its exit code, the reason its exit event gives, and for a verdict the
    line a person reads (``OK: text`` or ``FAILED: text``)."""

    def __init__(self, code: int, reason: str, text: str | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.text = text
