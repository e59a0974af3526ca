"""The emulated network co-processor, sans-IO.

It serves the NCP's whole interface with stateful answers and stands in for the cloud: given a
shipment it offers the update, feeds it to the primary and judges the outcome the way the cloud
does.  Same core interface as the primary:

    receive(data, now) · tick(now) · next_deadline() · data_to_send() · actions

The update sender
-----------------
Its states and moves are the table ``SENDER`` below, and ``NcpDevice._move`` makes every move:
an event the current state does not list raises :class:`IllegalMove`.  In words: an offer
goes out once the primary is connected and has reported a version other than the shipment's;
a RESULT true leads to OFFERED, false ends it (refused), none offers again later.  Prefetch
and Start are taken in OFFERED and also in OFFERING (older drivers call Start from inside the
offer handler).  SENDING ends in FINISHING when every byte is acknowledged, or in DONE after a
Cancel when a chunk ran out of tries or the download failed.  A Finish answered true leads to
REBOOTING, where the primary's next firmware report decides success or rollback; a refused
Finish is sent again, up to ``retries`` times.  A report in the middle of a transfer means the
primary restarted: back to IDLE, and offered again while offers are left.  DONE success turns
into DONE rollback when the primary later reports its old version (old -> new -> old).

Writes in flight: one, as the real protocol does, unless the primary answers ``mcu_hasUID``
for ``dualmcu_otaCapabilities`` with yes; then as many as it says it takes (and its buffer
holds).  Results are matched by msg_id; only writes refused or timed out are sent again, at
most ``retries`` times each.  Chunks are never larger than what the primary asked for, nor
than what the framing can carry; a chunk is sent only once the simulated download has reached
its end.  ``blynk_otaUpdateSuspend`` pauses sending.  A write's timeout is derived from the
baud rate, the window and the primary's flash timing (see ``_write_timeout``).

A release of several files (``Catalog``: the image, a compressed package, deltas from older
versions) is offered one file at a time, the best for the version the primary reported; a
package that fails on the device (``device_failed``, ``download_limit``, ``finish_failed``)
is followed by the next file (``FALL_BACK``, back to IDLE) instead of ending the update.

The cloud's records
-------------------
A primary that accepts an offer and then calls ``blynk_otaUpdateSuspend`` before Start has
deferred the update (install window, battery): the wait is recorded, the stage timer is
stretched by it, and after ``max_defer`` seconds of deferral in all the outcome is
``deferred``.  A shipment marked mandatory, or a minimum version, is told to the primary
just before the offer, as a write of virtual pin ``POLICY_VPIN`` ("mandatory" or
"optional", then "min=VERSION").  Telemetry arrives as ``blynk_setMetadata`` of the field
``dualmcu_telemetry`` (a JSON object; docs/device.md lists its keys); the latest is kept,
printed with the outcome; a report that the transfer failed on the device (an incompatible
image, say) ends the update as ``device_failed`` with the device's reason.

A process that ends on the update (``--once``)
----------------------------------------------
The cloud records ``success`` the moment the new version reports in, while the image is still
on trial; a process must end on the final word.  :meth:`NcpDevice.verdict` is that word: after
a success it waits, up to ``confirm_window`` seconds, for the primary's telemetry to say the new
version is ``confirmed`` (``confirmed``) or for the old version to report back (``rollback``,
after which the old image's first report is awaited up to ``settle`` seconds, for its reason).
When the window ends first, a primary that sends telemetry left the image unconfirmed
(``unconfirmed``); one that sends none (a firmware with only the Blynk driver) ran the new
version through the window without going back, all a cloud can know (``reported``).
"""

from __future__ import annotations

import bisect
import datetime
import errno
import json
import zlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from dualmcu.framing import Profile
from dualmcu.rpc import DEFER, NCP, Call, Framed, Incoming
from dualmcu.rpc.device import Device, Exit, Reboot, SetBaud
from dualmcu.rpc.events import Event, oneway_event
from dualmcu.rpc.interface import INTERFACE, POLICY_VPIN, PREFETCH, STATES, TELEMETRY_FIELD
from dualmcu.rpc.machine import Machine
from dualmcu.rpc.message import Status

from .outcome import FALLBACK, Outcome
from .update import Catalog, Network, Shipment, Store

WRITE = INTERFACE["client_otaUpdateWrite"]


NCP_VERSION = "0.7.0-dualmcu"
WRITE_OVERHEAD = 6 + 4 + 2 + 4  # INVOKE header, offset, Binary length, crc32
WRITE_TIMEOUT_CAP = 5.0  # the driver's own timeout for a write: backoff stops there
REFUSED_BACKOFF = 0.05  # seconds before the first resend of a refused write; doubles each time
BLOCK = 64 * 1024  # the block whose erase time the primary advertises (erase_per_block)
FALLBACK_PAUSE = 0.5  # seconds between a package failing and the offer of the next file
STATE = {v: k for k, v in STATES.items()}
# getTime's dst_status, as the interface defines it.
DST_NO_INFORMATION, DST_NOT_APPLICABLE, DST_ACTIVE, DST_INACTIVE = 0, 1, 2, 3
MAX_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z: the last time an ISO 8601 year holds
MAX_STORED_TEXT = 64  # bytes of a vendor prefix or server kept: answers that echo them must fit a frame
PREFETCH_CODE = {v: k for k, v in PREFETCH.items()}


class Tx(Enum):
    IDLE = "idle"
    OFFERING = "offering"
    OFFERED = "offered"
    PREFETCHING = "prefetching"
    SENDING = "sending"
    FINISHING = "finishing"
    REBOOTING = "rebooting"
    DONE = "done"


class TxEvent(Enum):
    OFFER = "offer"  # client_otaUpdateAvailable sent
    OFFER_ACCEPTED = "offer_accepted"  # its RESULT is true
    OFFER_REFUSED = "offer_refused"  # its RESULT is false: the primary said no
    OFFER_LOST = "offer_lost"  # no RESULT (offers left): offered again later
    PREFETCH = "prefetch"  # blynk_otaUpdatePrefetch arrived
    PREFETCH_DONE = "prefetch_done"
    PREFETCH_FAILED = "prefetch_failed"
    START = "start"  # blynk_otaUpdateStart arrived
    STALLED = "stalled"  # accepted, but no Start within stage_timeout
    ALL_SENT = "all_sent"  # every byte acknowledged: Finish goes out
    FINISH_ACCEPTED = "finish_accepted"
    FINISH_REFUSED = "finish_refused"  # refused or lost, tries left: Finish goes out again
    GIVE_UP = "give_up"  # out of tries, offers or download: the outcome is final
    NEW_REPORTED = "new_reported"  # the primary reports the shipment's version
    OLD_REPORTED = "old_reported"  # the primary reports another version after Finish
    RESTARTED = "restarted"  # the primary reports a version in the middle of a transfer
    NO_REPORT = "no_report"  # nothing from the primary within stage_timeout after Finish
    UP_TO_DATE = "up_to_date"  # the primary already runs the shipment's version
    FALL_BACK = "fall_back"  # a package failed on the device: offer the next file of the release


_E = TxEvent
SENDER: dict[Tx, dict[TxEvent, Tx]] = {
    Tx.IDLE: {_E.OFFER: Tx.OFFERING, _E.UP_TO_DATE: Tx.DONE, _E.GIVE_UP: Tx.DONE},
    Tx.OFFERING: {_E.OFFER_ACCEPTED: Tx.OFFERED, _E.OFFER_REFUSED: Tx.DONE, _E.OFFER_LOST: Tx.IDLE,
                  _E.GIVE_UP: Tx.DONE, _E.PREFETCH: Tx.PREFETCHING, _E.START: Tx.SENDING},
    Tx.OFFERED: {_E.PREFETCH: Tx.PREFETCHING, _E.START: Tx.SENDING, _E.STALLED: Tx.IDLE,
                 _E.RESTARTED: Tx.IDLE, _E.GIVE_UP: Tx.DONE,  # give up: deferred too long
                 _E.FALL_BACK: Tx.IDLE},
    Tx.PREFETCHING: {_E.PREFETCH_DONE: Tx.OFFERED, _E.PREFETCH_FAILED: Tx.DONE, _E.RESTARTED: Tx.IDLE},
    Tx.SENDING: {_E.ALL_SENT: Tx.FINISHING, _E.GIVE_UP: Tx.DONE, _E.RESTARTED: Tx.IDLE, _E.FALL_BACK: Tx.IDLE},
    Tx.FINISHING: {_E.FINISH_ACCEPTED: Tx.REBOOTING, _E.FINISH_REFUSED: Tx.FINISHING, _E.GIVE_UP: Tx.DONE,
                   # The Finish RESULT was lost, but the primary came back with the new version.
                   _E.NEW_REPORTED: Tx.DONE, _E.RESTARTED: Tx.IDLE, _E.FALL_BACK: Tx.IDLE},
    Tx.REBOOTING: {_E.NEW_REPORTED: Tx.DONE, _E.OLD_REPORTED: Tx.DONE, _E.NO_REPORT: Tx.DONE},
    # A success is undone by a later report of the old version (old -> new -> old).
    Tx.DONE: {_E.OLD_REPORTED: Tx.DONE},
}
# The states that wait on the primary, and so may not wait forever (stage_timeout).
WAITS_ON_PRIMARY = (Tx.OFFERED, Tx.REBOOTING)


@dataclass(frozen=True)
class Misbehave:
    """A test cloud that lies on purpose, so that a firmware's own checks are reached: each
    field off (None, 0, False) is the faithful cloud.  ``dualmcu ncp --misbehave KEY=VALUE``
    and the Python API fill it; ``MISBEHAVIOURS`` says each key in words."""

    offer_type: str | None = None  # offer the image as this fw-type (the cloud never offers another product's)
    offer_version: str | None = None  # offer the image under this version (an older one, say)
    size_delta: int = 0  # offer a size this many bytes off the file's
    corrupt_chunk_at: int | None = None  # the chunk at this offset goes out once with a byte flipped (its CRC the true one)
    chunk_crc_at: int | None = None  # the chunk at this offset goes out once with a wrong CRC-32
    wrong_crc32: bool = False  # Finish's blynk_otaUpdateGetCRC32 answers a wrong CRC-32
    wrong_sha256: bool = False  # and blynk_otaUpdateGetSHA256 a wrong digest

    @property
    def any(self) -> bool:
        return self != Misbehave()


MISBEHAVIOURS = {
    "offer-type": ("offer_type", str, "offer the image as this fw-type (another product's)"),
    "offer-version": ("offer_version", str, "offer the image under this version (an older one, say)"),
    "size-delta": ("size_delta", int, "offer a size this many bytes off the file's (negative: shorter)"),
    "corrupt-chunk-at": ("corrupt_chunk_at", int, "send the chunk at this offset once with a byte flipped"),
    "chunk-crc-at": ("chunk_crc_at", int, "send the chunk at this offset once with a wrong CRC-32"),
    "wrong-crc32": ("wrong_crc32", bool, "answer Finish's CRC-32 query wrongly"),
    "wrong-sha256": ("wrong_sha256", bool, "answer Finish's SHA-256 query wrongly"),
}


@dataclass
class NcpConfig:
    retries: int = 5
    max_chunk: int | None = None  # default: what the framing can carry
    offers: int = 3  # offers of one shipment: an interrupted transfer is offered again
    reoffer_after: float = 5.0
    connect_time: float = 0.3  # simulated time from initialize to connected
    settle: float = 3.0  # with --once: after a rollback, wait this long for the old image's report
    confirm_window: float = 10.0  # with --once: after success, wait this long for the confirmation
    write_timeout: float | None = None  # fixed seconds to wait for a write's RESULT (None: derived)
    pipeline: bool = True  # use dualmcu_otaCapabilities when the primary has it
    resume: bool = True  # use dualmcu_otaResume when the primary has it
    max_window: int = 16
    baud: int | None = None  # the link's rate, for deriving timeouts (None: the table's)
    stage_timeout: float = 60.0  # longest wait for the primary to start, or to come back after Finish
    once: bool = False
    primary_idle_ping: float = 25.0
    answer_unknown: bool = False
    wall_clock_ms: int = 0  # what getTime reports at t=0 (ms since the epoch)
    max_defer: float = 7 * 86400.0  # seconds of deferral the cloud waits for, in all
    mandatory: bool = False  # the shipment must be installed (past the version policy and window)
    min_version: str | None = None  # devices below it must update
    misbehave: Misbehave = field(default_factory=Misbehave)  # the faithful cloud unless asked


@dataclass
class Sending:
    """One transfer: which bytes are acknowledged, which writes are in flight."""

    chunk: int
    started: float
    window: int = 1
    discovering: bool = True
    acked: int = 0  # every byte below this is acknowledged
    next_offset: int = 0  # the first byte never sent
    in_flight: dict[int, Call] = field(default_factory=dict)  # offset -> write
    done: set[int] = field(default_factory=set)  # acknowledged offsets above ``acked``
    resend: list[int] = field(default_factory=list)  # offsets to send again, lowest first
    retries: dict[int, int] = field(default_factory=dict)
    total_retries: int = 0
    suspended_until: float = 0.0
    negotiated: bool = False  # the primary advertised its timing (dualmcu_otaCapabilities)
    program_per_kib: float = 0.0  # what the primary advertised
    erase_per_block: float = 0.0  # one 64 KiB block erase, as the primary advertised
    srtt: float | None = None  # smoothed round trip of clean writes
    losses: int = 0  # writes refused or timed out so far
    sent_losses: dict[int, int] = field(default_factory=dict)  # offset -> losses when it was sent


@dataclass
class Primary:
    """What the NCP knows of the primary: its reported firmware, and the versions it showed."""

    info: dict[str, str] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)


class NcpDevice(Device):
    def __init__(
        self,
        profile: Profile,
        config: NcpConfig | None = None,
        now: float = 0.0,
        shipment: Shipment | Catalog | None = None,
        network: Network | None = None,
        store: Store | None = None,
        emit: Callable[..., None] | None = None,
    ):
        self.cfg = config or NcpConfig()
        super().__init__(NCP, profile, now, emit, self.cfg.answer_unknown)
        # A release of several files (a Catalog) is offered one file at a time: ``shipment``
        # is the one on offer now (picked for the primary's version, see _consider_offer).
        self.catalog = shipment if isinstance(shipment, Catalog) else None
        if self.catalog is not None:
            shipment = self.catalog.pick("") or self.catalog.shipments[0]
        self.shipment = shipment
        self.net = network or Network()
        self.store = store or Store()
        self.serve_from = shipment.source if shipment else None
        self.prefetched = False
        # A write must fit one frame: the blynk framing sends at most 1536 bytes.
        frame_limit = profile.send_limit
        self.max_chunk = min(self.cfg.max_chunk or 0xFFFF, frame_limit - WRITE_OVERHEAD)
        self.state = STATE["not_initialized"]
        self.primary = Primary()
        self.baud = self.cfg.baud  # the link's rate now; a reboot starts at the initial one
        self.sender: Machine[Tx, TxEvent] = Machine("update sender", SENDER, Tx.IDLE, self._moved)
        self.outcome: Outcome | None = None
        self._misbehaved: set[str] = set()  # the lies told once (Misbehave)
        self.offers_made = 0
        self.sending: Sending | None = None
        self.finish_tries = 0
        self._idle_pings = 0
        self.telemetry: dict[str, Any] = {}  # the primary's latest report
        self.deferred_for = 0.0  # seconds of deferral asked for this shipment
        self.deferrals = 0
        self._await_telemetry = False
        self._prefetch_reply: Incoming | None = None
        # ((source, offset, length), args, encoded, frame): the next write, made by idle()
        self._next_write: tuple[tuple, dict, bytes, Framed | None] | None = None
        self.values: dict[str, Any] = {"vendor_prefix": "Blynk", "vendor_server": "blynk.cloud", "configured": True,
                                       "time_offset_ms": None}
        self._serve_interface()
        self._after("idle_ping", self.cfg.primary_idle_ping)

    # -- the core interface ------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> int:
        before = self.ep.stats["invokes_in"] + self.ep.stats["oneways_in"]
        ended = super().receive(data, now)
        if self.ep.stats["invokes_in"] + self.ep.stats["oneways_in"] != before:
            self._idle_pings = 0
            self._after("idle_ping", self.cfg.primary_idle_ping)
        return ended

    def _settle(self) -> None:
        self._pump()

    # -- the NCP's interface -----------------------------------------------------------------

    def _serve_interface(self) -> None:
        true = lambda inc: True  # noqa: E731
        answers: dict[str, Callable[[Incoming], Any]] = {
            "ncp_ping": lambda inc: None,
            "ncp_reboot": self._on_reboot,
            "ncp_hasUID": lambda inc: self.ep.serves(inc.args["uid"]),
            "hw_setUartBaudRate": self._on_baud,
            "hw_getWiFiMAC": lambda inc: ("02:00:00:4e:43:50", True),
            "hw_getEthernetMAC": lambda inc: ("02:00:00:4e:43:51", True),
            "blynk_initialize": self._on_initialize,
            "blynk_setVendorPrefix": lambda inc: self._set_text("vendor_prefix", inc.args["name"]),
            "blynk_setVendorServer": lambda inc: self._set_text("vendor_server", inc.args["host"]),
            "blynk_setFirmwareInfo": self._on_firmware_info,
            "blynk_getNcpVersion": lambda inc: (NCP_VERSION, True),
            "blynk_getState": lambda inc: self.state,
            "blynk_getHotspotName": lambda inc: (f"{self.values['vendor_prefix']} dualmcu-4E43", True),
            "blynk_configStart": lambda inc: self._set_state("config"),
            "blynk_configStop": lambda inc: self._set_state("connected" if self.values.get("template") else "idle"),
            "blynk_configReset": lambda inc: self._set("configured", False),
            "blynk_isConfigured": lambda inc: self.values["configured"],
            "blynk_setConfigTimeout": lambda inc: self._set("config_timeout", inc.args["timeout"]),
            "blynk_setConfigSkipLimit": lambda inc: self._set("config_skip_limit", inc.args["count"]),
            "blynk_factoryReset": lambda inc: self._set("configured", False),
            "blynk_factoryTestWiFi": lambda inc: (-52, 1),
            "blynk_factoryTestWiFiAP": lambda inc: 1,
            "blynk_factoryTestConnect": lambda inc: 1,
            "blynk_otaUpdateStart": self._on_start,
            "blynk_otaUpdateGetCRC32": self._on_get_crc32,
            "blynk_otaUpdateGetMD5": lambda inc: (self.shipment.digests.md5, True) if self.shipment else (b"", False),
            "blynk_otaUpdateGetSHA256": self._on_get_sha256,
            "blynk_otaUpdatePrefetch": self._on_prefetch,
            "blynk_otaUpdateSuspend": self._on_suspend,
            "blynk_setTime": self._on_set_time,
            "blynk_getTime": self._on_get_time,
            "blynk_getLocationInfo": lambda inc: ("0.0", "0.0", "Etc/UTC", "UTC0", True),
        }
        for fn in INTERFACE.served_by(NCP):
            if fn.name in answers:
                self.ep.handle(fn.name, answers[fn.name])
            elif fn.name.startswith("hw_"):
                self.ep.handle(fn.name, true)
            elif fn.kind == "oneway":
                self.ep.handle(fn.name, self._log_oneway)
            else:
                raise AssertionError(f"the NCP has no answer for {fn.name}")

    def _on_get_crc32(self, inc: Incoming):
        if self.shipment is None:
            return 0, False
        crc = self.shipment.digests.crc32
        if self.cfg.misbehave.wrong_crc32:
            self.emit(Event.MISBEHAVED, what="wrong_crc32")
            crc ^= 0xFFFFFFFF
        return crc, True

    def _on_get_sha256(self, inc: Incoming):
        if self.shipment is None:
            return b"", False
        digest = self.shipment.digests.sha256
        if self.cfg.misbehave.wrong_sha256:
            self.emit(Event.MISBEHAVED, what="wrong_sha256")
            digest = bytes(b ^ 0xFF for b in digest)
        return digest, True

    def _set(self, key: str, value: Any) -> bool:
        self.values[key] = value
        return True

    def _set_text(self, key: str, value: str) -> bool:
        if len(value.encode("utf-8", "surrogateescape")) > MAX_STORED_TEXT:
            self.emit(Event.VALUE_REFUSED, key=key, length=len(value), limit=MAX_STORED_TEXT)
            return False
        return self._set(key, value)

    def _set_state(self, name: str) -> bool:
        new = STATE[name]
        if new != self.state:
            self.state = new
            self.emit(Event.STATE, state=name)
            self.ep.notify("client_blynkStateChange", {"state": new})
        return True

    def _log_oneway(self, inc: Incoming) -> None:
        if inc.fn.name == "blynk_setMetadata" and inc.args["field"] == TELEMETRY_FIELD:
            return self._on_telemetry(inc.args["value"])
        self.emit(oneway_event(inc.fn.name),
                  **{k: v.hex() if isinstance(v, bytes) else v for k, v in inc.args.items()})

    def _on_telemetry(self, text: str) -> None:
        try:
            report = json.loads(text)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            self.emit(Event.TELEMETRY_REFUSED, reason="not_a_json_object", length=len(text))
            return
        self.telemetry = report
        self.emit(Event.TELEMETRY, **{k: v for k, v in report.items() if k not in ("t", "event", "side")})
        if report.get("ota_state") == "failed" and self.tx in (Tx.OFFERED, Tx.SENDING):
            # The device abandoned the transfer and said why: sending on would only collect
            # refusals until the download limit, and record the wrong reason.
            self._cancel(Outcome.DEVICE_FAILED, reason=str(report.get("ota_reason", "")))
        if self._await_telemetry or (self.cfg.once and self.verdict() is Outcome.CONFIRMED):
            self._await_telemetry = False
            self._exit()

    def verdict(self, final: bool = False) -> Outcome | None:
        """How the update ended, for a process that ends on it (see the module's notes): the
        outcome itself, or after a success ``confirmed``; None while there is no word yet.
        ``final``: the wait is over (the window ran out, the port closed), so a success the
        primary never confirmed is ``unconfirmed``, or ``reported`` from a primary that sends
        no telemetry."""
        if self.outcome is not Outcome.SUCCESS:
            return self.outcome
        s, t = self.shipment, self.telemetry
        if s is not None and t.get("version") == s.version and t.get("ota_state") == "confirmed":  # the primary's own word
            return Outcome.CONFIRMED
        if not final:
            return None
        return Outcome.UNCONFIRMED if t else Outcome.REPORTED

    def _exit(self) -> None:
        self.emit(Event.CLOUD_RECORD, outcome=self.outcome, telemetry=self.telemetry, deferrals=self.deferrals,
                  deferred_seconds=self.deferred_for)
        verdict = self.verdict(final=True)
        assert verdict is not None, "the NCP exits once the update has an outcome"
        self.actions.append(Exit(verdict))

    def _on_reboot(self, inc: Incoming) -> bool:
        def reboot() -> None:
            self.ep.notify("client_processEvent", {"event": 1})
            self.emit(Event.REBOOTING, reason="primary_request")
            self.actions.append(Reboot("primary_request"))

        inc.then = reboot
        return True

    def _on_baud(self, inc: Incoming) -> bool:
        baud = inc.args["baud"]
        if not 300 <= baud <= 10_000_000:
            return False
        # The answer goes out at the old rate; the shell switches once it has been sent.
        inc.then = lambda: self._switch_baud(baud)
        self.emit(Event.BAUD_CHANGE, baud=baud)
        return True

    def _switch_baud(self, baud: int) -> None:
        self.baud = baud  # write timeouts are derived from it
        self.actions.append(SetBaud(baud))

    def _on_initialize(self, inc: Incoming) -> bool:
        # The real NCP accepts initialize at any time, with or without a firmware report (the
        # driver's specification opens with exactly that); only the offer waits for a report.
        if not self.primary.info:
            self.emit(Event.INITIALIZE_WITHOUT_FIRMWARE_INFO, note="no update is offered until the primary reports its firmware")
        self.values["template"] = inc.args["template_id"]
        self.emit(Event.INITIALIZE, template_id=inc.args["template_id"], template_name=inc.args["template_name"])
        if self.state in (STATE["not_initialized"], STATE["idle"], STATE["error"]):
            inc.then = lambda: self._set_state("connecting_net")
            self._after("connect", self.cfg.connect_time / 2)
        return True

    def _timer_table(self) -> dict[str, Callable[[], None]]:
        return {"connect": self._timer_connect, "idle_ping": self._timer_idle_ping, "stage": self._timer_stage,
                "settled": self._timer_settled, "reoffer": self._timer_reoffer, "prefetch": self._timer_prefetch,
                "resume": self._timer_resume}

    def _timer_connect(self) -> None:
        if self.state == STATE["connecting_net"]:
            self._set_state("connecting_cloud")
            self._after("connect", self.cfg.connect_time / 2)
        elif self.state == STATE["connecting_cloud"]:
            self._set_state("connected")
            self._consider_offer()

    def _on_firmware_info(self, inc: Incoming) -> bool:
        a = inc.args
        info = {"fw-type": a["type"], "mcu": a["version"], "build": a["build"], "blynk": a["blynk"]}
        self.primary.info = info
        # The first version reported and the latest: all that judging an outcome needs, and
        # bounded however often a peer reports.
        self.primary.versions[1:] = [a["version"]]
        self.emit(Event.PRIMARY_FIRMWARE, fw_type=a["type"], version=a["version"], build=a["build"])
        self._judge_report(a["version"])
        inc.then = self._consider_offer
        return True

    def _on_set_time(self, inc: Incoming) -> bool:
        ms = inc.args["time"]
        if not 0 <= ms <= MAX_TIME_MS:
            self.emit(Event.SET_TIME_REFUSED, time=ms, reason="out_of_range")
            return False
        self.values["time_offset_ms"] = ms - int(self.ep.now * 1000)
        return True

    def _on_get_time(self, inc: Incoming):
        offset = self.values["time_offset_ms"]
        if offset is None:
            offset = self.cfg.wall_clock_ms
        if offset == 0:
            return ("", 0, 0, "", DST_NO_INFORMATION, False)  # no time from the cloud and none set
        ms = offset + int(self.ep.now * 1000)
        iso = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (iso, ms, 0, "UTC", DST_NOT_APPLICABLE, True)  # the emulated NCP keeps UTC

    # -- heartbeat -----------------------------------------------------------------------------

    def _timer_idle_ping(self) -> None:
        def answered(c: Call) -> None:
            if c.ok:
                self._idle_pings = 0
                self._after("idle_ping", self.cfg.primary_idle_ping)
            else:
                self._idle_pings += 1
                if self._idle_pings >= 5:
                    # Lost is said of a primary once heard; with none ever heard the shell's
                    # watchdog says no_peer, once, with what to check.
                    if self.ep.decoder_stats.get("frames", 0):
                        self.emit(Event.PRIMARY_LOST, tries=self._idle_pings)
                    self._idle_pings = 0
                    self._after("idle_ping", self.cfg.primary_idle_ping)
                else:
                    self._after("idle_ping", 5.0)

        self.ep.call("mcu_ping", on_done=answered)

    # -- the update sender ---------------------------------------------------------------------

    @property
    def tx(self) -> Tx:
        return self.sender.state

    def _move(self, event: TxEvent) -> Tx:
        return self.sender.fire(event)

    def _moved(self, old: Tx, event: TxEvent, new: Tx) -> None:
        # A stage that waits on the primary may not wait forever; leaving it disarms the timer.
        if new in WAITS_ON_PRIMARY and new is not old:
            self._after("stage", self.cfg.stage_timeout)
        elif new not in WAITS_ON_PRIMARY:
            self._timers.pop("stage", None)

    def _finish(self, event: TxEvent, outcome: Outcome, **fields: Any) -> None:
        if self._fall_back(outcome, fields):
            return
        self._move(event)
        self.outcome = outcome
        self.sending = None
        self.emit(Event.OTA_OUTCOME, outcome=outcome, telemetry=self.telemetry, **fields)
        if not self.cfg.once:
            return
        if outcome is Outcome.ROLLBACK:
            # The old image reports why it is back once it is up: wait for that, briefly.
            self._await_telemetry = True
            self._after("settled", self.cfg.settle)
        elif outcome is not Outcome.SUCCESS:
            self._exit()
        elif self.verdict() is None:  # the image is on trial: its confirmation or rollback decides
            self._after("settled", self.cfg.confirm_window)
        else:
            self._exit()

    def _fall_back(self, outcome: Outcome, fields: dict) -> bool:
        """A package that failed on the device is not the end: the next file of the release
        (the compressed package, then the image) is offered instead."""
        s, cat = self.shipment, self.catalog
        if (cat is None or s is None or s.package is None or outcome not in FALLBACK
                or not self.sender.can(TxEvent.FALL_BACK)):
            return False
        cat.failed.add(s.filename)
        nxt = cat.pick(self.primary.info.get("mcu", ""))
        if nxt is None:
            return False
        self.emit(Event.OTA_FALLBACK, failed=s.filename, file_kind=s.kind, outcome=outcome, next=nxt.filename,
                  next_kind=nxt.kind, **fields)
        self._move(TxEvent.FALL_BACK)
        self.sending, self.offers_made, self.finish_tries = None, 0, 0
        # Give the primary a moment to take the Cancel before the next offer.
        self._after("reoffer", FALLBACK_PAUSE)
        return True

    def _timer_stage(self) -> None:
        if self.tx is Tx.OFFERED:
            # The primary accepted but never started (its Prefetch or Start was lost, or it
            # gave up): offer again while offers are left.
            self.emit(Event.OTA_STALLED, state="offered", waited=self.cfg.stage_timeout)
            self._move(TxEvent.STALLED)
            if self.offers_made < self.cfg.offers:
                self._consider_offer()
            else:
                self._finish(TxEvent.GIVE_UP, Outcome.START_TIMEOUT)
        elif self.tx is Tx.REBOOTING:
            self._finish(TxEvent.NO_REPORT, Outcome.NO_REPORT, waited=self.cfg.stage_timeout)

    def _timer_settled(self) -> None:
        if self.cfg.once and self.outcome:
            self._await_telemetry = False
            self._exit()

    def _judge_report(self, version: str) -> None:
        s = self.shipment
        if s is None:
            return
        old = self.primary.versions[0] if self.primary.versions else None
        if version == s.version and self.sender.can(TxEvent.NEW_REPORTED):
            self._finish(TxEvent.NEW_REPORTED, Outcome.SUCCESS, version=version)
        elif self.tx is Tx.REBOOTING:
            self._finish(TxEvent.OLD_REPORTED, Outcome.ROLLBACK, version=version, new_version_seen=False)
        elif self.tx is Tx.DONE and self.outcome is Outcome.SUCCESS and version != s.version:
            self._finish(TxEvent.OLD_REPORTED, Outcome.ROLLBACK, version=version, new_version_seen=True)
        elif self.sender.can(TxEvent.RESTARTED):
            # The primary restarted in the middle of an update: it is lost on its side.
            self.emit(Event.OTA_INTERRUPTED, state=self.tx.value, version=version, old=old,
                      offers_left=self.cfg.offers - self.offers_made)
            self._move(TxEvent.RESTARTED)
            self.sending = None
            if self.offers_made >= self.cfg.offers:
                self._finish(TxEvent.GIVE_UP, Outcome.INTERRUPTED)

    def _consider_offer(self) -> None:
        if self.catalog is not None and self.tx is Tx.IDLE and self.primary.info:
            # The file for this device: the delta from the version it reported, if there is one.
            pick = self.catalog.pick(self.primary.info.get("mcu", ""))
            if pick is not None and pick is not self.shipment:
                self.shipment = pick
                self.serve_from, self.prefetched = pick.source, False
        s = self.shipment
        if (s is None or self.tx is not Tx.IDLE or self.state != STATE["connected"]
                or not self.primary.info or self.offers_made >= self.cfg.offers):
            return
        m = self.cfg.misbehave
        offered_type = m.offer_type or s.info.get("fw-type", "")
        offered_version = m.offer_version or s.version
        offered_size = max(0, s.size + m.size_delta)
        if self.primary.info.get("mcu") == offered_version:
            if self.offers_made == 0 and self.outcome is None:
                self._finish(TxEvent.UP_TO_DATE, Outcome.UP_TO_DATE, version=s.version)
            return
        if self.primary.info.get("fw-type") != s.info.get("fw-type") and m.offer_type is None:
            # The cloud matches shipments to devices by fw-type: another product's firmware
            # is never offered.
            if self.outcome is None:
                self._finish(TxEvent.GIVE_UP, Outcome.WRONG_TYPE, device_type=self.primary.info.get("fw-type"),
                             shipment_type=s.info.get("fw-type"))
            return
        self.offers_made += 1
        self._move(TxEvent.OFFER)
        if self.cfg.mandatory or self.cfg.min_version:
            words = ["mandatory" if self.cfg.mandatory else "optional"]
            if self.cfg.min_version:
                words.append(f"min={self.cfg.min_version}")
            self.ep.notify("client_blynkVPinChange", {"vpin": POLICY_VPIN, "value": " ".join(words).encode()})
        if (offered_type, offered_version, offered_size) != (s.info.get("fw-type", ""), s.version, s.size):
            self.emit(Event.MISBEHAVED, what="offer", fw_type=offered_type, version=offered_version,
                      size=offered_size)
        self.emit(Event.OTA_OFFER, filename=s.filename, size=offered_size, fw_type=offered_type,
                  version=offered_version, offer=self.offers_made, file_kind=s.kind)
        self.ep.call("client_otaUpdateAvailable", {
            "filename": s.filename, "size": offered_size, "fw_type": offered_type,
            "fw_version": offered_version, "fw_build": s.info.get("build", ""),
        }, on_done=self._offered)

    def _offered(self, c: Call) -> None:
        if self.tx is not Tx.OFFERING:
            return  # Start came first, from inside the offer handler
        if c.ok and c.result:
            self._move(TxEvent.OFFER_ACCEPTED)
            self.emit(Event.OTA_ACCEPTED, filename=self.shipment.filename, version=self.shipment.version)
            return
        reason = "refused" if c.ok else f"offer_failed:{c.status:#x}"
        if c.ok:
            # The primary said no: offering again changes nothing.
            self._finish(TxEvent.OFFER_REFUSED, Outcome.REFUSED)
        elif self.offers_made < self.cfg.offers:
            self._move(TxEvent.OFFER_LOST)
            self.emit(Event.OTA_OFFER_DECLINED, reason=reason, will_retry_in=self.cfg.reoffer_after)
            self._after("reoffer", self.cfg.reoffer_after)
        else:
            self._finish(TxEvent.GIVE_UP, "offer_failed", status=c.status)

    def _timer_reoffer(self) -> None:
        self._consider_offer()

    def _on_prefetch(self, inc: Incoming):
        if self.shipment is None or not self.sender.can(TxEvent.PREFETCH):
            return PREFETCH_CODE["request_fail"]
        s = self.shipment
        self._move(TxEvent.PREFETCH)
        started = self.ep.now
        done_at = self.net.ready_at(started, s.size)
        self.emit(Event.PREFETCH_START, size=s.size)
        self._prefetch_reply = inc
        if self.net.fails_before(s.size):
            self._timers["prefetch"] = self.net.ready_at(started, self.net.fail_at)
        else:
            self._timers["prefetch"] = done_at
        return DEFER

    def _timer_prefetch(self) -> None:
        inc, self._prefetch_reply = self._prefetch_reply, None
        s = self.shipment
        if self.net.fails_before(s.size):
            self.emit(Event.PREFETCH_FAILED, at=self.net.fail_at)
            self.ep.reply(inc, PREFETCH_CODE["download_timeout"])
            self._finish(TxEvent.PREFETCH_FAILED, Outcome.PREFETCH_FAILED, at=self.net.fail_at)
            return
        try:
            self.store.save("ota.bin", s.source, s.size)
        except OSError as e:
            # The NCP's own storage failed (full, read-only): the cloud's answer for a
            # download that did not land.
            why = "no_fs_space" if e.errno == errno.ENOSPC else "fs_write_fail"
            self.emit(Event.PREFETCH_FAILED, reason=why, error=e.strerror or str(e))
            self.ep.reply(inc, PREFETCH_CODE[why])
            self._finish(TxEvent.PREFETCH_FAILED, Outcome.PREFETCH_FAILED, reason=why)
            return
        self.serve_from = self.store.source("ota.bin")
        self.prefetched = True
        self._move(TxEvent.PREFETCH_DONE)
        self.emit(Event.PREFETCH_DONE, size=s.size)
        self.ep.reply(inc, PREFETCH_CODE["ok"])

    def _on_start(self, inc: Incoming) -> bool:
        asked = inc.args["chunk_size"]
        if self.shipment is None or not self.sender.can(TxEvent.START):
            self.emit(Event.OTA_START_REFUSED, reason="no_update_offered", chunk_size=asked)
            return False
        if asked == 0:
            self.emit(Event.OTA_START_REFUSED, reason="chunk_size_zero")
            return False
        chunk = min(asked, self.max_chunk)
        # Without prefetch the download from the cloud starts now and runs alongside the writes.
        self.sending = Sending(chunk=chunk, started=self.ep.now)
        self.finish_tries = 0
        # The NCP stays "connected" while it updates the primary: state 11 is the NCP
        # updating its own firmware ("NCP Upgrade" in the driver's examples).
        self._move(TxEvent.START)
        self.emit(Event.OTA_START, chunk_size=chunk, asked=asked, size=self.shipment.size, prefetched=self.prefetched)
        inc.then = self._discover
        return True

    def _discover(self) -> None:
        """Ask which extensions the primary has; a real primary says no to hasUID for both."""
        sd = self.sending
        if sd is None:
            return
        caps, resume = INTERFACE["dualmcu_otaCapabilities"], INTERFACE["dualmcu_otaResume"]
        window = [1]

        def ask(fn, wanted: bool, then) -> None:
            if not wanted:
                return then(None)
            self.ep.call("mcu_hasUID", {"uid": fn.uid},
                         on_done=lambda c: self.ep.call(fn.name, args(fn), on_done=then) if c.ok and c.result else then(None))

        def args(fn):
            return {"crc32": self.shipment.digests.crc32} if fn is resume else None

        def got_caps(c: Call | None) -> None:
            if c is not None and c.ok and c.result:
                v = c.values
                sd.negotiated = True
                sd.program_per_kib = v["program_us_per_kib"] / 1e6
                sd.erase_per_block = v["erase_us_per_64kib"] / 1e6
                # Chunks held behind a missing one must fit the primary's buffer.
                window[0] = min(v["window"], self.cfg.max_window, v["buffer"] // sd.chunk + 1)
            ask(resume, self.cfg.resume, got_resume)

        def got_resume(c: Call | None) -> None:
            if c is not None and c.ok and c.result and c.values["offset"]:
                sd.acked = sd.next_offset = c.values["offset"]
                self.emit(Event.OTA_RESUMED, offset=sd.acked, size=self.shipment.size)
            self._discovered(window[0])

        ask(caps, self.cfg.pipeline, got_caps)

    def _discovered(self, window: int) -> None:
        sd = self.sending
        if sd is None:
            return
        sd.window, sd.discovering = max(1, window), False
        self.emit(Event.OTA_WINDOW, window=sd.window, pipelined=sd.window > 1)
        self._pump()

    def _on_suspend(self, inc: Incoming) -> bool:
        seconds = inc.args["seconds"]
        if seconds > 18 * 3600:
            return False
        if self.tx is Tx.OFFERED:
            # Accepted but not started: the primary defers the update (window, battery).
            if seconds:
                self.deferrals += 1
                self.deferred_for += seconds
                self.emit(Event.OTA_DEFERRED, seconds=seconds, deferrals=self.deferrals, total_seconds=self.deferred_for)
                if self.deferred_for > self.cfg.max_defer:
                    inc.then = lambda: self._cancel(Outcome.DEFERRED, deferrals=self.deferrals,
                                                    deferred_seconds=self.deferred_for)
                    return True
                self._after("stage", seconds + self.cfg.stage_timeout)
            else:
                self.emit(Event.OTA_UNDEFERRED, deferrals=self.deferrals)
                self._after("stage", self.cfg.stage_timeout)
            return True
        if self.sending is not None:
            self.sending.suspended_until = self.ep.now + seconds if seconds else 0.0
            self.emit(Event.OTA_SUSPEND, seconds=seconds)
        return True

    def _pump(self) -> None:
        """Send writes while the window has room: resends first, then new chunks as the
        simulated download delivers them, unless paused."""
        sd = self.sending
        if self.tx is not Tx.SENDING or sd is None or sd.discovering:
            return
        s = self.shipment
        now = self.ep.now
        if sd.acked >= s.size and not sd.in_flight:
            self._move(TxEvent.ALL_SENT)
            self._send_finish()
            return
        if sd.suspended_until > now:
            self._timers["resume"] = sd.suspended_until
            return
        while len(sd.in_flight) < sd.window:
            if sd.resend:
                offset = sd.resend.pop(0)
            elif sd.next_offset < s.size:
                offset = sd.next_offset
                end = min(offset + sd.chunk, s.size)
                if not self.prefetched:
                    # Times, not byte counts, decide: the timer fires at exactly the time compared.
                    failing = self.net.fails_before(end)
                    due = self.net.ready_at(sd.started, self.net.fail_at if failing else end)
                    if now < due:
                        self._timers["resume"] = due
                        return
                    if failing:
                        self._cancel(Outcome.DOWNLOAD_FAILED, at=self.net.fail_at)
                        return
                sd.next_offset = end
            else:
                return
            args, encoded, framed = self._write_args(offset, min(sd.chunk, s.size - offset))
            sd.sent_losses[offset] = sd.losses
            timeout = self._write_timeout(sd, offset)
            if timeout is not None and sd.retries.get(offset):
                # Back off on each resend of the same chunk (up to the driver's 5 s), so that
                # the tries span a glitch of the line instead of all falling inside it.
                timeout = min(timeout * 2 ** sd.retries[offset], max(timeout, WRITE_TIMEOUT_CAP))
            sd.in_flight[offset] = self.ep.call(
                "client_otaUpdateWrite", args, encoded=encoded, framed=framed, timeout=timeout,
                on_done=lambda c, off=offset: self._written(off, c),
            )
            self._lied(offset)

    def _write_args(self, offset: int, length: int) -> tuple[dict, bytes, Framed | None]:
        """A write's arguments, them encoded, and its frame: prepared ahead by :meth:`idle`
        when it could."""
        ready, self._next_write = self._next_write, None
        if ready is not None and ready[0] == (self.serve_from, offset, length):
            return ready[1], ready[2], ready[3]
        return *self._encode_write(offset, length), None

    def _encode_write(self, offset: int, length: int) -> tuple[dict, bytes]:
        data = self.serve_from.read(offset, length)
        args = {"offset": offset, "chunk": data, "crc32": zlib.crc32(data)}
        m = self.cfg.misbehave
        # Once each: the first send of that chunk lies, a resend is true (a glitch, not a
        # broken file), so a firmware that refuses it sees the update through.
        if offset == m.corrupt_chunk_at and "corrupt_chunk" not in self._misbehaved and data:
            args["chunk"] = bytes([data[0] ^ 0xFF]) + data[1:]
        if offset == m.chunk_crc_at and "chunk_crc" not in self._misbehaved:
            args["crc32"] = args["crc32"] ^ 0xFFFFFFFF
        return args, WRITE.encode_args(args)

    def _lied(self, offset: int) -> None:
        """A write at ``offset`` went out: the lies planned for it are told."""
        m = self.cfg.misbehave
        for what, at in (("corrupt_chunk", m.corrupt_chunk_at), ("chunk_crc", m.chunk_crc_at)):
            if offset == at and what not in self._misbehaved:
                self._misbehaved.add(what)
                self.emit(Event.MISBEHAVED, what=what, offset=offset)

    def idle(self) -> None:
        # Read, encode and frame the next write while the one on the wire is answered: the
        # answer then sends it at once, which takes the file read, the encoding and the
        # framing off each round trip.
        sd, s = self.sending, self.shipment
        if self.tx is not Tx.SENDING or sd is None or sd.discovering or self.serve_from is None:
            return
        offset = sd.resend[0] if sd.resend else sd.next_offset
        if offset >= s.size or offset in sd.in_flight:
            return
        length = min(sd.chunk, s.size - offset)
        key = (self.serve_from, offset, length)
        if self._next_write is None or self._next_write[0] != key:
            args, encoded = self._encode_write(offset, length)
            self._next_write = (key, args, encoded, self.ep.frame_ahead("client_otaUpdateWrite", encoded))

    def _write_timeout(self, sd: Sending, offset: int | None = None) -> float | None:
        """How long the write at ``offset`` may take to be answered, from the work it stands for.

        A peer that did not advertise its flash timing (every real MCU) gets the interface
        table's 5 s, as the real NCP gives it: a real MCU may erase a whole block inside a write.

        For a peer that did: ahead of a write on the wire are at most ``window`` writes (ours),
        and ahead of it in the primary's flash as many programs and at most one block erase
        (the primary erases a block ahead as the writes reach it); the answer comes back the
        other way.  Twice that, or twice the measured round trip, plus a margin.  A package
        makes more image than it carries: the flash work is that of the image bytes the window
        up to this write can make (every segment it touches, whole), with a block erase for each
        64 KiB of them.
        """
        if self.cfg.write_timeout is not None:
            return self.cfg.write_timeout
        bit = 10 / self.baud if self.baud else 0.0
        frame = sd.chunk + WRITE_OVERHEAD + 16
        if not sd.negotiated or not self.baud:
            # The table's 5 s is sized for the real NCP's chunks (1520 bytes at most). A larger
            # one, which cobs can carry, may take longer than that on a slow line: it gets
            # twice its time on the wire, or it could never be answered in time.
            wire = frame * bit
            return 2 * wire + 0.05 if 2 * wire > WRITE.timeout else None
        made, erases = sd.window * sd.chunk, 1
        if self.shipment is not None and self.shipment.package is not None and offset is not None:
            first = max(offset - (sd.window - 1) * sd.chunk, 0)
            made = self.shipment.image_bytes(first, offset + sd.chunk - first)
            erases = -(-made // BLOCK) + 1
        work = (sd.window * frame * bit + sd.program_per_kib * made / 1024 + erases * sd.erase_per_block
                + 24 * bit)
        # A measured round trip longer than the work (a slow bridge) stretches the timeout,
        # but never past eight times the work.
        return max(2 * work, min(2 * (sd.srtt or 0), 8 * work)) + 0.05

    def _timer_resume(self) -> None:
        self._pump()

    def _written(self, offset: int, c: Call) -> None:
        sd = self.sending
        if sd is None or sd.in_flight.get(offset) is not c:
            return
        del sd.in_flight[offset]
        if c.ok and c.result:
            # Only a write with no loss between its sending and its answer measures the round
            # trip (Karn's rule, widened to the window): one held behind a lost chunk measures
            # the loss, and would stretch every timeout after it.
            if sd.sent_losses.pop(offset, -1) == sd.losses:
                rtt = self.ep.now - c.sent_at
                sd.srtt = rtt if sd.srtt is None else 0.875 * sd.srtt + 0.125 * rtt
            sd.retries.pop(offset, None)
            sd.done.add(offset)
            while sd.acked in sd.done:
                sd.done.discard(sd.acked)
                sd.acked = min(sd.acked + sd.chunk, self.shipment.size)
            self.emit(Event.OTA_PROGRESS, offset=sd.acked, size=self.shipment.size, retries=sd.total_retries)
        else:
            sd.total_retries += 1
            sd.losses += 1
            why = "refused" if c.ok else ("timeout" if c.status == Status.TIMEOUT else f"status_{c.status:#x}")
            if c.ok or offset == sd.acked:
                n = sd.retries[offset] = sd.retries.get(offset, 0) + 1
            else:
                # A write above the lowest unacknowledged one that times out is most likely
                # held by the primary behind the missing chunk, not lost: it is sent again but
                # does not spend its tries. The lowest one's tries bound the whole transfer.
                n = sd.retries.get(offset, 0)
                why = "timeout_behind_gap"
            self.emit(Event.OTA_RETRY, offset=offset, attempt=n, reason=why)
            if c.ok and n <= self.cfg.retries:
                # A refusal comes back at once: resent at once, the tries would all be spent
                # within a few milliseconds, before a primary that restarted mid-transfer has
                # reported its firmware (which ends the transfer cleanly). Back off instead,
                # 50 ms doubling, so the tries span about 1.5 s.
                sd.suspended_until = max(sd.suspended_until,
                                         self.ep.now + min(REFUSED_BACKOFF * 2 ** (n - 1), WRITE_TIMEOUT_CAP))
            if c.status == Status.TIMEOUT:
                # The writes behind a lost one are most likely held by the primary until it
                # arrives: give them the time of its resend instead of resending them too.
                later = self.ep.now + (self._write_timeout(sd, offset) or c.fn.timeout)
                for off, other in sd.in_flight.items():
                    if off > offset and other.deadline is not None:
                        other.deadline = max(other.deadline, later)
            if n > self.cfg.retries:
                self._cancel(Outcome.DOWNLOAD_LIMIT, offset=offset, retries=sd.total_retries)
                return
            bisect.insort(sd.resend, offset)
        self._pump()

    def _send_finish(self) -> None:
        self.ep.call("client_otaUpdateFinish", on_done=self._finished)

    def _finished(self, c: Call) -> None:
        if self.tx is not Tx.FINISHING:
            return
        if c.ok and c.result:
            self._move(TxEvent.FINISH_ACCEPTED)
            self.emit(Event.OTA_FINISHED, retries=self.sending.total_retries if self.sending else 0)
            return
        self.finish_tries += 1
        why = "refused" if c.ok else f"status_{c.status:#x}"
        self.emit(Event.OTA_RETRY, offset=self.shipment.size, attempt=self.finish_tries, reason=f"finish_{why}")
        if self.finish_tries > self.cfg.retries:
            self._cancel(Outcome.FINISH_FAILED, reason=why)
        else:
            self._move(TxEvent.FINISH_REFUSED)
            self._send_finish()

    def _cancel(self, outcome: Outcome, **fields: Any) -> None:
        if self.sending is not None:
            self.sending.in_flight.clear()
        self.ep.call("client_otaUpdateCancel")
        self._finish(TxEvent.GIVE_UP, outcome, **fields)
