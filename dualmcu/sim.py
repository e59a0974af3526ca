"""Both cores in one process, joined by the link model, on a virtual clock.

This is what the tests use to run whole updates in microseconds, and what the in-process
tools build on.  It plays the part of the two shells: it moves bytes between the cores through
a :class:`~dualmcu.link.Link`, advances the clock to the next deadline, and carries out the
cores' actions: a primary reboot (or a power cut during a flash operation) makes a new
PrimaryDevice from the same flash, an NCP reboot a new NcpDevice, a baud change re-paces the
link.

``tap_to_primary`` / ``tap_to_ncp`` let a test see, drop or change every chunk of bytes a side
sends (a function of the bytes, returning the bytes to put on the link), so that lost RESULTs,
resends and timeouts happen exactly where a test wants them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from dualmcu.framing import get_profile
from dualmcu.ncp.core import NcpConfig, NcpDevice
from dualmcu.ncp.outcome import Outcome
from dualmcu.ncp.update import Network, Shipment, Store
from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
from dualmcu.primary.flash import Flash, PowerCut
from dualmcu.rpc.device import Exit, Halt, Reboot, SetBaud
from dualmcu.rpc.events import Event

from .link import Link, LinkConfig

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
        link: LinkConfig | None = None,
        latency: float = 0.0005,
        tap_to_primary: Tap | None = None,
        tap_to_ncp: Tap | None = None,
    ):
        self.now = 0.0
        self.events: list[tuple[str, str, dict]] = []
        self.framing = framing
        self.flash = flash
        self.link = Link(link or LinkConfig(latency=latency))
        self.tap_to_primary = tap_to_primary
        self.tap_to_ncp = tap_to_ncp
        self.primary_config = primary_config or PrimaryConfig()
        self.ncp_config = ncp_config or NcpConfig()
        if self.ncp_config.baud is None and self.link.cfg.baud:
            # The NCP knows the rate of its own UART; the caller's config object stays as given.
            self.ncp_config = replace(self.ncp_config, baud=self.link.cfg.baud)
        self.shipment = shipment
        self.network = network
        self.store = Store()
        self.halted: str | None = None
        self.ncp_exit: str | None = None  # the verdict an NCP run --once ended on
        self.ncp = self._boot_ncp()
        self.primary = self._boot_primary()

    def _emitter(self, side: str) -> Callable[..., None]:
        def emit(kind: Event, **fields: Any) -> None:
            self.events.append((side, kind, fields))

        return emit

    def _boot_ncp(self) -> NcpDevice:
        return NcpDevice(get_profile(self.framing), self.ncp_config, self.now, self.shipment, self.network,
                         self.store, emit=self._emitter("ncp"))

    def _boot_primary(self) -> PrimaryDevice:
        while True:
            try:
                return PrimaryDevice(self.flash, get_profile(self.framing), self.primary_config, self.now,
                                     emit=self._emitter("primary"))
            except PowerCut as cut:  # the bootloader itself writes the boot state
                self._power_cut(cut)

    def _power_cut(self, cut: PowerCut) -> None:
        self.events.append(("primary", Event.POWER_CUT, {"t": self.now, "op": cut.op, "operation": cut.kind,
                                                     "applied": cut.applied}))

    # -- restarts a test (or a rule) may ask for ------------------------------------------------

    def restart_primary(self) -> None:
        """Power-cycle the primary: a new device from the same flash, nothing else kept."""
        self.primary = self._boot_primary()

    def restart_ncp(self) -> None:
        self.ncp = self._boot_ncp()

    def kinds(self, side: str | None = None) -> list[str]:
        return [k for s, k, _ in self.events if side is None or s == side]

    def find(self, kind: str, side: str | None = None) -> list[dict]:
        return [f for s, k, f in self.events if k == kind and (side is None or s == side)]

    # -- the loop --------------------------------------------------------------------------------

    def _primary_does(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except PowerCut as cut:
            self._power_cut(cut)
            self.primary = self._boot_primary()

    def _flush(self) -> None:
        for side, core, tap in (("a", self.ncp, self.tap_to_primary), ("b", self.primary, self.tap_to_ncp)):
            data = core.data_to_send()
            if data and tap is not None:
                data = tap(data)
            if data:
                self.link.send(side, data, self.now)

    def _actions(self) -> None:
        while self.primary.actions:
            match self.primary.actions.pop(0):
                case Reboot():
                    self.primary = self._boot_primary()
                case Halt(reason):
                    self.halted = reason
                case SetBaud(baud):
                    self.link.set_baud(baud, self.now)
        while self.ncp.actions:
            match self.ncp.actions.pop(0):
                case Exit(verdict):  # an NCP run --once would end here, on this verdict
                    self.ncp_exit = verdict
                case Reboot():
                    self.ncp = self._boot_ncp()
                case SetBaud(baud):
                    self.link.set_baud(baud, self.now)

    def step(self) -> bool:
        """Advance to the next thing that happens; False when nothing ever will."""
        self._flush()
        self._actions()
        deadlines = [d for d in (self.ncp.next_deadline(), self.primary.next_deadline(),
                                 self.link.next_deadline()) if d is not None]
        if not deadlines:
            return False
        self.now = max(self.now, min(deadlines))
        to_ncp = self.link.receive("a", self.now)
        if to_ncp:
            self.ncp.receive(to_ncp, self.now)
        to_primary = self.link.receive("b", self.now)
        if to_primary:
            self._primary_does(lambda: self.primary.receive(to_primary, self.now))
        self.ncp.tick(self.now)
        self._primary_does(lambda: self.primary.tick(self.now))
        self._flush()
        self.ncp.idle()  # as a shell does once the bytes are out
        self._primary_does(self.primary.idle)
        self._actions()
        return True

    def run_until(self, done: Callable[[Simulation], bool], limit: float = 600.0) -> bool:
        """Step until ``done(self)`` holds or the virtual clock passes ``limit`` seconds."""
        while not done(self):
            if self.halted or self.now > limit or not self.step():
                return done(self)
        return True

    def in_flight(self) -> bool:
        return self.link.next_deadline() is not None or bool(self.ncp.ep.pending)

    def run_update(self, limit: float = 600.0) -> str | None:
        """Run until the NCP has an outcome and the primary has settled on a confirmed image."""
        def settled(sim: Simulation) -> bool:
            if sim.ncp.outcome is None or sim.in_flight():
                return False
            if sim.ncp.outcome is Outcome.SUCCESS:
                return Event.CONFIRMED in sim.kinds("primary") or sim.primary.boot.trial is False and sim.primary.ready
            return sim.primary.ready and not sim.primary.boot.trial

        self.run_until(settled, limit)
        return self.ncp.outcome
