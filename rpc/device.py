"""What both emulated sides share: an endpoint, named timers, events and actions.

A device is a sans-IO core.  Its shell calls ``receive``, ``tick``, ``next_deadline``,
``data_to_send`` and, once the bytes are out, ``idle``, and carries out the :data:`Action`
items the device appends to ``actions``: only a shell can reboot a process, switch a port's
baud rate or end a program.

Timers have names.  A subclass lists them once, with what each one does, in
:meth:`Device._timer_table`; it arms one with ``_after(name, delay)`` (re-arming replaces
it), and arming a name the table does not have is an error at once, not when it fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from dualmcu.framing import Profile

from .endpoint import Endpoint, earliest
from .events import Event, checked


@dataclass(frozen=True)
class Reboot:
    """Throw this core away and boot a new one: the UART comes back at its initial rate."""

    reason: str


@dataclass(frozen=True)
class SetBaud:
    """Switch the port to ``baud`` now that what was queued has gone out at the old rate."""

    baud: int


@dataclass(frozen=True)
class Exit:
    """End the program with this verdict (a side run with --once): how the update ended."""

    verdict: str


@dataclass(frozen=True)
class Halt:
    """Nothing can run: the bootloader found no bootable image."""

    reason: str


Action = Union[Reboot, SetBaud, Exit, Halt]


class Device:
    def __init__(self, side: str, profile: Profile, now: float, emit: Callable[..., None] | None,
                 answer_unknown: bool = False, blocking: bool = False):
        self._emit = emit or (lambda kind, **fields: None)
        self.ep = Endpoint(side, profile, answer_unknown=answer_unknown, on_event=self.emit, blocking=blocking)
        self.ep.now = now
        self.actions: list[Action] = []
        self._timers: dict[str, float] = {}
        self._on_timer: dict[str, Callable[[], None]] = self._timer_table()

    # -- the core interface ------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> int:
        """Bytes from the wire; how many frames they ended (see :meth:`Endpoint.receive`)."""
        ended = self.ep.receive(data, now)
        if ended:
            self._settle()
        return ended

    def tick(self, now: float) -> None:
        self.ep.now = now
        self.ep.tick(now)
        self._tick(now)
        for name, when in list(self._timers.items()):
            if when <= now and self._timers.get(name) == when:
                del self._timers[name]
                self._on_timer[name]()
        self._settle()

    def next_deadline(self) -> float | None:
        return earliest(self.ep.next_deadline(), *self._deadlines(), *self._timers.values())

    def data_to_send(self) -> bytes:
        return self.ep.data_to_send()

    # -- for subclasses ----------------------------------------------------------------------

    def _timer_table(self) -> dict[str, Callable[[], None]]:
        """Every timer the device arms, and what it does when it fires."""
        return {}

    def _tick(self, now: float) -> None:
        """Deadlines of parts the device owns (e.g. its OTA receiver)."""

    def _deadlines(self) -> tuple[float | None, ...]:
        return ()

    def _settle(self) -> None:
        """Runs after every input and tick: the place to start work that waits for a moment."""

    def idle(self) -> None:
        """Work nothing waits for.  The shell calls this once a step's bytes are out (and a
        simulation after each step): what is done here, such as framing the next write or
        persisting the progress a write made, is off the round trip.  It sends nothing,
        unless that work fails and the device must say so."""

    def emit(self, kind: Event, **fields: Any) -> None:
        self._emit(checked(kind), t=round(self.ep.now, 6), **fields)

    def _after(self, name: str, delay: float) -> None:
        if name not in self._on_timer:
            raise ValueError(f"{type(self).__name__} has no timer {name!r}")
        self._timers[name] = self.ep.now + delay
