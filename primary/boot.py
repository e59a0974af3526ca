"""The boot-state record and the bootloader of the emulated primary MCU.

Boot state
----------
One record, kept in two copies (flash pages 1 and 2) as records.py describes: a power cut
during a write loses at most the copy being written, never the state before it.

    offset size  field
    0      4     magic "BOOT"
    4      1     record version (1)
    5      4     sequence number, u32 LE, +1 per write
    9      1     active slot: 0 = A, 1 = B (the slot the bootloader starts)
    10     1     confirmed slot: 0, 1, or 0xFF when none is
    11     1     trial: 1 while the active slot runs on trial
    12     1     boot attempts left for the trial
    13     2x41  per slot: installed u8, length u32, crc32 u32, sha256[32]
    95     72    the image being received: size u32, file crc32 u32, offset u32 (page
                 aligned), running crc32 u32 of the bytes below offset, version[24], build[32]
    167    4     security counter u32: the highest of a confirmed signed image (anti-rollback)
    171    4     boots u32: every boot the bootloader made
    175    2     crash loop u16: boots in a row that never reached a healthy application
    177    2     rollbacks u16
    179    2     trial failure u16: why the image on trial failed (reasons.py), 0 while none
    181    2     last failure u16: the reason of the latest failure of any kind, kept
    183    4     CRC-32 of bytes 0..182, LE

Bootloader rules, applied at every boot, in order
-------------------------------------------------
    state                                     action
    no valid copy                             blank: nothing to boot (provision a factory image)
    every boot                                boots + 1 and crash loop + 1 (the application
                                          sets crash loop to 0 once it is healthy)
    trial, attempts left == 0                 roll back to the confirmed slot, trial off; the
                                              reason is the trial failure if one was recorded
                                              (health check, commit timer), else attempts spent
    trial, attempts left > 0                  attempts - 1, written *before* the image runs,
                                              so an image that crashes still spends its tries
    active image does not verify, trial       roll back to the confirmed slot
    active image does not verify, confirmed   boot the other slot if it is installed and
                                              verifies (and make it the confirmed one)
    nothing verifies                          no bootable image: stop, say so

"Verify" means: the slot is installed, and the CRC-32 and SHA-256 of its first ``length``
bytes equal those recorded at install; and, when keys are trusted, the image's signature
verifies with one of them, names this device's target, and carries a security counter no
lower than the highest confirmed one (signing.py).  The application confirms a trial image after its
health check; a confirmed image stays until the next install.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable

from dualmcu.rpc.events import Event

from .flash import Flash, FlashError, Geometry, Identity
from .reasons import code_of, name_of
from .records import Redundant

MAGIC = b"BOOT"
RECORD_VERSION = 5  # 5 added the package fields of Receiving; a version-4 record still reads
NO_SLOT = 0xFF
DEFAULT_ATTEMPTS = 3
_HEAD = struct.Struct("<4sBIBBBB")
_SLOT = struct.Struct("<BII32s")
_RX = struct.Struct("<IIII24s32s")  # size, file crc32, offset, running crc32, version, build
# A package being applied (version 5): image offset and the CRC-32 of the slot below it, and
# the image the package rebuilds (size, CRC-32, SHA-256), which a resumed transfer checks.
_PKG = struct.Struct("<IIII32s")
_SEC = struct.Struct("<I")  # the highest security counter of a confirmed signed image
_CNT = struct.Struct("<IHHHH")  # boots, crash loop, rollbacks, trial failure, last failure
RECORD_SIZE_V4 = _HEAD.size + 2 * _SLOT.size + _RX.size + _SEC.size + _CNT.size + 4
RECORD_SIZE = RECORD_SIZE_V4 + _PKG.size


@dataclass(frozen=True)
class Receiving:
    """The image being received into the inactive slot, and how far it got (for resume)."""

    size: int = 0
    file_crc32: int = 0  # as the NCP reported it; 0 until known
    offset: int = 0  # bytes in the slot that match the image, page aligned
    running_crc32: int = 0  # CRC-32 of those bytes
    version: str = ""
    build: str = ""
    # When the file is a package (image/package.py), ``offset`` and ``running_crc32`` are the
    # package's, at a segment boundary, and these say where the image it rebuilds stands:
    image_offset: int = 0  # image bytes in the slot, page aligned
    image_crc32_so_far: int = 0  # CRC-32 of those bytes
    image_size: int = 0  # 0: not a package
    image_crc32: int = 0
    image_sha256: bytes = bytes(32)

    @property
    def package(self) -> bool:
        return self.image_size > 0

    @property
    def in_slot(self) -> int:
        """Bytes at the start of the slot that this record vouches for."""
        return self.image_offset if self.package else self.offset

    def same_image(self, size: int, version: str, build: str) -> bool:
        return self.size == size and self.version == version[:24] and self.build == build[:32] and size > 0


@dataclass(frozen=True)
class SlotRecord:
    installed: bool = False
    length: int = 0
    crc32: int = 0
    sha256: bytes = bytes(32)


@dataclass(frozen=True)
class BootState:
    seq: int = 0
    active: int = 0
    confirmed: int = NO_SLOT
    trial: bool = False
    attempts: int = 0
    slots: tuple[SlotRecord, SlotRecord] = field(default_factory=lambda: (SlotRecord(), SlotRecord()))
    receiving: Receiving = field(default_factory=Receiving)
    security_counter: int = 0
    boots: int = 0
    crash_loop: int = 0
    rollbacks: int = 0
    trial_failure: int = 0  # a reason code (reasons.py)
    last_failure: int = 0

    @property
    def last_failure_reason(self) -> str:
        return name_of(self.last_failure)

    def failed(self, reason: str, trial: bool = False) -> BootState:
        """This state with ``reason`` recorded as the latest failure (and the trial's own)."""
        code = code_of(reason)
        return replace(self, last_failure=code, trial_failure=code if trial else self.trial_failure)

    def with_slot(self, slot: int, rec: SlotRecord) -> BootState:
        slots = list(self.slots)
        slots[slot] = rec
        return replace(self, slots=tuple(slots))

    def encode(self) -> bytes:
        body = _HEAD.pack(MAGIC, RECORD_VERSION, self.seq, self.active, self.confirmed, int(self.trial), self.attempts)
        body += b"".join(_SLOT.pack(int(s.installed), s.length, s.crc32, s.sha256) for s in self.slots)
        r = self.receiving
        body += _RX.pack(r.size, r.file_crc32, r.offset, r.running_crc32, r.version.encode()[:24], r.build.encode()[:32])
        body += _SEC.pack(self.security_counter)
        body += _CNT.pack(min(self.boots, 0xFFFFFFFF), min(self.crash_loop, 0xFFFF), min(self.rollbacks, 0xFFFF),
                          self.trial_failure, self.last_failure)
        body += _PKG.pack(r.image_offset, r.image_crc32_so_far, r.image_size, r.image_crc32, r.image_sha256)
        return body + zlib.crc32(body).to_bytes(4, "little")

    @classmethod
    def decode(cls, data: bytes) -> BootState | None:
        if len(data) < RECORD_SIZE_V4 or data[:4] != MAGIC:
            return None
        version = data[4]
        size = {RECORD_VERSION: RECORD_SIZE, 4: RECORD_SIZE_V4}.get(version, 0)
        if not size or len(data) < size:
            return None
        body, crc = data[: size - 4], data[size - 4 : size]
        if zlib.crc32(body).to_bytes(4, "little") != crc:
            return None
        _, version, seq, active, confirmed, trial, attempts = _HEAD.unpack_from(body)
        if active > 1 or confirmed not in (0, 1, NO_SLOT):
            return None
        slots = tuple(
            SlotRecord(bool(i), n, c, h) for i, n, c, h in (_SLOT.unpack_from(body, _HEAD.size + k * _SLOT.size) for k in (0, 1))
        )
        size, fcrc, off, rcrc, ver, build = _RX.unpack_from(body, _HEAD.size + 2 * _SLOT.size)
        pkg = _PKG.unpack_from(body, RECORD_SIZE_V4 - 4) if version == RECORD_VERSION else (0, 0, 0, 0, bytes(32))
        rx = Receiving(size, fcrc, off, rcrc, ver.rstrip(b"\x00").decode(errors="replace"),
                       build.rstrip(b"\x00").decode(errors="replace"), *pkg)
        at = _HEAD.size + 2 * _SLOT.size + _RX.size
        (counter,) = _SEC.unpack_from(body, at)
        boots, loop, rollbacks, trial_failure, last_failure = _CNT.unpack_from(body, at + _SEC.size)
        return cls(seq, active, confirmed, bool(trial), attempts, slots, rx, counter, boots, loop, rollbacks,
                   trial_failure, last_failure)


class BootStore(Redundant[BootState]):
    """The boot state in flash pages 1 and 2 (records.py keeps it redundantly)."""

    def __init__(self, flash: Flash):
        super().__init__(flash, flash.geometry.state_offsets, BootState.decode, remember=True)


@dataclass(frozen=True)
class BootResult:
    slot: int | None  # None: nothing bootable
    trial: bool
    state: BootState | None
    events: tuple[tuple[str, dict], ...]  # what the bootloader did, for the log


def read_back(flash: Flash, start: int, length: int, crc: int = 0, sha=None) -> int:
    """CRC-32 of ``length`` bytes of the flash from ``start``, continuing ``crc``, read in
    64 KiB blocks (nothing holds an image whole); the same bytes also go into ``sha``."""
    step = 1 << 16
    for pos in range(0, length, step):
        data = flash.read(start + pos, min(step, length - pos))
        crc = zlib.crc32(data, crc)
        if sha is not None:
            sha.update(data)
    return crc


def slot_digests(flash: Flash, slot: int, length: int) -> tuple[int, bytes]:
    sha = hashlib.sha256()
    crc = read_back(flash, flash.geometry.slot_offset(slot), length, sha=sha)
    return crc, sha.digest()


def verify_slot(flash: Flash, state: BootState, slot: int) -> bool:
    rec = state.slots[slot]
    if not rec.installed or not 0 < rec.length <= flash.geometry.slot_size:
        return False
    return slot_digests(flash, slot, rec.length) == (rec.crc32, rec.sha256)


def bootable(flash: Flash, trust: Trust | None = None) -> int | None:
    """The slot the next boot would run (None: bricked), found by the bootloader itself, with
    its signature checks, on a copy of the flash: nothing is written to ``flash``."""
    return Bootloader(flash.snapshot(), trust=trust).boot().slot


@dataclass(frozen=True)
class Trust:
    """The public keys this device trusts (by key id) and its own target identity."""

    keys: dict
    target: str = "dualmcu/1"
    any_target: bool = False  # install images signed for target "*" (off: only this target)


def check_signature(flash: Flash, slot: int, length: int, trust: Trust, min_counter: int):
    from dualmcu.image.signing import verify

    base = flash.geometry.slot_offset(slot)
    return verify(length, lambda off, n: flash.read(base + off, n), trust.keys, trust.target, min_counter,
                  any_target=trust.any_target, bootloader=flash.identity.bootloader)


def check_factory(image: bytes, geometry: Geometry, trust: Trust | None, identity: Identity) -> int:
    """Why ``image`` cannot be a factory image on this device (ValueError), checked before a
    byte is written: it must fit a slot and, with trusted keys, be signed for this device.
    Returns the security counter anti-rollback starts at (a signed image's own, else 0)."""
    if len(image) > geometry.slot_size:
        raise ValueError(f"factory image of {len(image)} bytes does not fit a {geometry.slot_size}-byte slot")
    if trust is None or not trust.keys:
        return 0
    from dualmcu.image.signing import verify_bytes

    v = verify_bytes(image, trust.keys, trust.target, any_target=trust.any_target,
                     bootloader=identity.bootloader)
    if not v.ok:
        raise ValueError(f"factory image refused: {v.reason}")
    return v.signature.counter


class Bootloader:
    def __init__(self, flash: Flash, attempts: int = DEFAULT_ATTEMPTS, trust: Trust | None = None,
                 on_unsaved: Callable[[str], None] = lambda error: None):
        self.flash = flash
        self.store = BootStore(flash)
        self.attempts = attempts
        self.trust = trust
        self.on_unsaved = on_unsaved

    def _keep(self, new: BootState) -> BootState:
        """Persist a record the device goes on with whatever happens (a boot, a verdict on
        the running image).  When its flash page is worn out the device runs on with the
        record in RAM, and the previous one stays on flash: the next boot sees that one.
        An update's own records (invalidate, checkpoint, install) raise instead: the
        receiver refuses the update with the reason."""
        try:
            return self.store.store(new)
        except FlashError as e:
            self.on_unsaved(str(e))
            return new

    def _verifies(self, state: BootState, slot: int) -> bool:
        if not verify_slot(self.flash, state, slot):
            return False
        if self.trust is None or not self.trust.keys:
            return True
        return bool(check_signature(self.flash, slot, state.slots[slot].length, self.trust, state.security_counter))

    def boot(self) -> BootResult:
        events: list[tuple[str, dict]] = []
        state = self.store.load()
        if state is None:
            return BootResult(None, False, None, (("blank", {}),))
        # Counted in the same write as the trial's attempt, so a boot costs one write.
        state = replace(state, boots=state.boots + 1, crash_loop=state.crash_loop + 1)
        written = False

        def save(new: BootState) -> BootState:
            nonlocal written
            written = True
            return self._keep(new)

        def roll_back(why: str) -> BootState | None:
            target = state.confirmed
            if target == NO_SLOT or not self._verifies(state, target):
                events.append((Event.ROLLBACK_IMPOSSIBLE, {"reason": why}))
                return None
            events.append((Event.ROLLBACK, {"from_slot": "AB"[state.active], "to_slot": "AB"[target], "reason": why}))
            return save(replace(state.failed(why), active=target, trial=False, attempts=0, trial_failure=0,
                                rollbacks=state.rollbacks + 1))

        if state.trial and state.attempts == 0:
            # The image's own verdict (a failed health check, the commit timer) names the
            # rollback; without one, it crashed or hung through every attempt.
            state = roll_back(name_of(state.trial_failure) if state.trial_failure else "trial_attempts_spent")
        elif state.trial:
            state = save(replace(state, attempts=state.attempts - 1))
            events.append((Event.TRIAL_BOOT, {"slot": "AB"[state.active], "attempts_left": state.attempts}))
        if state is not None and not self._verifies(state, state.active):
            events.append((Event.VERIFY_FAILED, {"slot": "AB"[state.active]}))
            if state.trial:
                state = roll_back("trial_image_does_not_verify")
            else:
                other = 1 - state.active
                if self._verifies(state, other):
                    events.append((Event.FALLBACK, {"to_slot": "AB"[other]}))
                    state = save(replace(state.failed("image_does_not_verify"), active=other, confirmed=other,
                                         trial=False, attempts=0))
                else:
                    state = None
        if state is None:
            events.append((Event.NO_BOOTABLE_IMAGE, {}))
            return BootResult(None, False, self.store.load(), tuple(events))
        if not written:
            state = save(state)
        return BootResult(state.active, state.trial, state, tuple(events))

    def reject(self, reason: str) -> BootState:
        """The image on trial failed its own check (health, commit timer): the next boot rolls
        back at once, naming ``reason``, instead of spending the attempts left."""
        state = self.store.load()
        assert state is not None and state.trial
        return self._keep(replace(state.failed(reason, trial=True), attempts=0))

    def record_failure(self, reason: str) -> BootState:
        """Keep ``reason`` as the latest failure (written only when it changes: an offer
        flood of the same refusal costs no flash wear)."""
        state = self.store.load()
        assert state is not None
        new = state.failed(reason)
        return state if new == state else self._keep(new)

    def healthy(self) -> BootState:
        """The application reached its health point: the crash loop is over."""
        state = self.store.load()
        assert state is not None
        return state if not state.crash_loop else self._keep(replace(state, crash_loop=0))

    def install(self, slot: int, length: int, digests: tuple[int, bytes] | None = None) -> BootState:
        """Make ``slot`` (already written) the active image, on trial.  ``digests``: its CRC-32
        and SHA-256 as the caller has just read them back (else they are read here)."""
        state = self.store.load() or BootState()
        crc, sha = digests if digests is not None else slot_digests(self.flash, slot, length)
        state = state.with_slot(slot, SlotRecord(True, length, crc, sha))
        return self.store.store(replace(state, active=slot, trial=True, attempts=self.attempts, receiving=Receiving(),
                                        trial_failure=0))

    def confirm(self) -> BootState:
        """Keep the running image; a signed one raises the security counter to its own."""
        state = self.store.load()
        assert state is not None
        counter = state.security_counter
        if self.trust is not None and self.trust.keys:
            v = check_signature(self.flash, state.active, state.slots[state.active].length, self.trust, 0)
            if v.signature is not None and v.ok:
                counter = max(counter, v.signature.counter)
        if (not state.trial and state.confirmed == state.active and counter == state.security_counter
                and not state.crash_loop):
            return state
        return self._keep(replace(state, confirmed=state.active, trial=False, attempts=0,
                                  security_counter=counter, crash_loop=0))

    def invalidate(self, slot: int, receiving: Receiving | None = None) -> BootState:
        """Forget ``slot``'s image before overwriting it, so a half-written slot never counts;
        record what is being received there (for resume)."""
        state = self.store.load() or BootState()
        new = state.with_slot(slot, SlotRecord())
        if receiving is not None:
            new = replace(new, receiving=receiving)
        if new == state:
            return state
        return self.store.store(new)

    def checkpoint(self, receiving: Receiving) -> BootState:
        """Persist how far a transfer got."""
        state = self.store.load() or BootState()
        return self.store.store(replace(state, receiving=receiving))

    def provision(self, image: bytes) -> BootState:
        """Write a factory image to slot A and make it the confirmed one (a blank device only)."""
        g = self.flash.geometry
        counter = check_factory(image, g, self.trust, self.flash.identity)
        base = g.slot_offset(0)
        for off in range(0, len(image), g.page_size):
            self.flash.erase_page(base + off)
        self.flash.write(base, image)
        crc, sha = slot_digests(self.flash, 0, len(image))
        state = BootState().with_slot(0, SlotRecord(True, len(image), crc, sha))
        return self.store.store(replace(state, active=0, confirmed=0, trial=False, attempts=0,
                                        security_counter=counter))
