"""Each emulated side as a program: a core, a port and the actions only a process can take."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from dualmcu.framing import get_profile
from dualmcu.ncp.core import NcpConfig, NcpDevice
from dualmcu.ncp.update import Network, Shipment, Store
from dualmcu.primary.boot import Bootloader, BootStore
from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
from dualmcu.primary.flash import Flash, Geometry, PowerCut

from .shell import EventPrinter, PortError, Runner, Stop, open_port

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PORT = 0, 1, 2, 3
EXIT_POWER_CUT = 75  # the emulated power failed: whoever runs the process starts it again


def switch_baud(port, baud: int, emit) -> None:
    """Switch once what was queued (the RESULT of the request) has left at the old rate."""
    port.flush()
    try:
        port.baudrate = baud
    except (ValueError, OSError) as e:
        emit("baud_change_failed", baud=baud, error=str(e))


@dataclass
class NcpOptions:
    port: str
    baud: int = 38400
    framing: str = "cobs"
    firmware: str | None = None
    prefetch_store: str | None = None
    net_rate: float | None = None
    net_fail_at: int | None = None
    config: NcpConfig = None  # type: ignore[assignment]
    as_json: bool = False
    verbose: bool = False


def run_ncp(o: NcpOptions) -> int:
    emit = EventPrinter("ncp", o.as_json, o.verbose)
    try:
        shipment = Shipment.from_file(o.firmware) if o.firmware else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    store = Store(o.prefetch_store or os.path.join(os.path.expanduser("~"), ".cache", "dualmcu", "ncp-store"))
    net = Network(o.net_rate, o.net_fail_at)
    profile = get_profile(o.framing)

    def make(now: float) -> NcpDevice:
        return NcpDevice(profile, o.config, now, shipment, net, store, emit=emit)

    if shipment:
        emit("shipment", file=o.firmware, size=shipment.size, version=shipment.version,
             fw_type=shipment.info.get("fw-type"), sha256=shipment.digests.sha256.hex())
    else:
        emit("shipment", file=None, note="no --firmware: serving the interface, no update to offer")

    if o.config.baud is None:
        o.config.baud = o.baud

    def on_action(kind: str, arg: Any, port) -> NcpDevice | None:
        if kind == "baud":
            o.config.baud = arg  # timeouts are derived from it
            return switch_baud(port, arg, emit)
        if kind == "reboot":
            emit("rebooted")
            return make(time.monotonic())
        if kind == "exit":
            raise Stop(EXIT_OK if arg in ("success", "up_to_date") else EXIT_FAILED, arg)
        return None

    return _serve(o.port, o.baud, make, on_action, emit)


@dataclass
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


def open_flash(path: str, geometry: Geometry | None, provision: str | None, emit) -> Flash:
    """Open (or make) the flash file; give a blank one its factory image."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    flash = Flash.open(path, geometry)
    if BootStore(flash).load() is None:
        if provision is None:
            flash.close()
            raise ValueError(f"{path} holds no firmware: give --provision IMAGE for its factory image")
        with open(provision, "rb") as f:
            image = f.read()
        Bootloader(flash).provision(image)
        emit("provisioned", image=provision, size=len(image))
    return flash


def run_primary(o: PrimaryOptions) -> int:
    emit = EventPrinter("primary", o.as_json, o.verbose)
    try:
        flash = open_flash(o.flash, o.geometry, o.provision, emit)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    base = flash.ops
    flash.interrupt = power_cut_hook(o.power_cut_at, o.power_cut_seed, o.power_cut_within, base)
    profile = get_profile(o.framing)
    outcome: dict[str, Any] = {}

    def watch(kind: str, f: dict) -> None:
        # With --once the update's end ends the program: a confirmed new image, a rollback,
        # a refused offer or a cancelled transfer.
        if kind == "ota_installed":
            outcome["installed"] = f.get("version")
        elif kind == "confirmed" and outcome.get("installed") == f.get("version"):
            outcome["end"] = (EXIT_OK, "confirmed")
        elif kind == "rollback":
            outcome["end"] = (EXIT_FAILED, "rollback")
        elif kind == "ota_cancelled" and f.get("reason") != "replaced_by_new_offer":
            outcome["end"] = (EXIT_FAILED, f"cancelled:{f.get('reason')}")
        elif kind == "ota_refused" and f.get("call") == "available":
            outcome["end"] = (EXIT_FAILED, f"refused:{f.get('reason')}")

    emit.watchers.append(watch)

    def make(now: float) -> PrimaryDevice:
        return PrimaryDevice(flash, profile, o.config, now, emit=emit)

    def on_action(kind: str, arg: Any, port) -> PrimaryDevice | None:
        if kind == "baud":
            return switch_baud(port, arg, emit)
        if kind == "reboot":
            port.flush()
            port.reset_input_buffer()  # a rebooting MCU loses what sat in its UART
            return make(time.monotonic())
        if kind == "halt":
            raise Stop(EXIT_FAILED, arg)
        return None

    def check_once() -> None:
        if o.once and "end" in outcome:
            raise Stop(*outcome["end"])

    try:
        return _serve(o.port, o.baud, make, on_action, emit, check_once)
    except PowerCut as cut:
        emit("power_cut", op=cut.op - base, operation=cut.kind, applied=cut.applied)
        return EXIT_POWER_CUT
    finally:
        flash.close()


def _serve(url: str, baud: int, make, on_action, emit, check=None) -> int:
    try:
        port = open_port(url, baud)
    except PortError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PORT
    emit("port_open", port=url, baud=baud)
    try:
        core = make(time.monotonic())
        runner = Runner(port, core, on_action, check)
        while core.actions:  # e.g. a device that halts or crashes right at boot
            kind, arg = core.actions.pop(0)
            replaced = on_action(kind, arg, port)
            if replaced is not None:
                runner.core = core = replaced
        if check is not None:
            check()
        runner.run()
        return EXIT_OK
    except Stop as s:
        emit("exit", code=s.code, reason=s.reason)
        return s.code
    except PortError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PORT
    except KeyboardInterrupt:
        return 130
    finally:
        port.close()
