"""The primary MCU's OTA receiver: a sans-IO state machine over the RPC endpoint and the flash.

States and the calls each accepts
---------------------------------
    state       otaUpdateAvailable   otaUpdateWrite   otaUpdateFinish   otaUpdateCancel
    IDLE        check, -> OFFERED    refuse           refuse            ok (nothing to drop)
                or DEFERRED
    DEFERRED    check again          refuse           refuse            ok, -> IDLE
    OFFERED     check again          accept, -> RECV  refuse            ok, -> IDLE
    RECEIVING   check again (a new   accept/refuse    verify, install   ok, -> IDLE
                offer restarts)
    FINISHING   refuse (busy)        refuse           refuse (busy)     ok, -> IDLE

The moves are the table ``RECEIVER``; ``OtaReceiver._move`` makes each one and raises on a
move the table does not list.

Rules
-----
* An offer is checked against: size (0 < size <= slot), fw-type (must equal the running
  image's), version (policy ``newer``: strictly newer; ``any``: anything; ``mandatory-only``:
  only what the cloud marked mandatory), and the flash: a device still running a trial image
  refuses, because the only slot it could write holds its confirmed fallback.  A shipment the
  cloud marked mandatory (or any shipment while the running version is below the cloud's
  minimum) passes the version policy, so a recall to an older build installs; signatures
  and their anti-rollback counter still apply.  Every refusal is final.
* Deferral: an offer that passes every check but arrives outside the install window (UTC
  hours; the time comes from the NCP's ``blynk_getTime``) or while the battery is below
  ``min_battery`` is accepted and deferred: DEFERRED, nothing written, and
  ``blynk_otaUpdateSuspend`` tells the NCP how long (at most 18 h at a time).  When the
  window opens or the battery has recovered (its level follows ``battery_rate``), the
  receiver resumes the NCP (Suspend 0) and starts; if not yet, it suspends again.  A
  mandatory update ignores the window, never the battery.
* Compatibility: the image's tag is searched in the chunks as they arrive, and checked before
  the chunk holding it is programmed (for images built by dualmcu that is the first chunk):
  ``hw-rev`` lists the hardware revisions it runs on, ``min-bootloader`` the oldest
  bootloader it needs.  A mismatch abandons the transfer with its reason.  Finish checks the
  whole image's tag again.
* Accepting an offer first forgets the inactive slot's old image in the boot state, so a
  half-written slot can never be taken for a bootable one (a write only when the boot state
  still records an image there: a flood of offers costs the boot state nothing).  The offer
  is answered at once.  After its RESULT the receiver calls ``blynk_otaUpdatePrefetch`` (when
  configured) and then ``blynk_otaUpdateStart(chunk_size)``.
* A write is accepted when its CRC-32 matches, it fits the chunk size and the image, and its
  offset is the next expected one; it is answered once the flash has programmed it (the
  timing model).  A resend of bytes already written (its RESULT was lost) is acknowledged
  when it matches the flash, without writing again.  Anything else at a wrong offset is
  refused, except for a peer that asked for ``dualmcu_otaCapabilities`` in this transfer:
  writes ahead of a missing one are held (within the advertised buffer) and written, in order,
  when the gap is filled.
* Erase ahead: from the moment an offer is accepted the flash erases the image's pages
  whenever it has nothing else to do, in 64 KiB blocks (4 KiB sectors at the image's end).
  A program suspends the erase in progress and it resumes afterwards, as a NOR flash's
  erase suspend allows, so erasing overlaps the transfer: a write waits only when it
  outruns the erase.  An abandoned transfer leaves its erase where it stopped (a new offer
  of the same slot goes on from there when nothing was programmed), so abandoned offers
  cannot pile up erase work.
* No write for ``ota_timeout`` seconds in OFFERED or RECEIVING cancels the update.
* Finish checks that every byte arrived, asks the NCP for CRC-32 and SHA-256 of the file
  (nested calls, while the NCP waits for the Finish RESULT), computes both over the slot as it
  reads back from flash, and only when all agree installs the image as a trial and reboots
  after the RESULT is sent.
* Resume (extension ``dualmcu_otaResume``): while an NCP that asked for it sends, progress
  is persisted in the boot state every ``checkpoint_every`` bytes (page aligned, with the CRC
  of what the flash holds below it).  A later offer of the same image (size, version, build)
  keeps those bytes; when the NCP then reports the same file CRC-32 and the flash still
  matches the persisted CRC, the transfer goes on from there.  Anything else erases them and
  starts from 0.  Finish still checks CRC-32 and SHA-256 over the whole image.
* Packages (image/package.py, docs/packages.md): a file whose first 4 bytes are ``DMPK`` is
  applied, not programmed: its header is checked (image fits, decompressor fits
  ``package_ram``, a delta's base is the running image's bytes) before anything is applied,
  the image it rebuilds streams into the slot, progress is persisted at segment boundaries,
  and Finish checks the package's CRC-32 (and SHA-256 unless resumed) against the NCP's and
  the rebuilt image against the header before the checks every image gets.
* Every refusal carries a reason code, logged and emitted as an event.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from dualmcu.image.firmware import find_tag, is_newer, parse_tag, read_info_streamed, version_key
from dualmcu.image.package import PIECE, Applier, Header, ImageClaims, PackageError, check_base, is_package
from dualmcu.rpc import DEFER, Call, Endpoint, Incoming
from dualmcu.rpc.endpoint import earliest
from dualmcu.rpc.events import Event
from dualmcu.rpc.interface import PREFETCH
from dualmcu.rpc.machine import Machine

from .boot import Bootloader, BootState, Receiving, check_signature, read_back, slot_digests
from .config import ConfigStore
from .flash import Flash, FlashError
from .timing import BLOCK, SECTOR, FlashTiming, TimedFlash

DEFAULT_CHUNK = 1024  # what the primary asks for in otaUpdateStart unless told otherwise
MAX_SUSPEND = 18 * 3600  # the longest pause blynk_otaUpdateSuspend takes
BATTERY_RECHECK = 3600.0  # a battery that is not charging is looked at again this often
TAG_CARRY = 4096  # bytes kept from the previous chunk, so a tag split by a chunk edge is found
DEFAULT_PACKAGE_RAM = 64 * 1024  # bytes of buffers a package may need while it is applied
RECENT = 64  # chunks whose CRC is kept, to recognise a resend of one already taken


def _clean_text(text: str, limit: int = 255) -> bool:
    """Printable UTF-8 of a sane length: what an offer's strings must be."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as surrogates
        return False
    return len(raw) <= limit and text.isprintable()


class Ota(Enum):
    IDLE = "idle"
    DEFERRED = "deferred"
    OFFERED = "offered"
    RECEIVING = "receiving"
    FINISHING = "finishing"


class OtaEvent(Enum):
    ACCEPT = "accept"  # an offer passed every check (a new one replaces a transfer)
    DEFER = "defer"  # an offer passed every check, but it is not the time to install
    WRITE = "write"  # a chunk at the expected offset was programmed
    FINISH = "finish"  # every byte is in: ask the NCP for the digests
    VERIFY_FAILED = "verify_failed"  # digests missing or different: the NCP may finish again
    INSTALLED = "installed"  # verified and installed as a trial image
    REJECTED = "rejected"  # arrived whole but not an image this device may install
    ABANDON = "abandon"  # cancelled by the NCP, timed out, or failed


_E = OtaEvent
RECEIVER: dict[Ota, dict[OtaEvent, Ota]] = {
    Ota.IDLE: {_E.ACCEPT: Ota.OFFERED, _E.DEFER: Ota.DEFERRED},
    Ota.DEFERRED: {_E.ACCEPT: Ota.OFFERED, _E.DEFER: Ota.DEFERRED, _E.ABANDON: Ota.IDLE},
    Ota.OFFERED: {_E.ACCEPT: Ota.OFFERED, _E.DEFER: Ota.DEFERRED, _E.WRITE: Ota.RECEIVING, _E.ABANDON: Ota.IDLE},
    Ota.RECEIVING: {_E.ACCEPT: Ota.OFFERED, _E.DEFER: Ota.DEFERRED, _E.WRITE: Ota.RECEIVING,
                    _E.FINISH: Ota.FINISHING, _E.ABANDON: Ota.IDLE},
    Ota.FINISHING: {_E.VERIFY_FAILED: Ota.RECEIVING, _E.INSTALLED: Ota.IDLE, _E.REJECTED: Ota.IDLE,
                    _E.ABANDON: Ota.IDLE},
}


class VersionPolicy(str, Enum):
    """Which offered versions the primary installs."""

    NEWER = "newer"  # only a version newer than its own (or one the cloud marks mandatory)
    ANY = "any"  # any other version: downgrades too
    MANDATORY_ONLY = "mandatory-only"  # only what the cloud marks mandatory


class WriteAnswer(str, Enum):
    """When a write is answered."""

    PROGRAMMED = "programmed"  # once its chunk is in the flash: the reference MCU, and the safe default
    # Once the flash has taken the chunk before it: the chunk waits in a second RAM buffer and
    # programs while the next one crosses the wire (double buffering, within the plain protocol).
    BUFFERED = "buffered"


@dataclass
class OtaConfig:
    chunk_size: int = DEFAULT_CHUNK
    ota_timeout: float = 60.0
    version_policy: VersionPolicy = VersionPolicy.NEWER
    battery: float = 100.0  # percent, at time 0
    battery_rate: float = 0.0  # percent per hour: > 0 charging, < 0 discharging
    min_battery: int = 20  # below it an update is deferred
    install_window: tuple[int, int] | None = None  # UTC hours [start, end); None: any time
    prefetch: bool = False
    timing: FlashTiming = field(default_factory=FlashTiming)
    window: int = 8  # writes taken in flight (dualmcu_otaCapabilities); 1: the plain protocol only
    resume: bool = True  # offer dualmcu_otaResume and keep progress in the boot state
    checkpoint_every: int = 64 * 1024  # persist progress at least this often
    buffer: int = 32 * 1024  # bytes of chunks held while an earlier one is missing
    # RAM for applying a package: decompressor state, one chunk and one output piece must fit.
    package_ram: int = DEFAULT_PACKAGE_RAM
    write_answer: WriteAnswer = WriteAnswer.PROGRAMMED

    def __post_init__(self) -> None:
        # Given as text (a config file, a test), a value is checked against its enum here.
        self.version_policy = VersionPolicy(self.version_policy)
        self.write_answer = WriteAnswer(self.write_answer)


@dataclass
class Transfer:
    filename: str
    size: int
    fw_type: str
    fw_version: str
    fw_build: str
    slot: int
    offset: int = 0
    erased_to: int = 0
    duplicates: int = 0
    held: dict = field(default_factory=dict)  # offset -> (Incoming, chunk): waiting for the gap
    held_bytes: int = 0
    pipelined: bool = False  # the NCP asked for dualmcu_otaCapabilities during this transfer
    kept: int = 0  # bytes kept from an earlier transfer of the same image, until resume confirms
    file_crc32: int | None = None  # the file's CRC-32 as the NCP reported it (resume)
    checkpoint: int = 0  # how far progress was last persisted (page aligned)
    checkpoint_crc: int = 0  # CRC-32 of the slot's bytes below ``checkpoint``
    # SHA-256 of the same bytes, as they were read back at each checkpoint (None after a
    # resume: it cannot be persisted).
    readback_sha: object = field(default_factory=hashlib.sha256)
    mandatory: bool = False
    tag_checked: bool = False  # the image's tag was found in the arriving chunks and checked
    carry: bytes = b""  # the end of the previous chunk, for a tag that spans two
    # What the slot holds: the file itself (an image) or what a package rebuilds.
    kind: str | None = None  # "image" or "package", once the first 4 bytes are in
    sniff: bytes = b""  # the file's first bytes, held until its kind is known
    written: int = 0  # bytes programmed into the slot
    kept_slot: int = 0  # bytes of the slot an earlier transfer left, until resume confirms
    applier: Applier | None = None
    claims: ImageClaims | None = None  # a package's: the image it rebuilds
    file_crc: int = 0  # CRC-32 of the file's bytes taken so far, in order
    file_sha: object = field(default_factory=hashlib.sha256)  # None after a resume (not persistable)
    checkpoint_slot: int = 0  # a package's image offset at its last checkpoint
    checkpoint_slot_crc: int = 0
    recent: dict = field(default_factory=dict)  # offset -> (length, crc32) of the latest chunks taken
    ahead_clock: float = 0.0  # the flash's idle time up to here was spent erasing ahead
    erasing: tuple[int, float] | None = None  # the erase in progress: its end, and seconds of it left

    @property
    def length(self) -> int:
        """Bytes of image in the slot once the transfer is complete."""
        return self.claims.size if self.claims is not None else self.size


@dataclass
class Policy:
    """What the cloud said of the shipment it offers (client_blynkVPinChange on POLICY_VPIN)."""

    mandatory: bool = False
    min_version: str | None = None

    def mandatory_for(self, own: str) -> bool:
        below = self.min_version is not None and version_key(own) < version_key(self.min_version)
        return self.mandatory or below

    @classmethod
    def parse(cls, text: str) -> Policy:
        """``mandatory`` or ``optional``, then optionally ``min=VERSION``, space separated."""
        words = text.split()
        mins = [w[4:] for w in words if w.startswith("min=") and w[4:]]
        return cls("mandatory" in words, mins[-1] if mins else None)


def battery_level(cfg: OtaConfig, now: float) -> float:
    return max(0.0, min(100.0, cfg.battery + cfg.battery_rate * now / 3600))


def in_window(window: tuple[int, int], utc: float) -> float:
    """Seconds until the install window opens at UTC time ``utc`` (0: it is open)."""
    start, end = window
    day = utc % 86400
    hour = day / 3600
    inside = start <= hour < end if start < end else (hour >= start or hour < end)
    return 0.0 if inside else (start * 3600 - day) % 86400


def compat_refusal(tag: dict[str, str], hw_rev: str, bootloader: str) -> tuple[str, dict] | None:
    """Whether an image's tag lets it run on this hardware and bootloader (None: it does)."""
    revs = tag.get("hw-rev")
    if revs is not None:
        allowed = [r for r in revs.replace(",", " ").split() if r]
        if hw_rev not in allowed:
            return "hw_rev_mismatch", {"image_hw_rev": revs, "hw_rev": hw_rev}
    need = tag.get("min-bootloader")
    if need is not None and version_key(bootloader) < version_key(need):
        return "bootloader_too_old", {"min_bootloader": need, "bootloader": bootloader}
    return None


class OtaReceiver:
    def __init__(
        self,
        endpoint: Endpoint,
        flash: Flash,
        bootloader: Bootloader,
        state: BootState,
        own_info: dict[str, str],
        config: OtaConfig,
        emit: Callable[..., None],
        reboot: Callable[[str], None],
        hang: Callable[[], None] = lambda: None,
        report: Callable[[str, str], None] = lambda state, reason: None,
    ):
        self.ep = endpoint
        self.flash = flash
        self.boot = bootloader
        self.boot_state = state
        self.own = own_info
        self.cfg = config
        self.emit = emit
        self.reboot = reboot
        self.hang = hang
        self.report = report  # (update state, reason): telemetry and the persisted last failure
        self.policy = Policy()  # what the cloud said of the shipment on offer
        self.utc_offset: float | None = None  # UTC seconds at time 0, from the NCP's getTime
        self.defer_until: float | None = None  # when a deferred update is looked at again
        self.deferred: dict | None = None  # the offer waiting, while DEFERRED
        self.machine: Machine[Ota, OtaEvent] = Machine("OTA receiver", RECEIVER, Ota.IDLE)
        self.t: Transfer | None = None
        self.deadline: float | None = None
        self.timed = TimedFlash(flash, config.timing)  # the slot's programs and erases, with their time
        if config.window > 1:
            endpoint.handle("dualmcu_otaCapabilities", self.on_capabilities)
        if config.resume:
            endpoint.handle("dualmcu_otaResume", self.on_resume)
        for name, fn in (
            ("client_otaUpdateAvailable", self.on_available),
            ("client_otaUpdateWrite", self.on_write),
            ("client_otaUpdateFinish", self.on_finish),
            ("client_otaUpdateCancel", self.on_cancel),
        ):
            endpoint.handle(name, fn)

    @property
    def state(self) -> Ota:
        return self.machine.state

    def _move(self, event: OtaEvent) -> Ota:
        return self.machine.fire(event)

    # -- time --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return earliest(self.deadline, self.defer_until)

    def tick(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            self._abandon("timeout")
        if self.defer_until is not None and now >= self.defer_until:
            self.defer_until = None
            self._reconsider()

    def idle(self) -> None:
        """Once a write's answer is out: persist the progress it made (see :meth:`_persist`)."""
        t = self.t
        if t is None or self.state is not Ota.RECEIVING:
            return
        try:
            self._persist(t)
        except FlashError as e:
            # The boot state's page failed under the checkpoint: as when a write's own flash
            # operation fails, the transfer cannot go on (the NCP's next call is refused).
            self._write_failed("flash_error", t.offset, e)

    def _persist(self, t: Transfer) -> None:
        """An image's checkpoint, when one is due.  It reads the new pages back and writes a
        boot-state record (about 0.2 ms of this process's time for 64 KiB), so it runs after
        the write is answered, while the next chunk crosses the wire, or at the latest before
        that chunk is programmed."""
        if t.kind == "image" and t.file_crc32 is not None and t.written - t.checkpoint >= self.cfg.checkpoint_every:
            self._checkpoint(t, t.written - t.written % self.flash.page_size, None)

    def _reply_at(self, when: float, inc: Incoming, value: bool) -> None:
        """Answer when the flash is done with the chunk: the endpoint sends it then."""
        self.ep.reply(inc, value, at=when)

    def on_capabilities(self, inc: Incoming):
        # Only a peer that asked gets writes held out of order; any other peer gets the plain
        # protocol, where a write at a wrong offset is refused at once.
        if self.t is not None:
            self.t.pipelined = True
        tm = self.cfg.timing
        return {"window": self.cfg.window, "buffer": self.cfg.buffer, "program_us_per_kib": tm.program_us_per_kib,
                "erase_us_per_64kib": tm.erase_us_per_block, "return": True}

    def _arm(self) -> None:
        self.deadline = self.ep.now + self.cfg.ota_timeout

    # -- handlers ----------------------------------------------------------------------------

    def _write_failed(self, reason: str, offset: int, error: Exception) -> bool:
        """A write the transfer cannot go on from: refused with ``reason``, then abandoned."""
        self._refuse("write", reason, offset=offset, error=str(error))
        self._abandon(reason)
        return False

    def _refuse(self, call: str, reason: str, **fields) -> bool:
        self.emit(Event.OTA_REFUSED, call=call, reason=reason, **fields)
        if call == "available":
            self.report("refused", reason)
        return False

    def on_resume(self, inc: Incoming):
        """Where the NCP should go on: the kept bytes if they are this file's, else 0."""
        t = self.t
        if t is None or self.state is not Ota.OFFERED or t.offset:
            return (0, False)
        crc = inc.args["crc32"]
        rx = self.boot_state.receiving
        base = self.flash.geometry.slot_offset(t.slot)
        vouched = rx.image_crc32_so_far if rx.package else rx.running_crc32
        if t.kept and crc == rx.file_crc32 and read_back(self.flash, base, t.kept_slot) == vouched:
            t.offset = t.checkpoint = t.kept
            t.checkpoint_crc = t.file_crc = rx.running_crc32
            t.written = t.checkpoint_slot = t.kept_slot
            t.file_sha = t.readback_sha = None  # a SHA-256 so far cannot be persisted: CRC-32s are checked
            if rx.package:
                # Goes on at the segment boundary the checkpoint recorded; the base is still
                # the running image (installing another would have cleared this record).
                t.kind, t.checkpoint_slot_crc = "package", rx.image_crc32_so_far
                t.claims = ImageClaims(rx.image_size, rx.image_crc32, rx.image_sha256)
                active = self.boot_state.active
                t.applier = Applier.resumed(self._base_reader(active), self.boot_state.slots[active].length,
                                            rx.offset, rx.image_offset, rx.image_size)
            else:
                t.kind = "image"
            t.kept = t.kept_slot = 0
            t.file_crc32 = crc
            self.emit(Event.OTA_RESUMED, offset=t.offset, size=t.size, image_offset=t.written)
            return (t.offset, True)
        self._drop_kept(t)
        t.file_crc32 = crc  # persisted with the first checkpoint
        return (0, True)

    def _drop_kept(self, t: Transfer) -> None:
        """Erase bytes kept from an earlier transfer (not this image after all)."""
        if not t.kept:
            return
        self.timed.erase(self.flash.geometry.slot_offset(t.slot), t.kept_slot, self.ep.now)
        t.kept = t.kept_slot = 0

    def on_available(self, inc: Incoming):
        a = inc.args
        offer = {"size": a["size"], "fw_type": a["fw_type"], "fw_version": a["fw_version"]}
        self.emit(Event.OTA_OFFER, filename=a["filename"], fw_build=a["fw_build"], **offer)
        bad = [k for k in ("filename", "fw_type", "fw_version", "fw_build") if not _clean_text(a[k])]
        if bad:
            # Checked before anything touches the flash: the boot state records version and
            # build, and text that is not printable UTF-8 cannot be recorded.
            return self._refuse("available", "bad_offer", fields=bad)
        if self.state is Ota.FINISHING:
            return self._refuse("available", "busy", **offer)
        slot_size = self.flash.geometry.slot_size
        if a["size"] == 0:
            return self._refuse("available", "size_zero", **offer)
        if a["size"] > slot_size:
            return self._refuse("available", "too_large", slot_size=slot_size, **offer)
        if a["fw_type"] != self.own.get("fw-type"):
            return self._refuse("available", "wrong_type", own_type=self.own.get("fw-type"), **offer)
        own_version = self.own.get("mcu", "")
        policy, self.policy = self.policy, Policy()  # the cloud's word holds for the offer it came with
        mandatory = policy.mandatory_for(own_version)
        if self.cfg.version_policy is VersionPolicy.MANDATORY_ONLY and not mandatory:
            return self._refuse("available", "not_mandatory", **offer)
        if (self.cfg.version_policy is VersionPolicy.NEWER and not mandatory
                and not is_newer(a["fw_version"], own_version)):
            return self._refuse("available", "not_newer", own_version=own_version, **offer)
        if self.boot_state.trial:
            return self._refuse("available", "trial_pending", **offer)
        if mandatory:
            self.emit(Event.OTA_MANDATORY, version=a["fw_version"], min_version=policy.min_version)
        self.deferred = {"args": dict(a), "mandatory": mandatory}
        if self.cfg.install_window is not None and not mandatory and self.utc_offset is None:
            # The window is in UTC, and only the NCP knows the time: ask, and answer the
            # offer once it has said (the NCP waits 5 s for that answer).
            def timed(c: Call) -> None:
                if c.ok and c.result:
                    self.utc_offset = c.values["time"] / 1000 - self.ep.now
                self.ep.reply(inc, self._decide(inc))

            self.ep.call("blynk_getTime", on_done=timed)
            return DEFER
        return self._decide(inc)

    def _wait(self, mandatory: bool) -> tuple[float, str] | None:
        """How long to defer an update, and why (None: install now)."""
        now = self.ep.now
        level = battery_level(self.cfg, now)
        if level < self.cfg.min_battery:
            rate = self.cfg.battery_rate
            wait = (self.cfg.min_battery - level) / rate * 3600 if rate > 0 else BATTERY_RECHECK
            return max(1.0, wait), "low_battery"
        if self.cfg.install_window is not None and not mandatory:
            if self.utc_offset is None:
                return BATTERY_RECHECK, "no_time"
            wait = in_window(self.cfg.install_window, self.utc_offset + now)
            if wait > 0:
                return wait, "install_window"
        return None

    def _decide(self, inc: Incoming):
        """Install now, or accept and defer (the answer to an offer that passed every check)."""
        held = self.deferred
        wait = self._wait(held["mandatory"])
        if wait is None:
            return self._accept(inc, held["args"], held["mandatory"])
        seconds, why = wait
        if self.t is not None:
            self.emit(Event.OTA_CANCELLED, reason="replaced_by_new_offer", offset=self.t.offset)
            self.t, self.deadline = None, None
        self._move(OtaEvent.DEFER)
        # After the RESULT: the NCP takes a Suspend for an offer it knows was accepted.
        inc.then = lambda: self._defer(seconds, why)
        return True

    def _defer(self, seconds: float, why: str) -> None:
        suspend = int(min(MAX_SUSPEND, max(1, -(-seconds // 1))))
        self.defer_until = self.ep.now + suspend
        self.emit(Event.OTA_DEFERRED, reason=why, seconds=suspend, battery=round(battery_level(self.cfg, self.ep.now), 1))
        self.report("deferred", why)
        # The NCP learns to wait: a real one pauses the update, the dualmcu one records it.
        self.ep.call("blynk_otaUpdateSuspend", {"seconds": suspend})

    def _reconsider(self) -> None:
        if self.state is not Ota.DEFERRED or self.deferred is None:
            return
        wait = self._wait(self.deferred["mandatory"])
        if wait is not None:
            self._move(OtaEvent.DEFER)
            return self._defer(*wait)
        self.emit(Event.OTA_UNDEFERRED)
        self.ep.call("blynk_otaUpdateSuspend", {"seconds": 0})
        if self._accept(None, self.deferred["args"], self.deferred["mandatory"]) is not False:
            self._after_accept()

    def _accept(self, inc: Incoming | None, a: dict, mandatory: bool):
        """Take the offer: forget the inactive slot, start erasing ahead, then Start.  ``inc`` is
        the offer being answered (None: a deferred one, answered long ago)."""
        offer = {"size": a["size"], "fw_type": a["fw_type"], "fw_version": a["fw_version"]}
        if self.t is not None:
            self.emit(Event.OTA_CANCELLED, reason="replaced_by_new_offer", offset=self.t.offset)
        slot = 1 - self.boot_state.active
        t = Transfer(a["filename"], a["size"], a["fw_type"], a["fw_version"], a["fw_build"], slot,
                     mandatory=mandatory)
        rx = self.boot_state.receiving
        if self.cfg.resume and rx.offset and rx.same_image(t.size, t.fw_version, t.fw_build):
            # Maybe the same image as a transfer cut short: keep what it wrote until the NCP
            # confirms the file (dualmcu_otaResume); any other first write erases it.
            t.kept, t.kept_slot = rx.offset, rx.in_slot
            t.erased_to = rx.in_slot
        # Progress of an earlier transfer stays recorded: it is only ever used after the
        # flash is read back and matches it (on_resume), and rewriting it for each offer
        # would let a flood of offers wear out the boot-state sectors.
        old = self.t
        try:
            if (old is not None and old.slot == slot and not t.kept_slot
                    and not old.written and not old.kept and not old.kept_slot):
                # Nothing was programmed since those pages were erased: go on from there.
                self._erase_ahead(old)
                t.erased_to, t.erasing = old.erased_to, old.erasing
            self.boot_state = self.boot.invalidate(slot)
            ConfigStore(self.flash, slot).erase()  # the slot's configuration goes with its image
        except FlashError as e:
            return self._refuse("available", "flash_error", error=str(e), **offer)
        t.ahead_clock = self.ep.now
        self.t = t
        self.deferred, self.defer_until = None, None
        self._move(OtaEvent.ACCEPT)
        self._arm()
        self.emit(Event.OTA_ACCEPTED, slot="AB"[slot], **offer)
        self.report("downloading", "")
        if inc is not None:
            inc.then = self._after_accept
        return True

    def _after_accept(self) -> None:
        if self.cfg.prefetch:
            self.ep.call("blynk_otaUpdatePrefetch", on_done=self._prefetched)
        else:
            self._start()

    def _prefetched(self, c: Call) -> None:
        if self.state is not Ota.OFFERED:
            return
        if c.ok and c.result == 1:
            self.emit(Event.OTA_PREFETCHED)
            self._start()
        else:
            why = PREFETCH.get(c.result, f"status_{c.status:#x}") if c.ok else f"status_{c.status:#x}"
            self._abandon(f"prefetch_failed:{why}")

    def _start(self) -> None:
        def started(c: Call) -> None:
            if self.state is Ota.OFFERED and not (c.ok and c.result):
                self._abandon("start_refused" if c.ok else f"start_failed:{c.status:#x}")

        self.ep.call("blynk_otaUpdateStart", {"chunk_size": self.cfg.chunk_size}, on_done=started)

    def on_write(self, inc: Incoming):
        a = inc.args
        offset, chunk, crc = a["offset"], a["chunk"], a["crc32"]
        if self.state not in (Ota.OFFERED, Ota.RECEIVING) or self.t is None:
            return self._refuse("write", "not_receiving", offset=offset)
        t = self.t
        if zlib.crc32(chunk) != crc:
            return self._refuse("write", "chunk_crc", offset=offset)
        if not chunk or len(chunk) > self.cfg.chunk_size:
            return self._refuse("write", "chunk_size", offset=offset, length=len(chunk))
        if offset + len(chunk) > t.size:
            return self._refuse("write", "past_end", offset=offset, length=len(chunk), size=t.size)
        self._arm()
        if offset + len(chunk) <= t.offset:
            # Bytes already written: a resend whose first answer was lost, or that crossed it.
            # Acknowledge it when it matches the flash, without writing again.
            base = self.flash.geometry.slot_offset(t.slot)
            if t.kind == "image":
                same = self.flash.read(base + offset, len(chunk)) == chunk
            else:  # a package's bytes are not in the slot: the CRC of the chunk taken there is
                same = t.recent.get(offset) == (len(chunk), crc)
            if same:
                t.duplicates += 1
                self.emit(Event.OTA_DUPLICATE, offset=offset)
                return True
            return self._refuse("write", "offset_mismatch", offset=offset, expected=t.offset)
        if offset == t.offset:
            why = self._incompatible(t, chunk)
            if why is not None:
                self._refuse("write", why[0], offset=offset, **why[1])
                self._abandon(why[0])
                return False
        if offset != t.offset:
            # Ahead of a missing chunk: hold it, within the buffer, until the gap is filled.
            if offset in t.held and t.held[offset][1] == chunk:
                # A resend of a chunk still held: the new call replaces the timed-out one.
                old_inc, _ = t.held.pop(offset)
                t.held_bytes -= len(chunk)
                self.ep.reply(old_inc, False)
            if offset in t.held or t.held_bytes + len(chunk) > self.cfg.buffer or not t.pipelined:
                return self._refuse("write", "offset_mismatch", offset=offset, expected=t.offset)
            t.held[offset] = (inc, chunk)
            t.held_bytes += len(chunk)
            return DEFER
        self._move(OtaEvent.WRITE)
        try:
            self._erase_ahead(t)
            done = self._answer_time(t, offset, chunk, crc)
            while t.offset in t.held:  # the gap is filled: write what was held, in order
                held_inc, held_chunk = t.held.pop(t.offset)
                t.held_bytes -= len(held_chunk)
                why = self._incompatible(t, held_chunk)
                if why is not None:
                    self.ep.reply(held_inc, False)
                    self._refuse("write", why[0], offset=t.offset, **why[1])
                    self._abandon(why[0])
                    break
                self._reply_at(self._answer_time(t, t.offset, held_chunk), held_inc, True)
        except FlashError as e:
            # The chunk is counted but not in the flash (the erase under it failed, or the
            # program did): this transfer cannot be trusted any more. Abandoning it reports
            # why, where refusing only would leave the NCP resending into a wrong offset.
            return self._write_failed("flash_error", offset, e)
        except PackageError as e:
            # Not applied further: nothing of it is installed, and the NCP may fall back
            # to the full image.
            return self._write_failed(e.reason, offset, e)
        self.emit(Event.OTA_PROGRESS, offset=t.offset, size=t.size)
        if done <= self.ep.now:
            return True
        self._reply_at(done, inc, True)
        return DEFER

    def _incompatible(self, t: Transfer, chunk: bytes) -> tuple[str, dict] | None:
        """Look for the image's tag in the next in-order chunk; once found, whether this
        device may run the image (checked before the chunk is programmed)."""
        if t.tag_checked:
            return None
        window = t.carry + chunk
        tag = find_tag(window)
        if tag is None:
            # A tag cut by the chunk edge is found whole in the next window (a tag is far
            # shorter than what is kept).
            t.carry = window[-TAG_CARRY:]
            return None
        t.tag_checked, t.carry = True, b""
        ident = self.flash.identity
        return compat_refusal(parse_tag(tag), ident.hw_rev, ident.bootloader)

    def _answer_time(self, t: Transfer, offset: int, chunk: bytes, crc: int | None = None) -> float:
        """Program one chunk; when its write may be answered (see OtaConfig.write_answer)."""
        taken = self.timed.free_at(self.ep.now)  # the flash starts on this chunk
        done = self._program(t, offset, chunk, crc)
        return taken if self.cfg.write_answer is WriteAnswer.BUFFERED else done

    def _program(self, t: Transfer, offset: int, chunk: bytes, crc: int | None = None) -> float:
        """Take one chunk at the next offset; when the flash will have done its part.  ``crc``
        is the chunk's CRC-32 when already checked."""
        if t.kept:
            self._drop_kept(t)  # the NCP started over without confirming: not the same file
        crc_before = t.file_crc
        t.recent[offset] = (len(chunk), zlib.crc32(chunk) if crc is None else crc)
        if len(t.recent) > RECENT:
            del t.recent[next(iter(t.recent))]
        t.offset += len(chunk)
        if t.kind is None:
            # An image is programmed as it is; a package (DMPK) is applied. Its first bytes
            # say which, so at most 3 bytes wait here.
            t.sniff += chunk
            if len(t.sniff) < 4:
                return self.timed.busy_until
            chunk, t.sniff = t.sniff, b""
            if is_package(chunk):
                t.kind = "package"
                active = self.boot_state.active
                t.applier = Applier(self._base_reader(active), self.boot_state.slots[active].length,
                                    self.cfg.package_ram - self.cfg.chunk_size - PIECE,
                                    on_header=lambda h: self._check_package(t, h))
            else:
                t.kind = "image"
        if t.kind == "image":
            self._persist(t)  # the checkpoint before this chunk, if idle() has not made it
            self._put(t, chunk)
            return self.timed.busy_until
        # A package is checked by the file's digests as it arrived; an image by what the flash
        # holds, read back (see _verify), so an image's chunks are not hashed on arrival.
        t.file_crc = zlib.crc32(chunk, t.file_crc)
        if t.file_sha is not None:
            t.file_sha.update(chunk)
        a = t.applier
        seen = len(a.boundaries)
        for piece in a.feed(chunk):
            self._put(t, piece)
        start = t.offset - len(chunk)
        for at, out in a.boundaries[seen:]:
            # A segment ends here: a point a later transfer of the same package may resume
            # from, when the image offset is page aligned (the pages above it are erased again).
            if (t.file_crc32 is not None and out % self.flash.page_size == 0
                    and out - t.checkpoint_slot >= self.cfg.checkpoint_every):
                self._checkpoint(t, out, (at, zlib.crc32(chunk[: at - start], crc_before)))
        return self.timed.busy_until

    def _base_reader(self, slot: int) -> Callable[[int, int], bytes]:
        base = self.flash.geometry.slot_offset(slot)
        return lambda pos, n: self.flash.read(base + pos, n)

    def _check_package(self, t: Transfer, h: Header) -> None:
        """Before a byte of a package is applied: the image fits, and a delta's base is the
        image this device runs (its bytes, read back from the flash)."""
        slot_size = self.flash.geometry.slot_size
        if h.image_size > slot_size:
            raise PackageError(f"the package rebuilds {h.image_size} bytes, the slot holds {slot_size}", "too_large")
        if h.delta:
            active = self.boot_state.active
            rec = self.boot_state.slots[active]
            _, sha = slot_digests(self.flash, active, rec.length) if rec.installed else (0, bytes(32))
            check_base(h, rec.length if rec.installed else 0, sha)
        t.claims = h.claims
        self.emit(Event.OTA_PACKAGE, package=h.describe()["kind"], compression=h.describe()["compression"],
                  image_size=h.image_size, base_version=h.base_version or None)

    def _put(self, t: Transfer, data: bytes) -> None:
        """Program ``data`` at the slot's next byte.  When it outruns the erase ahead, the
        erase in progress is finished first, then one more block (or to the image's end)."""
        end = t.written + len(data)
        if t.erased_to < end and t.erasing is not None:
            target, left = t.erasing
            self._erase_to(t, target, left)  # resumed, and waited for
            t.erasing = None
        if t.erased_to < end:
            self._erase_to(t, min(max(end, t.erased_to + BLOCK), max(end, t.length)), None)
        self.timed.program(self.flash.geometry.slot_offset(t.slot) + t.written, data, self.ep.now)
        t.written = end

    def _checkpoint(self, t: Transfer, aligned: int, package: tuple[int, int] | None) -> None:
        """Persist progress: ``aligned`` bytes of the slot, with the CRC of what the flash holds
        below it (read back, so a torn page can never be vouched for); for a package also the
        package offset and CRC-32 it resumes from, and the image it rebuilds."""
        base = self.flash.geometry.slot_offset(t.slot)
        if package is None:
            t.checkpoint_crc = read_back(self.flash, base + t.checkpoint, aligned - t.checkpoint, t.checkpoint_crc,
                                         sha=t.readback_sha)
            t.checkpoint = aligned
            rx = Receiving(t.size, t.file_crc32, aligned, t.checkpoint_crc, t.fw_version[:24], t.fw_build[:32])
        else:
            t.checkpoint_slot_crc = read_back(self.flash, base + t.checkpoint_slot, aligned - t.checkpoint_slot,
                                              t.checkpoint_slot_crc)
            t.checkpoint_slot = aligned
            t.checkpoint, t.checkpoint_crc = package
            c = t.claims
            rx = Receiving(t.size, t.file_crc32, t.checkpoint, t.checkpoint_crc, t.fw_version[:24], t.fw_build[:32],
                           aligned, t.checkpoint_slot_crc, c.size, c.crc32, c.sha256)
        self.boot_state = self.boot.checkpoint(rx)

    def _erase_ahead(self, t: Transfer) -> None:
        """Spend the flash's idle time since it was last looked at erasing the slot ahead of
        the writes.  Computed lazily, when the receiver next needs the flash: nothing else
        can see which pages are erased meanwhile, and the slot is not bootable anyway."""
        now, page = self.ep.now, self.flash.page_size
        end = min(-(-t.length // page) * page, self.flash.geometry.slot_size)
        clock = max(t.ahead_clock, self.timed.busy_until)
        while clock < now and t.erased_to < end:
            if t.erasing is None:
                aligned = t.erased_to % BLOCK == 0 and end - t.erased_to >= BLOCK
                step = BLOCK if aligned else -(-min(SECTOR, end - t.erased_to) // page) * page
                t.erasing = (t.erased_to + step, self.cfg.timing.erase(step))
            target, left = t.erasing
            spent = min(left, now - clock)
            clock += spent
            if spent < left:
                t.erasing = (target, left - spent)
                break
            self._erase_to(t, target, 0.0)  # done in time the flash was idle
            t.erasing = None
        t.ahead_clock = max(t.ahead_clock, min(clock, now))

    def _erase_to(self, t: Transfer, end: int, seconds: float | None) -> None:
        """Erase the slot up to ``end``, taking ``seconds`` of flash time (None: the full erase)."""
        if end <= t.erased_to:
            return
        base, page = self.flash.geometry.slot_offset(t.slot), self.flash.page_size
        nbytes = -(-(end - t.erased_to) // page) * page
        self.timed.erase(base + t.erased_to, nbytes, self.ep.now, seconds)
        t.erased_to += nbytes

    def on_finish(self, inc: Incoming):
        if self.state is not Ota.RECEIVING or self.t is None:
            return self._refuse("finish", "busy" if self.state is Ota.FINISHING else "not_receiving")
        t = self.t
        if t.offset != t.size:
            return self._refuse("finish", "size_mismatch", received=t.offset, size=t.size)
        if t.kind == "package" and not t.applier.done:
            self._move(OtaEvent.FINISH)
            self._reject(t, "package_corrupt", error="the package ends before its image is whole")
            return False
        self._move(OtaEvent.FINISH)
        self.deadline = None
        got: dict[str, Call] = {}

        def collected(c: Call) -> None:
            got[c.fn.name] = c
            if len(got) == 2:
                self._verify(inc, got)

        self.ep.call("blynk_otaUpdateGetCRC32", on_done=collected)
        self.ep.call("blynk_otaUpdateGetSHA256", on_done=collected)
        return DEFER

    def _verify(self, inc: Incoming, got: dict[str, Call]) -> None:
        t = self.t
        if self.state is not Ota.FINISHING or t is None:
            return self.ep.reply(inc, False)
        crc_call, sha_call = got["blynk_otaUpdateGetCRC32"], got["blynk_otaUpdateGetSHA256"]

        def fail(reason: str, **fields) -> None:
            # Back to RECEIVING with every byte in place: the NCP may ask to finish again.
            self._move(OtaEvent.VERIFY_FAILED)
            self._arm()
            self._refuse("finish", reason, **fields)
            self.ep.reply(inc, False)

        if not (crc_call.ok and crc_call.result and sha_call.ok and sha_call.result):
            return fail("digest_unavailable", crc_status=crc_call.status, sha_status=sha_call.status)
        ncp_crc, ncp_sha = crc_call.values["crc32"], sha_call.values["sha256"]
        if t.kind == "package":
            # The file's digests are the package's: CRC-32 as it arrived, SHA-256 too unless
            # the transfer resumed; then the image it rebuilt, read back from the flash, must
            # be the one its header names (length, CRC-32, SHA-256).
            if t.file_crc != ncp_crc:
                return fail("crc_mismatch", ours=f"{t.file_crc:08x}", ncp=f"{ncp_crc:08x}")
            if t.file_sha is not None and t.file_sha.digest() != ncp_sha:
                return fail("sha256_mismatch", ours=t.file_sha.hexdigest(), ncp=ncp_sha.hex())
            crc, sha = slot_digests(self.flash, t.slot, t.length)
            c = t.claims
            if (t.written, crc, sha) != (c.size, c.crc32, c.sha256):
                return self._reject(t, "package_image_mismatch", inc, crc32=f"{crc:08x}",
                                    expected=f"{c.crc32:08x}")
        else:
            crc, sha = self._image_digests(t)
            if crc != ncp_crc:
                return fail("crc_mismatch", ours=f"{crc:08x}", ncp=f"{ncp_crc:08x}")
            if sha != ncp_sha:
                return fail("sha256_mismatch", ours=sha.hex(), ncp=ncp_sha.hex())
        why = self._tag_refusal(t)
        if why is not None:
            # The bytes arrived whole, but the image is not the one offered, or not one this
            # device may run: the offer's claims are checked against what was received.
            return self._reject(t, why[0], inc, **why[1])
        trust = self.boot.trust
        if trust is not None and trust.keys:
            v = check_signature(self.flash, t.slot, t.length, trust, self.boot_state.security_counter)
            if not v:
                # Bytes arrived whole but are not an image this device may install.
                return self._reject(t, f"signature_{v.reason}", inc,
                                    counter=v.signature.counter if v.signature else None)
        try:
            self.boot_state = self.boot.install(t.slot, t.length, (crc, sha))  # as just read back
        except FlashError as e:
            return fail("flash_error", error=str(e))
        self.emit(Event.OTA_INSTALLED, slot="AB"[t.slot], version=t.fw_version, size=t.length, sha256=sha.hex(),
                  duplicates=t.duplicates, **({"package_size": t.size} if t.kind == "package" else {}))
        self.report("written", "")
        self._move(OtaEvent.INSTALLED)
        self.t = None
        inc.then = lambda: self.reboot("ota_installed")
        # An answer given once a chunk was buffered leaves the last programs running: Finish is
        # answered (and the device reboots) only when the flash has done them.
        self._reply_at(self.timed.busy_until, inc, True)

    def _image_digests(self, t: Transfer) -> tuple[int, bytes]:
        """The CRC-32 and SHA-256 of the image as the flash holds it.  The slot below the last
        checkpoint was read back there, and nothing of this transfer programs it again: only
        the rest is read back now, so a 16 MiB image is verified without reading 16 MiB at the
        Finish the NCP waits on.  After a resume the whole slot is read."""
        if t.readback_sha is None:
            return slot_digests(self.flash, t.slot, t.size)
        h = t.readback_sha.copy()
        base = self.flash.geometry.slot_offset(t.slot)
        crc = read_back(self.flash, base + t.checkpoint, t.size - t.checkpoint, t.checkpoint_crc, sha=h)
        return crc, h.digest()

    def _reject(self, t: Transfer, reason: str, inc: Incoming | None = None, **fields) -> None:
        """Arrived whole, but not an image this device may install: FINISHING -> IDLE."""
        self._move(OtaEvent.REJECTED)
        self.t, self.deadline = None, None
        self._refuse("finish", reason, **fields)
        self.emit(Event.OTA_CANCELLED, reason=reason, offset=t.size)
        self.report("failed", reason)
        if inc is not None:
            self.ep.reply(inc, False)

    def _tag_refusal(self, t: Transfer) -> tuple[str, dict] | None:
        """Every gate of the offer, applied again to the tag of the image in the slot."""
        base = self.flash.geometry.slot_offset(t.slot)
        tag = read_info_streamed(lambda pos, n: self.flash.read(base + pos, n), t.length)
        if not tag or not tag.get("mcu") or not tag.get("fw-type"):
            return "image_untagged", {}
        own_type, own_version = self.own.get("fw-type"), self.own.get("mcu", "")
        if tag["fw-type"] != own_type:
            return "image_wrong_type", {"image_type": tag["fw-type"], "own_type": own_type}
        if tag["mcu"] != t.fw_version or tag["fw-type"] != t.fw_type:
            return "image_not_as_offered", {"image_version": tag["mcu"], "offered_version": t.fw_version,
                                            "image_type": tag["fw-type"], "offered_type": t.fw_type}
        if self.cfg.version_policy is VersionPolicy.NEWER and not t.mandatory and not is_newer(tag["mcu"], own_version):
            return "image_not_newer", {"image_version": tag["mcu"], "own_version": own_version}
        ident = self.flash.identity
        why = compat_refusal(tag, ident.hw_rev, ident.bootloader)
        if why is not None:
            return "image_" + why[0], why[1]
        return None

    def on_cancel(self, inc: Incoming):
        if self.state is not Ota.IDLE:
            self._abandon("ncp_cancel")
        return None

    def _abandon(self, reason: str) -> None:
        offset = self.t.offset if self.t else 0
        self.deferred, self.defer_until = None, None
        self.report("failed", reason)
        if self.t is not None:
            for held_inc, _ in self.t.held.values():
                self.ep.reply(held_inc, False)
        self._move(OtaEvent.ABANDON)
        self.t, self.deadline = None, None
        # The slot was forgotten in the boot state when the offer was accepted; what was
        # written to it is garbage that the next transfer erases page by page.
        self.emit(Event.OTA_CANCELLED, reason=reason, offset=offset)
