"""The emulated primary MCU: one power-on, from the bootloader to a reboot request.

A :class:`PrimaryDevice` keeps no state but the flash.  It is made at each (re)boot; when it
wants to reboot it says so in ``actions`` and the shell (or a test) throws it away and makes a
new one from the same flash.  Like every core it is sans-IO:

    receive(data, now) · tick(now) · next_deadline() · data_to_send() · actions

After the bootloader has chosen a slot the application reads its firmware tag, then talks to
the NCP the way the Blynk.NCP driver does: ping until it answers, getNcpVersion,
setFirmwareInfo (the tag's values, so report and tag always agree), initialize, getState.
A successful initialisation is the health check; an image on trial is confirmed after it.
The heartbeat asks the NCP's state every ``heartbeat`` seconds and starts over after three
misses, or at once when the NCP says it is not initialised (it restarted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dualmcu.image.firmware import TEST_KEY, read_info_streamed
from dualmcu.framing import Profile
from dualmcu.rpc import PRIMARY, Call, Incoming
from dualmcu.rpc.device import Device, Halt, Reboot, SetBaud
from dualmcu.rpc.interface import EVENTS, STATES

from .boot import Bootloader, BootResult, Trust
from .flash import Flash
from .ota import OtaConfig, OtaReceiver

UNKNOWN_INFO = {"mcu": "0.0.0", "fw-type": "unknown", "build": "unknown", "blynk": "0.0.0"}


@dataclass
class PrimaryConfig:
    ota: OtaConfig = field(default_factory=OtaConfig)
    attempts: int = 3
    heartbeat: float = 10.0
    template_name: str = "dualmcu"
    ping_retry: float = 0.25
    reinit_after: float = 1.0
    answer_unknown: bool = False
    baud: int | None = None  # ask the NCP to switch to this baud rate after initialising
    trust: Trust | None = None  # keys and target for signed images; None: unsigned accepted


class PrimaryDevice(Device):
    def __init__(self, flash: Flash, profile: Profile, config: PrimaryConfig, now: float,
                 emit: Callable[..., None] | None = None):
        super().__init__(PRIMARY, profile, now, emit, config.answer_unknown)
        self.flash = flash
        self.cfg = config
        self.ready = False
        self._misses = 0
        self.bootloader = Bootloader(flash, attempts=config.attempts, trust=config.trust)
        if config.trust is None or not config.trust.keys:
            self.emit("trust", keys=0, note="no key trusted: unsigned images are accepted")
        else:
            self.emit("trust", keys=len(config.trust.keys), target=config.trust.target)
        self.boot: BootResult = self.bootloader.boot()
        for kind, fields in self.boot.events:
            self.emit(kind, **fields)
        self.ota: OtaReceiver | None = None
        if self.boot.slot is None:
            self.emit("halted", reason="no_bootable_image")
            self.actions.append(Halt("no_bootable_image"))
            return
        rec = self.boot.state.slots[self.boot.slot]
        base = flash.geometry.slot_offset(self.boot.slot)
        info = read_info_streamed(lambda pos, n: flash.read(base + pos, n), rec.length)
        # An image whose tag lacks the version or the type cannot describe itself to the NCP:
        # it runs with placeholders, and on trial it fails its health check (a rollback),
        # never a crash at every boot.
        self.described = bool(info and info.get("mcu") and info.get("fw-type"))
        self.info = {**UNKNOWN_INFO, **{k: v for k, v in (info or {}).items() if v}}
        self.emit("booted", slot="AB"[self.boot.slot], trial=self.boot.trial, version=self.info["mcu"],
                  fw_type=self.info["fw-type"], tagged=info is not None)
        behaviour = self.info.get(TEST_KEY)
        if behaviour == "crash":
            self.emit("crashed", reason="test_image_crash")
            self.actions.append(Reboot("crash"))
            return
        for name, handler in (
            ("mcu_ping", lambda inc: None),
            ("mcu_reboot", self._on_reboot),
            ("mcu_hasUID", lambda inc: self.ep.serves(inc.args["uid"])),
            ("client_blynkStateChange", self._on_state),
            ("client_blynkVPinChange", self._on_vpin),
            ("client_processEvent", self._on_event),
        ):
            self.ep.handle(name, handler)
        self.ota = OtaReceiver(self.ep, flash, self.bootloader, self.boot.state, self.info, config.ota,
                               self.emit, self.request_reboot, self._hang)
        self._init()

    # -- the core interface ------------------------------------------------------------------

    def _hang(self) -> None:
        self.hung = True

    def receive(self, data: bytes, now: float) -> None:
        if not getattr(self, "hung", False):  # a hung MCU reads nothing (a planted defect)
            super().receive(data, now)

    def _tick(self, now: float) -> None:
        if self.ota is not None:
            self.ota.tick(now)

    def _deadlines(self) -> tuple[float | None, ...]:
        return (self.ota.next_deadline(),) if self.ota is not None else ()

    def request_reboot(self, reason: str) -> None:
        self.emit("rebooting", reason=reason)
        self.actions.append(Reboot(reason))

    # -- NCP initialisation, as the driver does it ---------------------------------------------

    def _init(self) -> None:
        self.ready = False
        self._misses = 0
        self.ep.call("ncp_ping", on_done=self._pinged)

    def _pinged(self, c: Call) -> None:
        if c.ok:
            self._steps = [
                ("blynk_getNcpVersion", None),
                ("blynk_setFirmwareInfo", {"type": self.info["fw-type"], "version": self.info["mcu"],
                                           "build": self.info.get("build", ""), "blynk": self.info.get("blynk", "")}),
                ("blynk_initialize", {"template_id": self.info["fw-type"], "template_name": self.cfg.template_name}),
                ("blynk_getState", None),
            ]
            self._next_step()
        else:
            self._after("init", self.cfg.ping_retry)

    def _timer_init(self) -> None:
        self._init()

    def _next_step(self, c: Call | None = None) -> None:
        if c is not None:
            if not c.ok:
                self.emit("ncp_init_failed", call=c.fn.name, status=c.status)
                self._after("init", self.cfg.reinit_after)
                return
            if c.fn.name == "blynk_getNcpVersion":
                self.emit("ncp_version", version=c.values.get("version"))
            elif c.fn.name == "blynk_getState":
                self.emit("ncp_state", state=STATES.get(c.result, c.result))
        if self._steps:
            name, args = self._steps.pop(0)
            self.ep.call(name, args, on_done=self._next_step)
            return
        if self.cfg.baud and not getattr(self, "_baud_done", False):
            self.ep.call("hw_setUartBaudRate", {"baud": self.cfg.baud}, on_done=self._baud_set)
            return
        self.ready = True
        self.emit("ready", version=self.info["mcu"])
        self._health_check()
        self._after("heartbeat", self.cfg.heartbeat)

    def _baud_set(self, c: Call) -> None:
        self._baud_done = True
        if not (c.ok and c.result):
            self.emit("baud_change_refused", baud=self.cfg.baud, status=c.status)
            return self._next_step()
        # Both ends switch once the RESULT is through; then ping until the NCP answers at the
        # new rate (the first ping may be lost while the NCP's UART settles).
        self.actions.append(SetBaud(self.cfg.baud))
        self._baud_ping()

    def _baud_ping(self) -> None:
        def answered(c: Call) -> None:
            if c.ok:
                self.emit("baud_changed", baud=self.cfg.baud)
                self._next_step()
            else:
                self.emit("baud_ping_lost", baud=self.cfg.baud)
                self._after("baud_ping", self.cfg.ping_retry)

        self.ep.call("ncp_ping", on_done=answered)

    def _timer_baud_ping(self) -> None:
        self._baud_ping()

    def _health_check(self) -> None:
        if not self.boot.trial:
            return
        if self.info.get(TEST_KEY) == "fail-health" or not self.described:
            self.emit("health_check_failed", version=self.info["mcu"])
            self.request_reboot("health_check_failed")
            return
        self.boot = BootResult(self.boot.slot, False, self.bootloader.confirm(), ())
        if self.ota is not None:
            self.ota.boot_state = self.boot.state
        self.emit("confirmed", slot="AB"[self.boot.slot], version=self.info["mcu"])

    def _timer_heartbeat(self) -> None:
        # getState rather than a bare ping: an NCP that restarted answers "not initialised",
        # and the primary initialises it again (it would otherwise never learn our firmware).
        def beat(c: Call) -> None:
            if c.ok:
                self._misses = 0
                if STATES.get(c.result) == "not_initialized":
                    self.emit("ncp_restarted")
                    self._init()
                    return
            else:
                self._misses += 1
                if self._misses >= 3:
                    self.emit("ncp_lost", misses=self._misses)
                    self._init()
                    return
            self._after("heartbeat", self.cfg.heartbeat)

        self.ep.call("blynk_getState", on_done=beat)

    # -- the rest of the primary's interface ---------------------------------------------------

    def _on_reboot(self, inc: Incoming) -> bool:
        inc.then = lambda: self.request_reboot("ncp_request")
        return True

    def _on_state(self, inc: Incoming) -> None:
        self.emit("ncp_state", state=STATES.get(inc.args["state"], inc.args["state"]))

    def _on_vpin(self, inc: Incoming) -> None:
        self.emit("vpin_change", vpin=inc.args["vpin"], value=inc.args["value"].hex())

    def _on_event(self, inc: Incoming) -> None:
        event = inc.args["event"]
        self.emit("ncp_event", event=EVENTS.get(event, event))
        if event == 1:  # the NCP is rebooting: initialise it again once it is back
            self.ready = False
            self._timers.pop("heartbeat", None)
            self._after("init", self.cfg.reinit_after)
