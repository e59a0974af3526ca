"""Both cores in one process, joined by an in-memory link, on a virtual clock.

This is what the tests use to run whole updates in microseconds, and what the in-process
modes of the tools build on.  It plays the part of the two shells: it moves bytes between the
cores, advances the clock to the next deadline when nothing is in flight, and carries out the
cores' actions (a primary reboot makes a new PrimaryDevice from the same flash).

The link is exact by default.  ``tap_to_primary`` / ``tap_to_ncp`` let a test see, drop or
change every chunk of bytes in flight (a function of the bytes, returning the bytes to
deliver), and ``latency`` delays delivery, so that lost RESULTs, resends and timeouts happen
exactly where a test wants them.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

from framing import get_profile
from ncp.core import NcpConfig, NcpDevice
from ncp.update import Network, Shipment, Store
from primary.device import PrimaryConfig, PrimaryDevice
from primary.flash import Flash

Tap = Callable[[bytes], bytes]


class Simulation:
    def __init__(
        self,
        flash: Flash,
        shipment: Shipment | None,
        *,
        framing: str = "cobs",
        ncp_config: NcpConfig | None = None,
        primary_config: PrimaryConfig | None = None,
        network: Network | None = None,
        latency: float = 0.0005,
        tap_to_primary: Tap | None = None,
        tap_to_ncp: Tap | None = None,
    ):
        self.now = 0.0
        self.events: list[tuple[str, str, dict]] = []
        self.framing = framing
        self.flash = flash
        self.latency = latency
        self.tap_to_primary = tap_to_primary
        self.tap_to_ncp = tap_to_ncp
        self.primary_config = primary_config or PrimaryConfig()
        self.ncp = NcpDevice(get_profile(framing), ncp_config or NcpConfig(), 0.0, shipment, network,
                             Store(), emit=self._emitter("ncp"))
        self.primary = self._boot_primary()
        self.boots = 1
        self.halted: str | None = None
        self.exit: str | None = None
        self._wire: list[tuple[float, int, str, bytes]] = []
        self._seq = itertools.count()

    def _emitter(self, side: str) -> Callable[..., None]:
        def emit(kind: str, **fields: Any) -> None:
            self.events.append((side, kind, fields))

        return emit

    def _boot_primary(self) -> PrimaryDevice:
        return PrimaryDevice(self.flash, get_profile(self.framing), self.primary_config, self.now,
                             emit=self._emitter("primary"))

    def kinds(self, side: str | None = None) -> list[str]:
        return [k for s, k, _ in self.events if side is None or s == side]

    def find(self, kind: str, side: str | None = None) -> list[dict]:
        return [f for s, k, f in self.events if k == kind and (side is None or s == side)]

    def _flush(self) -> None:
        for side, core, tap, dest in (("ncp", self.ncp, self.tap_to_primary, "primary"),
                                      ("primary", self.primary, self.tap_to_ncp, "ncp")):
            data = core.data_to_send()
            if data and tap is not None:
                data = tap(data)
            if data:
                heapq.heappush(self._wire, (self.now + self.latency, next(self._seq), dest, data))

    def _actions(self) -> None:
        for kind, arg in self.primary.actions:
            if kind == "reboot":
                self.primary = self._boot_primary()
                self.boots += 1
                return self._actions()
            if kind == "halt":
                self.halted = arg
        self.primary.actions.clear()
        for kind, arg in self.ncp.actions:
            if kind == "exit":
                self.exit = arg
            elif kind == "reboot":
                old = self.ncp
                self.ncp = NcpDevice(get_profile(self.framing), old.cfg, self.now, old.shipment, old.net,
                                     old.store, emit=self._emitter("ncp"))
        self.ncp.actions.clear()

    def step(self) -> bool:
        """Advance to the next thing that happens; False when nothing ever will."""
        self._flush()
        self._actions()
        deadlines = [d for d in (self.ncp.next_deadline(), self.primary.next_deadline()) if d is not None]
        if self._wire:
            deadlines.append(self._wire[0][0])
        if not deadlines:
            return False
        self.now = max(self.now, min(deadlines))
        while self._wire and self._wire[0][0] <= self.now:
            _, _, dest, data = heapq.heappop(self._wire)
            (self.ncp if dest == "ncp" else self.primary).receive(data, self.now)
        self.ncp.tick(self.now)
        self.primary.tick(self.now)
        self._flush()
        self._actions()
        return True

    def run_until(self, done: Callable[[Simulation], bool], limit: float = 600.0) -> bool:
        """Step until ``done(self)`` holds or the virtual clock passes ``limit`` seconds."""
        while not done(self):
            if self.halted or self.now > limit or not self.step():
                return done(self)
        return True

    def run_update(self, limit: float = 600.0) -> str | None:
        """Run until the NCP has an outcome and the primary has settled on a confirmed image."""
        def settled(sim: Simulation) -> bool:
            if sim.ncp.outcome is None or sim._wire or sim.ncp.ep.pending:
                return False
            if sim.ncp.outcome == "success":
                return "confirmed" in sim.kinds("primary") or sim.primary.boot.trial is False and sim.primary.ready
            return sim.primary.ready and not sim.primary.boot.trial

        self.run_until(settled, limit)
        return self.ncp.outcome
