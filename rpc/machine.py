"""State machines as data: a transition table and the one function that makes every move.

Each machine of the emulators (the NCP's update sender, the primary's OTA receiver) is a
:class:`Machine` over an ``Enum`` of states and an ``Enum`` of events.  Its table says, for each
state, which events it accepts and where each one leads; :meth:`Machine.fire` is the only way
to change the state, and an event the table does not list for the current state raises
:class:`IllegalMove` instead of being ignored.  A reader finds every legal move in one place,
and the tests check every cell of it.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Generic, Mapping, TypeVar

S = TypeVar("S", bound=Enum)
E = TypeVar("E", bound=Enum)


class IllegalMove(RuntimeError):
    """An event that the current state does not accept: a bug in the caller, never input."""


class Machine(Generic[S, E]):
    def __init__(self, name: str, table: Mapping[S, Mapping[E, S]], initial: S,
                 on_move: Callable[[S, E, S], None] | None = None):
        self.name = name
        self.table = table
        self._state = initial
        self.on_move = on_move

    @property
    def state(self) -> S:
        return self._state

    def can(self, event: E) -> bool:
        return event in self.table.get(self._state, {})

    def fire(self, event: E) -> S:
        try:
            new = self.table[self._state][event]
        except KeyError:
            raise IllegalMove(f"{self.name}: {event.name} is not a move from {self._state.name}") from None
        old, self._state = self._state, new
        if self.on_move is not None:
            self.on_move(old, event, new)
        return new
