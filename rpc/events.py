"""Every event the emulated sides report, in one table.

An event is what a side tells its user: a JSON line ``{"side": …, "event": kind, "t": …,
fields…}`` with ``--json``, a readable line otherwise, and a record in a simulation.  The kind
is an :class:`Event`; a core cannot emit a kind that is not listed here (``Device.emit``
refuses a plain string), and code that acts on an event names the member, so a renamed or
misspelt kind fails at import time, not silently in a branch that never matches.

Members are strings, so a JSON line read back compares equal to its member, and the stream a
tool reads is unchanged.  The table also generates ``docs/events.md``.

Each line of the table reads ``kind  side  | what it means``, where side is ``ncp``,
``primary``, ``both`` (each side emits it, with the fields it has) or ``shell`` (the I/O shell
of either side, not the core).
"""

from __future__ import annotations

import re
from enum import Enum

from .interface import INTERFACE, NCP, ONEWAY

_TABLE = """
# The wire and the endpoint (either side)
rpc_timeout                 both     | a call got no RESULT within its timeout (name, msg_id)
rpc_frame_dropped           both     | a frame failed its check or overran the buffer (reason, size, raw)
rpc_malformed               both     | a frame passed its check but is no message (reason, raw)
rpc_stale_result            both     | a RESULT for a call that is no longer waiting (msg_id, status)
rpc_bad_result              both     | a RESULT whose fields do not decode (name, msg_id, error)
rpc_result_too_large        both     | an answer larger than one frame carries: an error status goes instead (name, size)
rpc_callback_error          both     | the side's own handler of a RESULT failed (name)
rpc_unknown_uid             both     | a call to a function this side does not serve (uid, msg_id, answered)
rpc_echo                    both     | the side's own call or ONEWAY came back to it: the port echoes what it sends; said once (name, msg_id, hint)
rpc_bad_args                both     | a call whose arguments do not decode; an INVOKE is answered with an error status (name, error)
rpc_handler_error           both     | the side's own handler of a call failed; an INVOKE is answered with an error status (name, error)

# The I/O shell of either side
port_open                   shell    | the side opened its port (port, baud, clock_origin: the UTC time at which t is 0; firmware_log: where an exec: target's output goes)
baud_change_failed          shell    | the port refused the baud rate the peer switched to (baud, error)
baud_reset                  shell    | the port is back at its initial rate after a reboot (baud)
rebooted                    shell    | the core was thrown away and a new one booted on the same port
no_peer                     shell    | seconds without a byte, or bytes without a valid frame; says the likely cause (hint)
tx_dropped                  shell    | the peer stopped reading: the oldest queued bytes were dropped (bytes)
events_dropped              shell    | the reader of the event lines (--json, or -v on stderr) fell so far behind that lines were left out (lines, held)
exit                        shell    | the side ends, with its exit code and reason (code, reason)
shipment                    shell    | a release file the NCP serves (file, file_kind, size, version, fw_type, sha256)
shipment_skipped            shell    | release files older than the newest, not served (files)
provisioned                 shell    | a factory image was written to a blank flash (image, size)
provision_ignored           shell    | --provision given, but the flash already holds firmware (image)
power_cut                   shell    | the planned power cut struck a flash operation (op, operation, applied)
target_started              shell    | an exec: target's firmware process started again on its pty: a reboot or a power cycle (starts, log)
target_exited               shell    | an exec: target's firmware process ended (code); it is started again
baud_mismatch               shell    | an exec: target's UART runs at another rate than this side's: bytes arrive garbled or lost, as on a real UART (firmware_baud, baud)

# The NCP: its state, the primary's calls, the cloud
state                       ncp      | the NCP's connection state changed (state)
initialize                  ncp      | the primary called blynk_initialize (template_id, template_name)
initialize_without_firmware_info ncp | initialize before setFirmwareInfo: accepted, but no offer until a report
primary_firmware            ncp      | the primary reported its firmware tag (fw_type, version, build)
primary_lost                ncp      | the primary stopped calling during an update and missed its pings (tries)
misbehaved                  ncp      | the test cloud lied as --misbehave asked (what: offer, corrupt_chunk, chunk_crc, wrong_crc32, wrong_sha256; its fields)
value_refused               ncp      | a stored text longer than the NCP keeps (key, length, limit)
set_time_refused            ncp      | a time out of range (time, reason)
baud_change                 ncp      | the primary asked for a new baud rate; both sides switch after the answer (baud)
rebooting                   both     | the side reboots (reason)
telemetry                   ncp      | the primary's OTA report, as the cloud records it (ota_state, ota_reason, …)
telemetry_refused           ncp      | an OTA report that is not a JSON object (reason, length)
cloud_record                ncp      | the cloud's record of the update when the NCP ends (--once) (outcome, telemetry)

# The NCP: one update
ota_offer                   both     | NCP: an update offered (filename, size, version, fw_type, file_kind, offer); primary: the offer as received
ota_offer_declined          ncp      | the primary refused the offer; the NCP offers again later (reason, will_retry_in)
ota_accepted                both     | the primary accepted the offer (ncp: the file and its version; primary: slot and the offer's fields)
prefetch_start              ncp      | the primary asked the NCP to download the image ahead (size)
prefetch_done               ncp      | the download ahead finished (size)
prefetch_failed             ncp      | the download ahead failed (reason or at, error)
ota_start_refused           ncp      | otaUpdateStart with nothing offered, or a zero chunk size (reason)
ota_start                   ncp      | the transfer starts (chunk_size, asked, size, prefetched)
ota_resumed                 both     | a transfer goes on from what the primary already holds (offset, size)
ota_window                  ncp      | how many writes may be in flight, after asking the primary (window, pipelined)
ota_progress                both     | bytes acknowledged so far (offset, size; NCP: retries)
ota_retry                   ncp      | a write or Finish is sent again (offset, attempt, reason)
ota_stalled                 ncp      | an offer was not taken up within the stage timeout (state, waited)
ota_interrupted             ncp      | the primary restarted during an update (state, version, old, offers_left)
ota_deferred                both     | the primary put the update off (NCP: seconds, deferrals; primary: reason, seconds, battery)
ota_undeferred              both     | the primary takes a deferred update up again
ota_suspend                 ncp      | the primary asked the NCP to hold its next offer (seconds)
ota_finished                ncp      | the primary accepted Finish: the image is complete and checked (retries)
ota_fallback                ncp      | a package failed; the NCP offers the next file of the release (failed, next, outcome)
ota_outcome                 ncp      | how the update ended (outcome, reason, telemetry)

# The primary: boot, flash, configuration
trust                       primary  | the keys the bootloader trusts (keys, target)
booted                      primary  | the bootloader chose an image (slot, trial, version, fw_type, boots, hw_rev, bootloader)
halted                      primary  | no bootable image: the device cannot run (reason)
boot_state_not_saved        primary  | the boot state could not be written (error)
crashed                     primary  | a test image crashed at start (reason)
hung                        primary  | a test image that neither confirms nor crashes
config_loaded               primary  | the configuration store was read (schema, source, from_schema, keys)
config_migrated             primary  | the configuration moved to this image's schema (schema, breaking)
config_unreadable           primary  | the configuration's schema is newer than this image reads (schema, own_schema)
config_full                 primary  | a setting did not fit in the configuration store (key)
health_check_running        primary  | a trial image checks itself before it confirms (seconds)
health_check_failed         primary  | the trial image's check failed: it will be rolled back (version)
confirmed                   primary  | the running image is confirmed: it stays (slot, version)
commit_timeout              primary  | a trial image did not confirm in time: rolled back at the next boot (waited, version)
trial_boot                  primary  | the bootloader starts a new image on trial (slot, attempts_left)
rollback                    primary  | the bootloader went back to the other slot (reason, from_slot, to_slot)
rollback_impossible         primary  | a rollback was due but the other slot holds no bootable image (reason)
verify_failed               primary  | the active slot's image failed its check (slot)
fallback                    primary  | the bootloader boots the other slot instead (to_slot)
no_bootable_image           primary  | neither slot holds a bootable image

# The primary: its NCP
ncp_version                 primary  | the NCP's firmware version (version)
ncp_state                   primary  | the NCP's connection state, asked or notified (state)
ncp_event                   primary  | an event the NCP reported with client_processEvent (event)
ncp_init_failed             primary  | a call of the initialisation failed; tried again later (call, status)
ncp_restarted               primary  | getState answered "not initialised": the NCP restarted, initialise again
ncp_lost                    primary  | the NCP missed its heartbeats: initialise again (misses)
baud_changed                primary  | the NCP answered a ping at the new baud rate (baud)
baud_change_refused         primary  | the NCP refused the new baud rate (baud, status)
baud_ping_lost              primary  | no answer at the new baud rate yet; pinging again (baud)
ready                       primary  | initialised, with the NCP, and running its application (version)
telemetry_sent              primary  | the OTA report sent to the cloud (ota_state, ota_reason)
vpin_change                 primary  | the cloud wrote a virtual pin (vpin, value)
ota_policy                  primary  | the cloud's update policy changed (mandatory, min_version)

# The primary: one update
ota_mandatory               primary  | an offer the primary may not put off (version, min_version)
ota_refused                 primary  | a call of the update refused (call, reason)
ota_prefetched              primary  | the NCP holds the whole image: the transfer starts
ota_duplicate               primary  | a write the primary already holds, answered true again (offset)
ota_package                 primary  | the image is a package: compressed or a delta (package, compression, image_size, base_version)
ota_installed               primary  | the new image is written and checked; the device reboots into it (slot, version, size, sha256)
ota_cancelled               primary  | the update was abandoned (reason, offset)
"""


class _Kind(str, Enum):
    """An event kind.  ``side`` says who emits it, ``doc`` what it means."""

    side: str
    doc: str

    def __new__(cls, value: str, side: str = "", doc: str = ""):
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.side = side
        obj.doc = doc
        return obj

    # A member prints and formats as its kind, on every Python from 3.10 on.
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def section(self) -> str:
        return _SECTIONS[self.value]


def _rows() -> list[tuple[str, str, str, str]]:
    rows, section = [], ""
    for line in _TABLE.strip().splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            section = line.lstrip("# ").strip()
            continue
        m = re.match(r"(\w+)\s+(ncp|primary|both|shell)\s*\|\s*(.+)$", line)
        if not m:
            raise ValueError(f"events table: cannot read {line!r}")
        rows.append((m[1], m[2], m[3].strip(), section))
    # The NCP logs each one-way call of the primary under the call's own name.
    for fn in INTERFACE:
        if fn.server == NCP and fn.kind == ONEWAY:
            name = "primary_" + fn.name.removeprefix("blynk_")
            rows.append((name, "ncp", f"the primary called {fn.name}: {fn.doc} (its arguments)",
                         "The NCP: its state, the primary's calls, the cloud"))
    return rows


_ROWS = _rows()
_SECTIONS = {kind: section for kind, _, _, section in _ROWS}
# The members come from the table above, so that the table stays one readable page.
Event = _Kind("Event", [(kind.upper(), (kind, side, doc)) for kind, side, doc, _ in _ROWS])


def checked(kind: Event) -> Event:
    """``kind``, or a TypeError when it is not a member: what every emitter calls first."""
    if not isinstance(kind, Event):
        raise TypeError(f"{kind!r} is not an Event: every kind is listed in dualmcu.rpc.events")
    return kind


def oneway_event(fn_name: str) -> Event:
    """The event under which the NCP logs a one-way call of the primary."""
    return Event("primary_" + fn_name.removeprefix("blynk_"))
