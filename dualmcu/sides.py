"""Each emulated side as a program: a core, a port and the actions only a process can take."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from dualmcu.framing import get_profile
from dualmcu.ncp.core import NcpConfig, NcpDevice
from dualmcu.ncp.outcome import NO_VERDICT, WORKED, Outcome
from dualmcu.image.firmware import read_info
from dualmcu.image.inputs import MAX_IMAGE, read_input
from dualmcu.ncp.update import Catalog, Network, Store
from dualmcu.primary.boot import Bootloader, BootStore, check_factory
from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
from dualmcu.primary.flash import DEFAULT_ENDURANCE, Flash, FlashError, Geometry, Identity, PowerCut

from dualmcu.rpc.device import Exit, Halt, Reboot, SetBaud
from dualmcu.rpc.events import Event

from .exits import ExitCode, say_error, stopped_code, stopped_word
from .paths import default_store
from .target import ExecTarget, TargetError
from .ports import Port, PortError, Wire, open_port
from .output import EventPrinter, shown
from .shell import Runner, Silence, Stop, take_requests


def switch_baud(port: Port, baud: int, emit) -> None:
    """Switch once what was queued (the RESULT of the request) has left at the old rate."""
    try:
        port.set_baud(baud)
    except (ValueError, OSError) as e:
        emit(Event.BAUD_CHANGE_FAILED, baud=baud, error=str(e))


def reboot_port(port: Port, initial_baud: int, emit) -> None:
    """A rebooted side's UART comes back at its initial rate and has lost what it held."""
    if port.baudrate != initial_baud:
        switch_baud(port, initial_baud, emit)  # sends what was queued at the old rate first
        emit(Event.BAUD_RESET, baud=initial_baud)
    else:
        port.flush()
    port.discard_input()


@dataclass(kw_only=True)
class NcpOptions:
    port: str
    baud: int = 38400
    framing: str = "cobs"
    firmware: tuple[str, ...] = ()  # files or directories: one release (ncp/update.py Catalog)
    prefetch_store: str | None = None
    net_rate: float | None = None
    net_fail_at: int | None = None
    config: NcpConfig = None  # type: ignore[assignment]
    as_json: bool = False
    verbose: bool = False
    progress_interval: float = 0.0  # JSON progress at most this often (0: every chunk)
    start: float | None = None  # the monotonic time events count from (None: now)
    wire: Wire | None = None  # an end of dualmcu run's virtual UART, instead of opening port
    timeout: float | None = None  # with config.once: no verdict within this many seconds ends it (4)
    firmware_log: str | None = None  # where an exec: target's output goes (None: a new temporary file)


def ncp_exit(verdict: str) -> ExitCode:
    """The exit code of an NCP run with --once that ended on ``verdict`` (NcpDevice.verdict)."""
    if verdict in WORKED:
        return ExitCode.OK
    return ExitCode.TIMEOUT if verdict == NO_VERDICT else ExitCode.FAILED


def ncp_said(core: NcpDevice, verdict: str) -> str:
    """The one line a person reads at the end of ``ncp --once``."""
    s = core.shipment
    new = s.version if s is not None else "?"
    versions = core.primary.versions
    old = versions[0] if versions else "?"
    window = f"{core.cfg.confirm_window:g} s"
    told = core.telemetry.get("ota_reason") or core.telemetry.get("last_failure")
    why = f" ({told})" if told and told != "none" else ""
    return {
        Outcome.CONFIRMED: f"updated {old} -> {new}, confirmed by the primary",
        Outcome.REPORTED: f"updated {old} -> {new}: the new version reported in and ran {window} without "
                          "going back (the primary sends no telemetry to confirm it)",
        Outcome.UP_TO_DATE: f"the primary already runs {new}",
        Outcome.UNCONFIRMED: f"{new} reported in but the primary did not confirm it within {window} "
                             "(--confirm-window)",
        Outcome.ROLLBACK: f"rolled back to {versions[-1] if versions else '?'}{why}",
    }.get(verdict, f"update failed: {verdict}{why}")


def _with_events(side: str, o: NcpOptions | PrimaryOptions,
                 body: Callable[[Any, EventPrinter], int]) -> int:
    """Run a side with its event lines; at its end, the lines a slow reader has not taken yet
    go out, and a stream that failed is said."""
    emit = EventPrinter(side, o.as_json, o.verbose, progress_interval=o.progress_interval, start=o.start)
    take_requests()
    try:
        return body(o, emit)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM before the side's loop took it over
        return _ended(emit, Stop(stopped_code(e), stopped_word(e)))
    finally:
        emit.close()
        emit.outlet.say_broken()


def run_ncp(o: NcpOptions) -> int:
    return _with_events("ncp", o, _ncp)


def _ncp(o: NcpOptions, emit: EventPrinter) -> int:
    try:
        catalog = Catalog.from_paths(list(o.firmware)) if o.firmware else None
    except (ValueError, OSError) as e:
        say_error(shown(e))
        return ExitCode.USAGE
    store = Store(o.prefetch_store or default_store())
    try:
        store.check()
    except OSError as e:
        say_error(f"cannot use {shown(store.directory)} as the NCP's store: {shown(e.strerror or e)}")
        return ExitCode.USAGE
    net = Network(o.net_rate, o.net_fail_at)
    profile = get_profile(o.framing)

    current: list[NcpDevice] = []  # the core now running: verdict() reads its outcome

    def make(now: float) -> NcpDevice:
        current[:] = [NcpDevice(profile, o.config, now, catalog, net, store, emit=emit)]
        return current[0]

    if catalog:
        for s in catalog.shipments:
            emit(Event.SHIPMENT, file=s.filename, file_kind=s.kind, size=s.size, version=s.version,
                 fw_type=s.info.get("fw-type"), sha256=s.digests.sha256.hex(),
                 **({"base_version": s.package.base_version} if s.kind == "delta" else {}))
        if catalog.skipped:
            emit(Event.SHIPMENT_SKIPPED, files=catalog.skipped, note=f"older than {catalog.shipments[0].version}")
    else:
        emit(Event.SHIPMENT, file=None, note="no --firmware: serving the interface, no update to offer")

    if o.config.baud is None:
        o = replace(o, config=replace(o.config, baud=o.baud))  # the rate of its own port, for timeouts

    def on_action(action, port: Port) -> NcpDevice | None:
        match action:
            case SetBaud(baud):
                switch_baud(port, baud, emit)
            case Reboot():
                reboot_port(port, o.baud, emit)
                emit(Event.REBOOTED)
                return make(time.monotonic())
            case Exit(verdict):
                raise Stop(ncp_exit(verdict), verdict, ncp_said(current[0], verdict))
        return None

    def verdict() -> Stop | None:
        # With --once, a peer that closes the port after the outcome (a primary that exits once
        # confirmed) ends the run on the verdict so far, not as a port failure.
        word = current[0].verdict(final=True) if current else None
        if not o.config.once or word is None:
            return None
        return Stop(ncp_exit(word), word, ncp_said(current[0], word))

    port = open_side_port(o.port, o.baud, o.wire, o.firmware_log)
    if port is None:
        return ExitCode.IO
    return _serve(port, o.port, o.baud, o.framing, make, on_action, emit, check=out_of_time(o.timeout),
                  verdict=verdict)


def out_of_time(timeout: float | None) -> Callable[[], None] | None:
    """A check that ends a side with --once that has no verdict within ``timeout`` seconds."""
    if timeout is None:
        return None
    end = time.monotonic() + timeout

    def check() -> None:
        if time.monotonic() >= end:
            raise Stop(ExitCode.TIMEOUT, "timeout", f"no verdict within {timeout:g} s (--timeout)")

    return check


@dataclass(kw_only=True)
class PrimaryOptions:
    port: str
    flash: str
    baud: int = 38400
    framing: str = "cobs"
    geometry: Geometry | None = None
    provision: str | None = None
    config: PrimaryConfig = None  # type: ignore[assignment]
    once: bool = False
    as_json: bool = False
    verbose: bool = False
    power_cut_at: int | None = None  # cut the power at this flash operation of this process
    power_cut_seed: int | None = None  # or at one drawn from this seed (op and torn part)
    power_cut_within: int = 2000
    identity: Identity | None = None  # hardware revision and bootloader (None: the file's own)
    endurance: int = DEFAULT_ENDURANCE  # erases a page takes before it wears out
    progress_interval: float = 0.0  # JSON progress at most this often (0: every chunk)
    start: float | None = None  # the monotonic time events count from (None: now)
    wire: Wire | None = None  # an end of dualmcu run's virtual UART, instead of opening port
    timeout: float | None = None  # with once: no verdict within this many seconds ends it (4)
    firmware_log: str | None = None  # where an exec: target's output goes (None: a new temporary file)


def power_cut_hook(at: int | None, seed: int | None, within: int, base: int = 0):
    """A flash interrupt that cuts the power once, at operation ``at`` or one drawn from ``seed``.

    Operations are counted from ``base``: the first one after the device powers up is 1.

    The operation is torn: a part of it, drawn from the seed (half of it without one), is
    applied before the power fails.
    """
    import random

    if at is None and seed is None:
        return None
    rng = random.Random(seed)
    target = at if at is not None else rng.randint(1, within)
    fraction = rng.random() if seed is not None else 0.5

    def interrupt(op: int, kind: str, offset: int, length: int):
        return int(length * fraction) if op - base == target else None

    return interrupt


def read_factory_image(path: str, regular: bool = False) -> bytes:
    """The factory image, refused before the flash is touched when the device could not run it.
    ``regular``: the file is read again by another process (a pipe is refused)."""
    image = read_input(path, "factory image", MAX_IMAGE, regular=regular)
    info = read_info(image)
    if not image or not info or not info.get("mcu") or not info.get("fw-type"):
        raise ValueError(f"{path} is not a factory image the device can describe: it needs a firmware tag "
                         "with mcu and fw-type (dualmcu tag show / tag append)")
    return image


def factory_for(path: str, provision: str | None) -> bytes | None:
    """The factory image for the flash file at ``path``, checked before anything is opened."""
    image = read_factory_image(provision) if provision else None
    if image is None and not os.path.exists(path):
        # Refused before anything is made: a blank flash file would only hide the mistake.
        raise ValueError(f"no flash file at {path}: give --provision IMAGE to make one with its factory image")
    return image


def open_flash(path: str, geometry: Geometry | None, provision: str | None, emit, trust=None,
               identity: Identity | None = None, endurance: int = DEFAULT_ENDURANCE,
               image: bytes | None = None, provide: bool = True) -> Flash:
    """Open (or make) the flash file; give a blank one its factory image (``image``, when
    :func:`factory_for` has read it already). With ``provide`` false the file is only opened
    and checked (a blank one needs an image): :func:`provide_firmware` writes it later."""
    if image is None:
        image = factory_for(path, provision)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = folder
        while not os.path.exists(blocking):  # the part of the path that is there, and no folder
            blocking = os.path.dirname(blocking)
        raise FlashError(f"cannot make the flash file {path}: {blocking} is not a directory") from None
    flash = Flash.open(path, geometry, identity=identity, endurance=endurance)
    try:
        if BootStore(flash).load() is None and image is None:
            raise ValueError(f"{path} holds no firmware: give --provision IMAGE for its factory image")
        if provide:
            provide_firmware(flash, path, image, provision, emit, trust)
    except BaseException:
        flash.close()
        raise
    return flash


def provide_firmware(flash: Flash, path: str, image: bytes | None, provision: str | None, emit,
                     trust=None) -> None:
    """Write the factory image to a blank flash; say so when the flash holds firmware already."""
    if BootStore(flash).load() is None:
        assert image is not None, "open_flash refuses a blank flash without an image"
        Bootloader(flash, trust=trust).provision(image)
        emit(Event.PROVISIONED, image=provision, size=len(image))
    elif provision:
        emit(Event.PROVISION_IGNORED, image=provision,
             note=f"{path} already holds firmware; to provision again, delete it or give another --flash")


def run_primary(o: PrimaryOptions) -> int:
    return _with_events("primary", o, _primary)


def _primary(o: PrimaryOptions, emit: EventPrinter) -> int:
    try:
        image = factory_for(o.flash, o.provision)
    except (ValueError, OSError) as e:
        say_error(shown(e))
        return ExitCode.USAGE

    def opened(provide: bool) -> Flash | None:
        try:
            return open_flash(o.flash, o.geometry, o.provision, emit, o.config.trust, o.identity,
                              o.endurance, image=image, provide=provide)
        except (ValueError, OSError, FlashError) as e:
            say_error(shown(e))
            return None

    # An existing flash file is opened and checked first: one in use by another primary, or
    # not a flash file at all, is the first thing to say. Nothing is written to the flash until
    # the port is open, so a wrong port leaves no file behind, nor a blank one provisioned with
    # the failed try's image.
    existing = os.path.exists(o.flash)
    flash = opened(provide=False) if existing else None
    if existing and flash is None:
        return ExitCode.USAGE
    if image is not None and (flash is None or BootStore(flash).load() is None):
        # The image is checked against the device it will go on before the port opens: a
        # factory image too big for a slot, or one the trusted keys refuse, writes nothing.
        try:
            check_factory(image, flash.geometry if flash else o.geometry or Geometry(), o.config.trust,
                          flash.identity if flash else o.identity or Identity())
        except ValueError as e:
            say_error(shown(e))
            if flash is not None:
                flash.close()
            return ExitCode.USAGE
    port = open_side_port(o.port, o.baud, o.wire, o.firmware_log)
    if port is None:
        if flash is not None:
            flash.close()
        return ExitCode.IO
    if flash is None and (flash := opened(provide=True)) is None:
        port.close()
        return ExitCode.USAGE
    if existing:
        try:
            provide_firmware(flash, o.flash, image, o.provision, emit, o.config.trust)
        except (ValueError, OSError, FlashError) as e:
            say_error(shown(e))
            flash.close()
            port.close()
            return ExitCode.USAGE
    base = flash.ops
    flash.interrupt = power_cut_hook(o.power_cut_at, o.power_cut_seed, o.power_cut_within, base)
    profile = get_profile(o.framing)
    outcome: dict[str, Any] = {}

    def watch(kind: Event, f: dict) -> None:
        # With --once the update's end ends the program: a confirmed new image, a rollback,
        # a refused offer or a cancelled transfer.
        if kind is Event.BOOTED and "from" not in outcome:
            outcome["from"] = f.get("version")
        elif kind is Event.OTA_INSTALLED:
            outcome["installed"] = f.get("version")
        elif kind is Event.CONFIRMED and outcome.get("installed") == f.get("version"):
            outcome["end"] = Stop(ExitCode.OK, Outcome.CONFIRMED,
                                  f"updated {outcome.get('from')} -> {f.get('version')}, confirmed")
        elif kind is Event.ROLLBACK:
            outcome["end"] = Stop(ExitCode.FAILED, Outcome.ROLLBACK,
                                  f"rolled back to slot {f.get('to_slot')}"
                                  f" ({f.get('reason')})")
        elif kind is Event.OTA_CANCELLED and f.get("reason") != "replaced_by_new_offer":
            outcome["end"] = Stop(ExitCode.FAILED, f"cancelled:{f.get('reason')}",
                                  f"update cancelled ({f.get('reason')})")
        elif kind is Event.OTA_REFUSED and f.get("call") == "available":
            outcome["end"] = Stop(ExitCode.FAILED, f"refused:{f.get('reason')}",
                                  f"offer of {f.get('version') or 'an update'} refused ({f.get('reason')})")

    emit.watchers.append(watch)

    def make(now: float) -> PrimaryDevice:
        return PrimaryDevice(flash, profile, o.config, now, emit=emit)

    def on_action(action, port: Port) -> PrimaryDevice | None:
        match action:
            case SetBaud(baud):
                switch_baud(port, baud, emit)
            case Reboot():
                reboot_port(port, o.baud, emit)
                return make(time.monotonic())
            case Halt(reason):
                raise Stop(ExitCode.FAILED, reason, f"no bootable image ({reason})")
        return None

    timed_out = out_of_time(o.timeout)

    def check_once() -> None:
        if o.once and "end" in outcome:
            raise outcome["end"]
        if timed_out is not None:
            timed_out()

    try:
        return _serve(port, o.port, o.baud, o.framing, make, on_action, emit, check_once)
    except PowerCut as cut:
        emit(Event.POWER_CUT, op=cut.op - base, operation=cut.kind, applied=cut.applied)
        return ExitCode.POWER_CUT
    finally:
        flash.close()


def _ended(emit: EventPrinter, stop: Stop, **note: str) -> int:
    """A side's end: its exit event, and for a person the one verdict line on stdout (an
    interruption is no verdict: the command says it on stderr)."""
    emit(Event.EXIT, code=int(stop.code), reason=stop.reason, **note)
    if stop.text and not emit.as_json:
        emit.close()  # the event lines before the verdict
        print(("OK: " if stop.code == ExitCode.OK else "FAILED: ") + stop.text, flush=True)
    elif stop.code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED) and not emit.as_json:
        emit.close()
        print(stop.reason, file=sys.stderr, flush=True)
    return stop.code


def open_side_port(url: str, baud: int, wire: Wire | None, log: str | None = None) -> Port | None:
    """The side's port, or None once the reason it cannot be opened has been said.  An
    ``exec:`` URL starts the firmware under test on a fresh pty (dualmcu.target)."""
    try:
        if wire is not None:
            return Port.of(wire)
        if url.startswith("exec:"):
            return exec_port(url, baud, log)
        return Port(open_port(url, baud))
    except (PortError, OSError, TargetError) as e:
        say_error(shown(e))
        return None


def exec_port(url: str, baud: int, log: str | None = None) -> Port:
    """This side's end of a pty whose far end runs the firmware of ``exec:COMMAND``."""
    target = ExecTarget(url, log).start()
    try:
        port = Port(None, fd=os.dup(target.master), baud=baud)
    except BaseException:
        target.close()
        raise
    port.owner = target
    return port


def _serve(port: Port, url: str, baud: int, framing: str, make, on_action, emit, check=None,
           verdict=None) -> int:
    log = {"firmware_log": port.owner.log_path} if getattr(port, "owner", None) is not None else {}
    emit(Event.PORT_OPEN, t=time.monotonic(), port=url, baud=baud, clock_origin=emit.origin_utc(), **log)
    try:
        runner = Runner(port, make(time.monotonic()), on_action, check, Silence(emit, framing, baud), emit)
        runner.start()
        runner.run()
        # The loop ends only when SIGTERM stops it: an interruption, never a verdict.
        return _ended(emit, Stop(ExitCode.TERMINATED, "terminated"))
    except Stop as s:
        return _ended(emit, s)
    except PortError as e:
        known = verdict() if verdict is not None else None
        if known is not None:
            return _ended(emit, known, note=str(e))
        emit.close()  # the lines a slow reader has not taken come before the error
        say_error(shown(e))
        return ExitCode.IO
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM before the loop took it over
        return _ended(emit, Stop(stopped_code(e), stopped_word(e)))
    finally:
        if port.dropped:
            emit(Event.TX_DROPPED, bytes=port.dropped, note="the peer did not read: the oldest queued bytes were dropped")
        port.close()
