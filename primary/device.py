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

Before any of that the application loads its configuration (config.py): on the first boot
of a new image it is carried forward from the confirmed image's store and migrated.

The commit timer
----------------
An image on trial that neither confirms nor crashes (it hangs, or its health check never
ends) is rolled back when ``commit_timeout`` seconds pass after its boot, as Mongoose OS's
commit timeout and ESP-IDF's rollback do: the timer is the bootloader's (a watchdog), so it
fires even when the application reads nothing.  A failed health check rolls back at once,
without spending the boot attempts that are meant for crashes.

Telemetry
---------
Once the NCP is initialised, and whenever the update state changes, the primary reports to
the cloud through ``blynk_setMetadata("dualmcu_telemetry", JSON)``: version, rollback index,
update state (idle, deferred, downloading, written, trial, confirmed, rolled_back, refused,
failed) with its reason, boot and crash-loop counters, rollbacks, the last failure (kept in
the boot state across reboots), hardware revision, bootloader and configuration schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import json

from dualmcu.image.firmware import TEST_KEY, read_info_streamed
from dualmcu.framing import Profile
from dualmcu.rpc import PRIMARY, Call, Incoming
from dualmcu.rpc.device import Device, Halt, Reboot, SetBaud
from dualmcu.rpc.events import Event
from dualmcu.rpc.interface import EVENTS, POLICY_VPIN, STATES, TELEMETRY_FIELD

from .boot import Bootloader, BootResult, Trust
from .config import ConfigRecord, ConfigStore, load_for_boot, schema_of
from .flash import Flash
from .ota import OtaConfig, OtaReceiver, Policy

DEFAULT_COMMIT_TIMEOUT = 60.0  # seconds a trial image has to confirm
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
    blocking: bool = False  # serve nothing while an own call waits for its answer (as the Blynk C driver)
    baud: int | None = None  # ask the NCP to switch to this baud rate after initialising
    trust: Trust | None = None  # keys and target for signed images; None: unsigned accepted
    commit_timeout: float = DEFAULT_COMMIT_TIMEOUT  # seconds an image on trial has to confirm before it is rolled back




def behaviour_of(info: dict[str, str]) -> tuple[str, float]:
    """A test image's behaviour (image/firmware.py), and its argument (slow-confirm:SECONDS)."""
    text = info.get(TEST_KEY, "")
    name, _, arg = text.partition(":")
    try:
        seconds = float(arg) if arg else 0.0
    except ValueError:
        seconds = 0.0
    return name, seconds


class PrimaryDevice(Device):
    def __init__(self, flash: Flash, profile: Profile, config: PrimaryConfig, now: float,
                 emit: Callable[..., None] | None = None):
        super().__init__(PRIMARY, profile, now, emit, config.answer_unknown, config.blocking)
        self.flash = flash
        self.cfg = config
        self.ready = False
        self.hung = False  # a test image that hangs reads nothing
        self._misses = 0
        self._steps: list[tuple[str, dict | None]] = []
        self._baud_done = False
        self.ota_state, self.ota_reason = "idle", ""
        self.config: ConfigRecord | None = None
        self.bootloader = Bootloader(flash, attempts=config.attempts, trust=config.trust,
                                     on_unsaved=lambda error: self.emit(Event.BOOT_STATE_NOT_SAVED, error=error))
        if config.trust is None or not config.trust.keys:
            self.emit(Event.TRUST, keys=0, note="no key trusted: unsigned images are accepted")
        else:
            self.emit(Event.TRUST, keys=len(config.trust.keys), target=config.trust.target)
        self.boot: BootResult = self.bootloader.boot()
        for kind, fields in self.boot.events:
            self.emit(kind, **fields)
            if kind == "rollback":
                self.ota_state, self.ota_reason = "rolled_back", fields["reason"]
        self.ota: OtaReceiver | None = None
        if self.boot.slot is None:
            self.emit(Event.HALTED, reason="no_bootable_image")
            self.actions.append(Halt("no_bootable_image"))
            return
        if self.boot.trial:
            self.ota_state = "trial"
            # The bootloader's watchdog: armed before the image runs a single instruction.
            self._after("commit", config.commit_timeout)
        rec = self.boot.state.slots[self.boot.slot]
        base = flash.geometry.slot_offset(self.boot.slot)
        info = read_info_streamed(lambda pos, n: flash.read(base + pos, n), rec.length)
        # An image whose tag lacks the version or the type cannot describe itself to the NCP:
        # it runs with placeholders, and on trial it fails its health check (a rollback),
        # never a crash at every boot.
        self.described = bool(info and info.get("mcu") and info.get("fw-type"))
        self.info = {**UNKNOWN_INFO, **{k: v for k, v in (info or {}).items() if v}}
        self.behaviour, self.behaviour_arg = behaviour_of(self.info)
        only_on = self.info.get(TEST_KEY + "-hw-rev")
        if only_on is not None and flash.identity.hw_rev not in only_on.replace(",", " ").split():
            self.behaviour, self.behaviour_arg = "", 0.0  # a bug of some hardware revisions only
        self.emit(Event.BOOTED, slot="AB"[self.boot.slot], trial=self.boot.trial, version=self.info["mcu"],
                  fw_type=self.info["fw-type"], tagged=info is not None, boots=self.boot.state.boots,
                  crash_loop=self.boot.state.crash_loop, hw_rev=flash.identity.hw_rev,
                  bootloader=flash.identity.bootloader)
        if self.behaviour == "crash":
            self.emit(Event.CRASHED, reason="test_image_crash")
            self.actions.append(Reboot("crash"))
            return
        self._load_config()
        if self.behaviour == "hang":
            self.emit(Event.HUNG, note="a test image that never confirms and never crashes")
            self.hung = True
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
                               self.emit, self.request_reboot, self._hang, self._report)
        self._init()

    def _load_config(self) -> None:
        state, slot = self.boot.state, self.boot.slot
        other = 1 - slot
        other_ok = state.confirmed == other and state.slots[other].installed
        schema = schema_of(self.info)
        loaded = load_for_boot(self.flash, slot, other_ok, state.slots[slot].sha256, schema,
                               state.slots[other].sha256 if other_ok else None)
        if loaded.record is None:
            # Written by a newer schema than this image reads: never guess at it.
            self.emit(Event.CONFIG_UNREADABLE, schema=loaded.from_schema, own_schema=schema)
            self._fail("config_unreadable")
            if not self.boot.trial:
                self.config = ConfigStore(self.flash, slot).store(ConfigRecord(schema, state.slots[slot].sha256[:8],
                                                                               {"device_name": "dualmcu"}))
            return
        self.config = loaded.record
        self.emit(Event.CONFIG_LOADED, schema=loaded.record.schema, source=loaded.source, from_schema=loaded.from_schema,
                  keys=len(loaded.record.values))
        if self.behaviour == "breaking-migration" and self.boot.trial:
            # The defect this image stands for: a migration the old image could not read
            # (a key renamed, a unit changed), written over its own store only.
            values = dict(self.config.values)
            values["report_interval_ms"] = str(int(values.pop("report_interval_s", "60")) * 1000)
            self.config = ConfigStore(self.flash, slot).store(ConfigRecord(schema, self.config.owner, values))
            self.emit(Event.CONFIG_MIGRATED, schema=schema, breaking=True)

    def _fail(self, reason: str) -> None:
        """Keep ``reason`` as the last failure in the boot state."""
        state = self.bootloader.record_failure(reason)
        if self.ota is not None:
            self.ota.boot_state = state

    def _report(self, state: str, reason: str) -> None:
        """The OTA receiver's update state: persisted when it is a failure, then reported."""
        self.ota_state, self.ota_reason = state, reason
        # A malformed offer is not persisted: a broken or hostile sender must not be able to
        # make the device write its flash at will.
        if state in ("refused", "failed") and reason and reason != "bad_offer":
            self._fail(reason)
        self._send_telemetry()

    def _send_telemetry(self) -> None:
        if not self.ready:
            return
        st = self.bootloader.store.load()
        report = {
            "version": self.info["mcu"], "rollback_index": st.security_counter if st else 0,
            "ota_state": self.ota_state, "ota_reason": self.ota_reason,
            "boots": st.boots if st else 0, "crash_loop": st.crash_loop if st else 0,
            "rollbacks": st.rollbacks if st else 0, "last_failure": st.last_failure_reason if st else "none",
            "hw_rev": self.flash.identity.hw_rev, "bootloader": self.flash.identity.bootloader,
            "config_schema": self.config.schema if self.config else None,
        }
        self.ep.notify("blynk_setMetadata", {"field": TELEMETRY_FIELD,
                                             "value": json.dumps(report, separators=(",", ":"))})
        self.emit(Event.TELEMETRY_SENT, ota_state=self.ota_state, ota_reason=self.ota_reason)

    # -- the core interface ------------------------------------------------------------------

    def _hang(self) -> None:
        self.hung = True

    def receive(self, data: bytes, now: float) -> int:
        if self.hung:  # a hung MCU reads nothing (a test image, or a planted defect)
            return 0
        return super().receive(data, now)

    def _timer_table(self) -> dict[str, Callable[[], None]]:
        return {"commit": self._timer_commit, "init": self._timer_init, "baud_ping": self._timer_baud_ping,
                "confirm": self._timer_confirm, "heartbeat": self._timer_heartbeat}

    def _timer_commit(self) -> None:
        if not self.boot.trial:
            return
        self.emit(Event.COMMIT_TIMEOUT, waited=self.cfg.commit_timeout, version=self.info["mcu"])
        self.bootloader.reject("commit_timeout")
        self.actions.append(Reboot("commit_timeout"))

    def _tick(self, now: float) -> None:
        if self.ota is not None:
            self.ota.tick(now)

    def idle(self) -> None:
        if self.ota is not None:
            self.ota.idle()

    def _deadlines(self) -> tuple[float | None, ...]:
        return (self.ota.next_deadline(),) if self.ota is not None else ()

    def request_reboot(self, reason: str) -> None:
        self.emit(Event.REBOOTING, reason=reason)
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
                self.emit(Event.NCP_INIT_FAILED, call=c.fn.name, status=c.status)
                self._after("init", self.cfg.reinit_after)
                return
            if c.fn.name == "blynk_getNcpVersion":
                self.emit(Event.NCP_VERSION, version=c.values.get("version"))
            elif c.fn.name == "blynk_getState":
                self.emit(Event.NCP_STATE, state=STATES.get(c.result, c.result))
        if self._steps:
            name, args = self._steps.pop(0)
            self.ep.call(name, args, on_done=self._next_step)
            return
        if self.cfg.baud and not self._baud_done:
            self.ep.call("hw_setUartBaudRate", {"baud": self.cfg.baud}, on_done=self._baud_set)
            return
        self.ready = True
        self.emit(Event.READY, version=self.info["mcu"])
        self._health_check()
        self._after("heartbeat", self.cfg.heartbeat)

    def _baud_set(self, c: Call) -> None:
        self._baud_done = True
        if not (c.ok and c.result):
            self.emit(Event.BAUD_CHANGE_REFUSED, baud=self.cfg.baud, status=c.status)
            return self._next_step()
        # Both ends switch once the RESULT is through; then ping until the NCP answers at the
        # new rate (the first ping may be lost while the NCP's UART settles).
        self.actions.append(SetBaud(self.cfg.baud))
        self._baud_ping()

    def _baud_ping(self) -> None:
        def answered(c: Call) -> None:
            if c.ok:
                self.emit(Event.BAUD_CHANGED, baud=self.cfg.baud)
                self._next_step()
            else:
                self.emit(Event.BAUD_PING_LOST, baud=self.cfg.baud)
                self._after("baud_ping", self.cfg.ping_retry)

        self.ep.call("ncp_ping", on_done=answered)

    def _timer_baud_ping(self) -> None:
        self._baud_ping()

    def _health_check(self) -> None:
        if not self.boot.trial:
            if self.boot.state.crash_loop:
                self.ota.boot_state = self.bootloader.healthy()
            self._send_telemetry()
            return
        self._send_telemetry()  # the cloud sees the trial before its verdict
        if self.behaviour in ("fail-health", "breaking-migration") or not self.described:
            self.emit(Event.HEALTH_CHECK_FAILED, version=self.info["mcu"])
            # Rolled back at the next boot, naming the reason; the attempts are for crashes.
            self.bootloader.reject("health_check_failed")
            self.request_reboot("health_check_failed")
            return
        if self.behaviour == "slow-confirm" and self.behaviour_arg > 0 and "confirm" not in self._timers:
            self.emit(Event.HEALTH_CHECK_RUNNING, seconds=self.behaviour_arg)
            self._after("confirm", self.behaviour_arg)
            return
        self._confirm()

    def _timer_confirm(self) -> None:
        if self.boot.trial:
            self._confirm()

    def _confirm(self) -> None:
        self._timers.pop("commit", None)
        self.boot = BootResult(self.boot.slot, False, self.bootloader.confirm(), ())
        if self.ota is not None:
            self.ota.boot_state = self.boot.state
        self.ota_state, self.ota_reason = "confirmed", ""
        self.emit(Event.CONFIRMED, slot="AB"[self.boot.slot], version=self.info["mcu"])
        self._send_telemetry()

    def _timer_heartbeat(self) -> None:
        # getState rather than a bare ping: an NCP that restarted answers "not initialised",
        # and the primary initialises it again (it would otherwise never learn our firmware).
        def beat(c: Call) -> None:
            if c.ok:
                self._misses = 0
                if STATES.get(c.result) == "not_initialized":
                    self.emit(Event.NCP_RESTARTED)
                    self._init()
                    return
            elif self.ep.last_heard is not None and self.ep.last_heard >= c.sent_at - self.cfg.heartbeat:
                # The NCP spoke within a heartbeat of the ping leaving (a write of a transfer,
                # say): it is alive, and the answer is only queued behind what it sends.  An
                # answered write is proof of life; a heartbeat must never end the transfer it
                # guards.  "Within a heartbeat", not "after": a 64 KiB write takes 5.7 s at
                # 115200, and a ping may time out between two of them.  A dead NCP is still
                # found, one heartbeat later.
                self._misses = 0
            else:
                self._misses += 1
                if self._misses >= 3:
                    self.emit(Event.NCP_LOST, misses=self._misses)
                    self._init()
                    return
            self._after("heartbeat", self.cfg.heartbeat)

        self.ep.call("blynk_getState", on_done=beat)

    # -- the rest of the primary's interface ---------------------------------------------------

    def _on_reboot(self, inc: Incoming) -> bool:
        inc.then = lambda: self.request_reboot("ncp_request")
        return True

    def _on_state(self, inc: Incoming) -> None:
        self.emit(Event.NCP_STATE, state=STATES.get(inc.args["state"], inc.args["state"]))

    def _on_vpin(self, inc: Incoming) -> None:
        vpin, value = inc.args["vpin"], inc.args["value"]
        if vpin == POLICY_VPIN and self.ota is not None:
            self.ota.policy = Policy.parse(value.decode("utf-8", "replace"))
            self.emit(Event.OTA_POLICY, mandatory=self.ota.policy.mandatory, min_version=self.ota.policy.min_version)
            return
        self.emit(Event.VPIN_CHANGE, vpin=vpin, value=value.hex())
        # A setting from the cloud lives in the configuration store (written only on change).
        key = f"V{vpin}"
        text = value.decode("utf-8", "replace")[:64]
        if self.config is not None and self.config.values.get(key) != text and len(self.config.values) < 32:
            values = {**self.config.values, key: text}
            try:
                self.config = ConfigStore(self.flash, self.boot.slot).store(
                    ConfigRecord(self.config.schema, self.config.owner, values))
            except ValueError:  # more than a flash page holds
                self.emit(Event.CONFIG_FULL, key=key)

    def _on_event(self, inc: Incoming) -> None:
        event = inc.args["event"]
        self.emit(Event.NCP_EVENT, event=EVENTS.get(event, event))
        if event == 1:  # the NCP is rebooting: initialise it again once it is back
            self.ready = False
            self._timers.pop("heartbeat", None)
            self._after("init", self.cfg.reinit_after)
