"""The ``dualmcu`` command line: a thin layer over the cores and shells."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from dualmcu import __version__
from dualmcu.image.firmware import TEST_BEHAVIOURS
from dualmcu.framing import PROFILE_NAMES, FramingError, get_profile
from dualmcu.rpc.interface import INTERFACE, INVOKE
from dualmcu.rpc.message import Invoke, Oneway
from dualmcu.rpc.types import ArgsError

FRAMING = click.option(
    "--framing",
    type=click.Choice(PROFILE_NAMES),
    default="cobs",
    show_default=True,
    help="cobs: the native COBS+CRC-32 framing; blynk: the real Blynk.NCP UART framing.",
)
JSON = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")


def emit_json(obj: dict) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dualmcu")
def main() -> None:
    """Emulate a dual-MCU device: a Blynk.NCP network co-processor and the primary MCU it
    updates, talking RPC over a UART.

    Run `dualmcu run` for a complete firmware update between two emulated processes.
    """


@main.command()
@JSON
def ports(as_json: bool) -> None:
    """List the serial ports on this machine, with USB VID:PID and description."""
    from serial.tools import list_ports

    found = sorted(list_ports.comports(), key=lambda p: p.device)
    for p in found:
        vidpid = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None else None
        if as_json:
            emit_json(
                {
                    "device": p.device,
                    "vid_pid": vidpid,
                    "description": p.description,
                    "manufacturer": p.manufacturer,
                    "serial_number": p.serial_number,
                    "hwid": p.hwid,
                }
            )
        else:
            click.echo(f"{p.device:<20} {vidpid or '-':<10} {p.description}")
    if not found and not as_json:
        click.echo("no serial ports found", err=True)


@main.command()
@FRAMING
@JSON
@click.option("-f", "--file", "path", type=click.File("rb"), help="Read a raw binary capture from FILE.")
@click.argument("hexdata", required=False)
def decode(framing: str, as_json: bool, path, hexdata: str | None) -> None:
    """Decode captured UART bytes into RPC messages, one per line.

    Give the bytes as a HEX string (spaces allowed), with -f FILE (raw binary), or as '-' to read
    stdin (hex text if it is only hex digits and spaces, raw bytes otherwise). RESULTs are typed
    by the INVOKE with the same msg_id seen earlier in the capture; dropped frames are shown
    with the reason.
    """
    from dualmcu.capture import (
        decode_capture,
        format_record,
        jsonable,
        looks_like_hex,
        parse_hex,
    )

    if path is not None and hexdata is not None:
        raise click.UsageError("give either HEXDATA or --file, not both")
    try:
        if path is not None:
            data = path.read()
        elif hexdata in (None, "-"):
            if hexdata is None and sys.stdin.isatty():
                raise click.UsageError("give HEXDATA, --file FILE or '-' for stdin")
            raw = sys.stdin.buffer.read()
            data = parse_hex(raw.decode("ascii")) if looks_like_hex(raw) else raw
        else:
            data = parse_hex(hexdata)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="HEXDATA") from None
    for rec in decode_capture(data, framing):
        if as_json:
            emit_json(jsonable(rec))
        else:
            click.echo(format_record(rec))


@main.command()
@FRAMING
@click.option("--msg-id", type=click.IntRange(0, 0xFFFF), default=1, show_default=True)
@click.argument("name")
@click.argument("args", nargs=-1, metavar="[ARG=VALUE]...")
def encode(framing: str, msg_id: int, name: str, args: tuple[str, ...]) -> None:
    """Print the frame of one call as hex, e.g. for a hand test against hardware.

    NAME is a function of the interface (see docs/interface.md); arguments are given as
    ARG=VALUE. Integers take 0x prefixes; Bool takes true/false; Binary takes 0xHEX or text.

    \b
      dualmcu encode --framing blynk blynk_otaUpdateStart chunk_size=1024 --msg-id 2
    """
    fn = INTERFACE.get(name)
    if fn is None:
        close = [f.name for f in INTERFACE if name.lower() in f.name.lower()]
        hint = f" (did you mean {', '.join(close[:5])}?)" if close else ""
        raise click.BadParameter(f"no function {name!r}{hint}", param_hint="NAME")
    values = {}
    types = {p.name: p.type for p in fn.args}
    for item in args:
        key, sep, text = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not ARG=VALUE", param_hint="ARGS")
        if key not in types:
            raise click.BadParameter(
                f"{fn.name} has no argument {key!r}; it takes: {fn.signature()}", param_hint="ARGS"
            )
        try:
            values[key] = types[key].parse(text)
        except (ValueError, ArgsError) as e:
            raise click.BadParameter(f"{key}: {e}", param_hint="ARGS") from None
    try:
        body = fn.encode_args(values)
        msg = Invoke(fn.uid, msg_id, body) if fn.kind == INVOKE else Oneway(fn.uid, body)
        frame = get_profile(framing).encode(msg.encode())
    except (ArgsError, FramingError) as e:
        raise click.UsageError(f"{e}; {fn.signature()}") from None
    click.echo(frame.hex(" "))


# -- the emulators -------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1024, "M": 1 << 20}.get(t[-1:], 1)
    try:
        return int(t[:-1] if mult > 1 else t, 0) * mult
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 4096, 512K, 1M)") from None


class Size(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        return value if isinstance(value, int) else parse_size(value)


PORT = click.option("--port", required=True, help="Port path or pyserial URL (/dev/ttyUSB0, socket://HOST:PORT, rfc2217://...).")
BAUD = click.option("--baud", type=click.IntRange(300, 10_000_000), default=38400, show_default=True,
                    help="Initial baud rate (the real NCP starts at 38400).")
VERBOSE = click.option("-v", "--verbose", is_flag=True, help="Also show per-chunk progress and link-level events.")
DEFAULT_FLASH = os.path.join(os.path.expanduser("~"), ".cache", "dualmcu", "primary.flash")


@main.command()
@PORT
@BAUD
@FRAMING
@click.option("--firmware", type=click.Path(dir_okay=False), help="The shipment to offer (a tagged firmware file).")
@click.option("--store", type=click.Path(file_okay=False), help="The NCP's own store for prefetched images.")
@click.option("--retries", type=click.IntRange(0, 1000), default=5, show_default=True, help="Resends of a failed or timed-out write before cancelling.")
@click.option("--max-chunk", type=click.IntRange(1, 0xFFFF), help="Largest chunk the NCP serves (default: what one frame carries).")
@click.option("--write-timeout", type=click.FloatRange(0.001), help="Fixed seconds to wait for a write's answer (default: derived from the baud rate and the primary's flash timing).")
@click.option("--pipeline/--no-pipeline", default=True, show_default=True, help="Keep several writes in flight when the primary offers the extension.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Go on from where an interrupted transfer of the same file stopped, when the primary offers it.")
@click.option("--offers", type=click.IntRange(1, 100), default=3, show_default=True, help="How often one shipment is offered (an interrupted transfer is offered again).")
@click.option("--net-rate", type=float, help="Simulated download rate from the cloud, bytes/s (default: instant).")
@click.option("--net-fail-at", type=click.IntRange(0), help="The simulated download fails at this byte offset.")
@click.option("--answer-unknown", is_flag=True, help="Answer unknown uids with status 0x13 (the real NCP stays silent).")
@click.option("--once", is_flag=True, help="Exit when the update has an outcome (0 on success).")
@JSON
@VERBOSE
def ncp(port, baud, framing, firmware, store, retries, max_chunk, write_timeout, pipeline, resume, offers, net_rate, net_fail_at,
        answer_unknown, once, as_json, verbose) -> None:
    """Run the emulated NCP on a port: it serves the NCP interface and offers --firmware.

    Prefetch is served whenever the primary asks for it: the image is "downloaded" at
    --net-rate into --store before the first write.

    It stands in for the cloud too: the update is offered once the primary has reported its
    firmware and its version differs, and the outcome is judged as the cloud would (success,
    rollback, refused, download_limit, download_failed, prefetch_failed, finish_failed).
    """
    from dualmcu.sides import NcpOptions, run_ncp
    from dualmcu.ncp.core import NcpConfig

    cfg = NcpConfig(retries=retries, max_chunk=max_chunk, write_timeout=write_timeout, pipeline=pipeline, resume=resume, offers=offers, once=once, answer_unknown=answer_unknown,
                    wall_clock_ms=int(time.time() * 1000))
    sys.exit(run_ncp(NcpOptions(port, baud, framing, firmware, store, net_rate, net_fail_at, cfg, as_json, verbose)))


@main.command()
@PORT
@BAUD
@FRAMING
@click.option("--flash", type=click.Path(dir_okay=False), default=DEFAULT_FLASH, show_default=True, help="The emulated flash file (made when missing).")
@click.option("--provision", type=click.Path(exists=True, dir_okay=False), help="Factory image written to slot A of a blank flash.")
@click.option("--slot-size", type=Size(), default="1M", show_default=True, help="Slot size when the flash file is made.")
@click.option("--page-size", type=Size(), default="4K", show_default=True, help="Flash page size when the flash file is made.")
@click.option("--chunk-size", type=click.IntRange(1, 0xFFFF), default=1024, show_default=True, help="Chunk size asked for in otaUpdateStart.")
@click.option("--ota-timeout", type=float, default=60.0, show_default=True, help="Seconds without a chunk before the primary cancels.")
@click.option("--version-policy", type=click.Choice(["newer", "any"]), default="newer", show_default=True, help="Accept only newer versions, or any.")
@click.option("--battery", type=click.IntRange(0, 100), default=100, show_default=True, help="Battery level, percent.")
@click.option("--min-battery", type=click.IntRange(0, 100), default=20, show_default=True, help="Offers are refused below this battery level.")
@click.option("--prefetch", is_flag=True, help="Ask the NCP to download the whole image before the transfer.")
@click.option("--attempts", type=click.IntRange(1, 255), default=3, show_default=True, help="Boot attempts of a trial image before rollback.")
@click.option("--heartbeat", type=float, default=10.0, show_default=True, help="Seconds between pings of the NCP.")
@click.option("--answer-unknown", is_flag=True, help="Answer unknown uids with status 0x13 (the real driver stays silent).")
@click.option("--switch-baud", type=click.IntRange(300, 10_000_000), help="After initialising, ask the NCP to switch to this baud rate.")
@click.option("--window", type=click.IntRange(1, 255), default=8, show_default=True, help="Writes taken in flight (offered through an extension uid); 1 turns the extension off.")
@click.option("--buffer", "rx_hold", type=Size(), default="32K", show_default=True, help="Bytes of chunks held while an earlier one is missing.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Keep transfer progress in the boot state and offer resume (an extension uid).")
@click.option("--flash-timing", type=str, default="0.4,45,150", show_default=True, metavar="PROG,SECTOR,BLOCK",
              help="Milliseconds per 256-byte program, 4 KiB sector erase and 64 KiB block erase (W25Q128JV typical); 0,0,0 for an instant flash.")
@click.option("--power-cut-at", type=click.IntRange(1), help="Cut the power at this flash operation of the process (exit code 75).")
@click.option("--power-cut-seed", type=int, help="Cut the power at an operation and torn part drawn from this seed.")
@click.option("--power-cut-within", type=click.IntRange(1), default=2000, show_default=True, help="With --power-cut-seed: draw the operation from 1..N.")
@click.option("--trust", "trust_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A public key (PEM) whose signed images this device installs; repeat for rotation. Unsigned images are then refused.")
@click.option("--target", "device_target", default="dualmcu/1", show_default=True, help="This device's identity (product/hardware revision) for signed images.")
@click.option("--defect", "defects", multiple=True, type=click.Choice(["duplicate-chunk-hazard", "hang-on-empty-binary"]),
              hidden=True, help="Plant a known bug, to show that `dualmcu fuzz` finds it.")
@click.option("--once", is_flag=True, help="Exit when an update ends (0 once a new image is confirmed).")
@JSON
@VERBOSE
def primary(port, baud, framing, flash, provision, slot_size, page_size, chunk_size, ota_timeout, version_policy,
            battery, min_battery, prefetch, attempts, heartbeat, answer_unknown, switch_baud, window, rx_hold, resume, flash_timing,
            power_cut_at,
            power_cut_seed, power_cut_within, trust_keys, device_target, defects, once, as_json, verbose) -> None:
    """Run the emulated primary MCU on a port, booting from its flash file.

    A blank flash needs --provision IMAGE (its factory firmware). The process reboots into
    its bootloader whenever the device reboots; a killed process boots from the same file.
    A power cut (--power-cut-at, --power-cut-seed) ends the process with exit code 75 in the
    middle of a flash operation; start it again to see the device come back.
    """
    from dualmcu.sides import PrimaryOptions, run_primary
    from dualmcu.primary.device import PrimaryConfig
    from dualmcu.primary.flash import FlashError, Geometry
    from dualmcu.primary.ota import OtaConfig

    try:
        geometry = Geometry(page_size, slot_size)
    except FlashError as e:
        raise click.BadParameter(str(e)) from None
    if os.path.exists(flash):
        geometry = None  # an existing file keeps its own geometry
    from dualmcu.primary.timing import FlashTiming

    try:
        prog, sector, block = (float(x) / 1000 for x in flash_timing.split(","))
    except ValueError:
        raise click.BadParameter("give three numbers, e.g. 0.4,45,150", param_hint="--flash-timing") from None
    ota = OtaConfig(chunk_size=chunk_size, ota_timeout=ota_timeout, version_policy=version_policy,
                    battery=battery, min_battery=min_battery, prefetch=prefetch, defects=frozenset(defects),
                    timing=FlashTiming(prog, sector, block), window=window, buffer=rx_hold, resume=resume)
    from dualmcu.image.signing import SignError, load_keys
    from dualmcu.primary.boot import Trust

    try:
        trust = Trust(load_keys(list(trust_keys)), device_target) if trust_keys else None
    except SignError as e:
        raise click.BadParameter(str(e), param_hint="--trust") from None
    cfg = PrimaryConfig(ota=ota, attempts=attempts, heartbeat=heartbeat, answer_unknown=answer_unknown, baud=switch_baud,
                        trust=trust)
    sys.exit(run_primary(PrimaryOptions(port, flash, baud, framing, geometry, provision, cfg, once, as_json, verbose,
                                        power_cut_at, power_cut_seed, power_cut_within)))


def parse_disconnect(text: str) -> tuple[str, float, float]:
    """SIDE@AT:SECONDS, e.g. b@2.5:1 cuts the primary's end off 2.5 s in, for 1 s."""
    try:
        side, rest = text.split("@")
        at, seconds = rest.split(":")
        if side not in ("a", "b", "ncp", "primary"):
            raise ValueError
        return ({"ncp": "a", "primary": "b"}.get(side, side), float(at), float(seconds))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not SIDE@AT:SECONDS (e.g. b@2.5:1)", param_hint="--disconnect") from None


LINK_OPTIONS = [
    click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds added to every byte (a USB bridge adds ~1 ms)."),
    click.option("--ber", type=click.FloatRange(0, 1), default=0.0, help="Bit error rate."),
    click.option("--drop", type=click.FloatRange(0, 1), default=0.0, help="Probability that a byte is lost."),
    click.option("--dup", type=click.FloatRange(0, 1), default=0.0, help="Probability that a byte arrives twice."),
    click.option("--garbage", type=click.FloatRange(0, 1), default=0.0, help="Probability, per byte, of a burst of noise after it."),
    click.option("--stall", type=click.FloatRange(0, 1), default=0.0, help="Probability, per byte, that the line stalls."),
    click.option("--stall-time", type=float, default=0.05, show_default=True, help="Seconds of a stall."),
    click.option("--rx-buffer", type=click.IntRange(1), help="Receive buffer size in bytes; with --rx-poll, what overflows it is lost."),
    click.option("--rx-poll", type=float, default=0.0, help="How often a receiver reads its buffer, seconds (0: at once)."),
    click.option("--disconnect", "disconnects", multiple=True, metavar="SIDE@AT:SECONDS",
                 help="Cut side a (ncp) or b (primary) off AT seconds in, for SECONDS. Repeatable."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random fault: the same seed, the same faults."),
]


def link_options(f):
    for opt in reversed(LINK_OPTIONS):
        f = opt(f)
    return f


def make_link(baud, pace, latency, ber, drop, dup, garbage, stall, stall_time, rx_buffer, rx_poll, seed):
    from dualmcu.link import Faults, LinkConfig

    faults = Faults(ber=ber, drop=drop, dup=dup, garbage=garbage, stall=stall, stall_time=stall_time)
    return LinkConfig(baud=baud if pace else None, latency=latency, rx_buffer=rx_buffer, rx_poll=rx_poll,
                      faults=faults, seed=seed)


@main.command()
@click.option("--a", "port_a", help="Port of side a (pyserial path or URL); a new pty when omitted.")
@click.option("--b", "port_b", help="Port of side b; a new pty when omitted.")
@click.option("--baud", type=click.IntRange(300, 10_000_000), default=115200, show_default=True, help="Baud rate of real ports, and of the pacing.")
@click.option("--pace/--no-pace", default=True, show_default=True, help="Pace bytes at the baud rate (10 bit times each).")
@link_options
@click.option("--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
@JSON
def link(port_a, port_b, baud, pace, latency, ber, drop, dup, garbage, stall, stall_time, rx_buffer, rx_poll,
         disconnects, seed, duration, as_json) -> None:
    """Relay between two ports through the simulated UART: pacing, latency, buffer, faults.

    Put it between a real device and an emulator, or between two emulators: with no --a or
    --b it makes ptys and prints their paths. What it injected is counted and printed when it
    stops (every second too, with --json).
    """
    from dualmcu.relay import Relay
    from dualmcu.shell import PortError, open_port

    cfg = make_link(baud, pace, latency, ber, drop, dup, garbage, stall, stall_time, rx_buffer, rx_poll, seed)
    plan = [parse_disconnect(d) for d in disconnects]
    ports = []
    try:
        for url in (port_a, port_b):
            ports.append(open_port(url, baud) if url else None)
        relay = Relay.between(*ports, link=cfg, disconnects=plan)
    except (PortError, ValueError) as e:
        for p in ports:
            if p is not None:
                p.close()
        raise click.ClickException(str(e)) from None
    out = (lambda obj: emit_json(obj)) if as_json else (lambda obj: click.echo(
        " ".join(f"{k}={v}" for k, v in obj.items()), err=True))
    out({"event": "link", "a": relay.paths["a"], "b": relay.paths["b"], "baud": baud if pace else None, "seed": seed})
    t0 = time.monotonic()
    try:
        with relay:
            while duration is None or time.monotonic() - t0 < duration:
                time.sleep(1.0 if duration is None else min(1.0, max(0.0, duration - (time.monotonic() - t0))))
                if as_json:
                    out({"event": "stats", **relay.stats})
    except KeyboardInterrupt:
        pass
    finally:
        for p in ports:
            if p is not None:
                p.close()
    out({"event": "summary", "seconds": round(time.monotonic() - t0, 3), **relay.stats})


@main.command()
@click.option("--firmware", type=click.Path(dir_okay=False), help="Shipment to deliver (default: a demo image built on the spot).")
@FRAMING
@click.option("--flash", type=click.Path(dir_okay=False), help="The primary's flash file (default: a fresh one in the work directory).")
@click.option("--link", type=click.Choice(["pty", "socket"]), default="pty", show_default=True, help="Virtual UART: two ptys or two loopback sockets, with a relay between.")
@click.option("--baud", type=click.IntRange(300, 10_000_000), default=115200, show_default=True)
@click.option("--chunk-size", type=click.IntRange(1, 0xFFFF), default=1024, show_default=True)
@click.option("--prefetch", is_flag=True, help="Download the whole image into the NCP before the transfer.")
@click.option("--retries", type=click.IntRange(0, 1000), default=5, show_default=True)
@click.option("--net-rate", type=float, help="Simulated download rate, bytes/s.")
@click.option("--net-fail-at", type=click.IntRange(0), help="The simulated download fails at this offset.")
@click.option("--battery", type=click.IntRange(0, 100), default=100, show_default=True)
@click.option("--ota-timeout", type=float, default=60.0, show_default=True)
@click.option("--slot-size", type=Size(), default="1M", show_default=True)
@click.option("--kill-primary-at", type=click.IntRange(0), help="Kill the primary process once this many bytes are written, and start it again.")
@click.option("--kill-ncp-at", type=click.IntRange(0), help="Kill the NCP process once this many bytes are written, and start it again.")
@click.option("--power-cut-at", type=click.IntRange(1), help="Cut the primary's power at this flash operation (torn: half of it applied); it is restarted.")
@click.option("--power-cut-random", is_flag=True, help="Cut the power once, at an operation and a torn part drawn from --seed.")
@click.option("--pace/--no-pace", default=False, show_default=True, help="Pace the link at --baud, as a real wire.")
@click.option("--heartbeat", type=float, default=10.0, show_default=True, help="Seconds between the primary's checks of the NCP (a restarted NCP is noticed at the next one).")
@click.option("--write-timeout", type=click.FloatRange(0.001), help="Fixed seconds the NCP waits for a write's answer (default: derived).")
@click.option("--pipeline/--no-pipeline", default=True, show_default=True, help="Writes in flight through the extension (off: one at a time, as the real protocol).")
@click.option("--flash-timing", default="0.4,45,150", show_default=True, metavar="PROG,SECTOR,BLOCK", help="The primary's flash timing in ms (see `dualmcu primary --help`).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Resume an interrupted transfer of the same file (extension).")
@click.option("--trust", "trust_keys", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Public key the primary trusts (repeatable); signed images only.")
@click.option("--target", "device_target", default="dualmcu/1", show_default=True, help="The primary's target identity for signed images.")
@click.option("--key", "sign_key", type=click.Path(exists=True, dir_okay=False), help="Private key that signs the factory image (and the demo shipment) when --trust is given.")
@link_options
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Give up after this many seconds.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where the demo image, flash and logs go (default: a new temporary directory).")
@JSON
def run(firmware, framing, flash, link, baud, chunk_size, prefetch, retries, net_rate, net_fail_at, battery,
        ota_timeout, slot_size, kill_primary_at, kill_ncp_at, power_cut_at, power_cut_random, pace, heartbeat, write_timeout, pipeline, flash_timing, resume, trust_keys,
        device_target, sign_key, latency, ber, drop,
        dup, garbage, stall, stall_time, rx_buffer, rx_poll, disconnects, seed, timeout, workdir, as_json) -> None:
    """Run a complete update between an NCP process and a primary process.

    Exits 0 only when the primary has booted and confirmed the new version; otherwise 1 (the
    update failed: the reason is printed), 3 (a process or port failed) or 4 (timeout).
    """
    from dualmcu.runner import Run, RunOptions

    if trust_keys and not sign_key:
        raise click.UsageError("with --trust the primary boots signed images only: give --key to sign its factory image")

    o = RunOptions(firmware=firmware, framing=framing, flash=flash, link=link, baud=baud, chunk_size=chunk_size,
                   prefetch=prefetch, retries=retries, net_rate=net_rate, net_fail_at=net_fail_at, battery=battery,
                   ota_timeout=ota_timeout, slot_size=slot_size, timeout=timeout, kill_primary_at=kill_primary_at,
                   kill_ncp_at=kill_ncp_at, power_cut_at=power_cut_at, extra_primary=["--heartbeat", str(heartbeat), "--flash-timing", flash_timing, "--target", device_target]
                   + [x for k in trust_keys for x in ("--trust", os.path.abspath(k))],
                   extra_ncp=(["--write-timeout", str(write_timeout)] if write_timeout else [])
                   + ([] if pipeline else ["--no-pipeline"]) + ([] if resume else ["--no-resume"]),
                   power_cut_seed=seed if power_cut_random else None,
                   link_config=make_link(baud, pace, latency, ber, drop, dup, garbage, stall, stall_time, rx_buffer,
                                         rx_poll, seed),
                   disconnects=[parse_disconnect(d) for d in disconnects], workdir=workdir, as_json=as_json,
                   sign_key=sign_key, target=device_target)
    sys.exit(Run(o).run())


@main.command()
@click.option("--port", help="Port of the target (path or pyserial URL).")
@click.option("--target-cmd", help="Run the target yourself: a command with {port} for its port; it is restarted when it dies.")
@click.option("--reset-cmd", help="Shell command that resets a real target that stopped answering.")
@click.option("--target", "target_side", type=click.Choice(["primary", "ncp"]), required=True, help="Which side the target is.")
@FRAMING
@click.option("--baud", type=click.IntRange(300, 10_000_000), default=38400, show_default=True)
@click.option("--examples", type=click.IntRange(1), default=200, show_default=True, help="Cases to try (before shrinking).")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed tries the same cases.")
@click.option("--out", type=click.Path(dir_okay=False), default="fuzz-failure.json", show_default=True, help="Where a failing case is saved.")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False), help="Play a saved case again instead of fuzzing.")
@JSON
def fuzz(port, target_cmd, reset_cmd, target_side, framing, baud, examples, seed, out, replay, as_json) -> None:
    """Fuzz a live peer (real firmware or an emulator) from the interface table.

    Cases mix valid calls with boundary arguments, malformed arguments, unknown uids, bad
    CRCs, oversize and truncated frames, garbage and, against a primary, OTA sequences out of
    order. After each case the target must answer ping and hasUID, acknowledge a resend of
    its last chunk and refuse writes at wrong offsets. A failure is shrunk to a minimal case,
    printed as the exact bytes sent and saved to --out. Exit 0: nothing found; 1: a failure
    (saved); 3: no target to talk to.

    \b
      dualmcu fuzz --target primary --port /dev/ttyUSB0 --framing blynk
      dualmcu fuzz --target primary --target-cmd "dualmcu primary --port {port} --flash f.bin --provision app.bin"
    """
    from dualmcu import fuzz as F
    from dualmcu.shell import PortError

    if bool(port) == bool(target_cmd):
        raise click.UsageError("give --port or --target-cmd (one of them)")
    say = emit_json if as_json else (lambda obj: click.echo(" ".join(f"{k}={v}" for k, v in obj.items()), err=True))
    target = F.Target(port, baud, target_cmd, reset_cmd)
    try:
        p = target.open()
    except PortError as e:
        target.close()
        raise click.ClickException(str(e)) from None
    session = F.Session(p, framing, target_side)
    try:
        session.pump(0.5 if target_cmd else 0.1)
        if replay:
            problem = F.replay(session, replay)
            say({"event": "replay", "file": replay, "failure": problem})
            sys.exit(1 if problem else 0)
        t0 = time.monotonic()

        def progress(n, problem):
            if as_json:
                say({"event": "case", "n": n, "failure": problem})
            elif problem or n % 25 == 0:
                say({"case": n, "failure": problem})

        try:
            found, n = F.fuzz(session, target, examples, seed, progress)
        except F.TargetDown as e:
            raise click.ClickException(str(e)) from None
        result = {"event": "result", "cases": n, "seconds": round(time.monotonic() - t0, 2),
                  "target_restarts": target.restarts, "failure": found.reason if found else None}
        if found:
            F.save(out, found, {"target": target_side, "framing": framing, "baud": baud, "seed": seed})
            result.update(saved=out, steps=len(found.steps))
        say(result)
        if found and not as_json:
            click.echo(f"minimal failing case ({len(found.steps)} steps): {found.reason}")
            for s in found.steps:
                click.echo(f"  {s.what:<40} {s.data.hex(' ')}")
            click.echo(f"saved to {out}; play it again with: dualmcu fuzz --replay {out} ...")
        sys.exit(1 if found else 0)
    finally:
        p.close()
        target.close()


# -- signed images -----------------------------------------------------------------------------

@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
def keygen(out) -> None:
    """Make an Ed25519 key pair: OUT (private, PEM, readable by you alone) and OUT.pub."""
    from dualmcu.image.signing import generate, key_id, load_public

    if os.path.exists(out) or os.path.exists(out + ".pub"):
        raise click.ClickException(f"{out} or {out}.pub exists already: not overwriting a key")
    priv, pub = generate()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    with open(out + ".pub", "wb") as f:
        f.write(pub)
    click.echo(f"private key {out}, public key {out}.pub, key id {key_id(load_public(pub)).hex()}")


@main.command("sign")
@click.argument("firmware", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="Private key (PEM) from `dualmcu keygen`.")
@click.option("--counter", required=True, type=click.IntRange(0, 0xFFFFFFFF), help="Security counter: devices refuse images below the highest they confirmed.")
@click.option("--target", "targets", multiple=True, required=True, help="product/hardware-revision it may be installed on (repeatable; * for any).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the signed image (default: FIRMWARE.signed).")
def sign_cmd(firmware, key, counter, targets, output) -> None:
    """Append a signature block to FIRMWARE (see docs/signing.md)."""
    from dualmcu.image.signing import SignError, load_private, sign

    try:
        with open(key, "rb") as f:
            private = load_private(f.read())
        with open(firmware, "rb") as f:
            signed = sign(f.read(), private, counter, list(targets))
    except SignError as e:
        raise click.ClickException(str(e)) from None
    out = output or firmware + ".signed"
    _write(out, signed, f"a signed image (counter {counter}, targets {', '.join(targets)})")


@main.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--pubkey", "pubkeys", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False), help="Trusted public key (repeatable).")
@click.option("--target", help="Check that the image may be installed on this target.")
@click.option("--min-counter", type=click.IntRange(0), default=0, help="Refuse images below this security counter.")
@JSON
def verify_cmd(file, pubkeys, target, min_counter, as_json) -> None:
    """Check a signed image: key, signature, digest, target, counter. Exit 0 when it passes."""
    from dualmcu.image.signing import SignError, load_keys, verify_bytes

    try:
        keys = load_keys(list(pubkeys))
    except SignError as e:
        raise click.BadParameter(str(e), param_hint="--pubkey") from None
    with open(file, "rb") as f:
        v = verify_bytes(f.read(), keys, target, min_counter)
    sig = v.signature
    info = {"file": file, "ok": v.ok, "reason": v.reason,
            "key_id": sig.key_id.hex() if sig else None, "counter": sig.counter if sig else None,
            "targets": list(sig.targets) if sig else None}
    if as_json:
        emit_json(info)
    else:
        click.echo(("verified" if v.ok else f"REFUSED: {v.reason}") +
                   (f" (key {info['key_id']}, counter {info['counter']}, targets {', '.join(info['targets'])})" if sig else ""))
    sys.exit(0 if v.ok else 1)


# -- flash, tags, images -------------------------------------------------------------------------

@main.group()
def flash() -> None:
    """Inspect an emulated flash file."""


@flash.command("show")
@click.option("--flash", "path", type=click.Path(exists=True, dir_okay=False), default=DEFAULT_FLASH, show_default=True)
@JSON
def flash_show(path, as_json) -> None:
    """The boot state and, for each slot, its image: version, type, length, SHA-256, validity."""
    from dualmcu.primary.flash import FlashError
    from dualmcu.primary.inspect import describe, format_description

    try:
        d = describe(path)
    except FlashError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(d) if as_json else format_description(d))


@main.group()
def tag() -> None:
    """Create, show, extract and append Blynk firmware info tags (blynk_tag.py compatible)."""


def _tag_info(mcu, fw_type, build, blynk, extra=()):
    from dualmcu.image.firmware import make_info

    info = make_info(mcu, fw_type, build, blynk)
    for item in extra:
        k, sep, v = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        info[k] = v
    return info


TAG_OPTIONS = [
    click.option("--mcu", required=True, help="Firmware version, e.g. 1.2.3."),
    click.option("--type", "fw_type", required=True, help="Firmware type (usually the template id)."),
    click.option("--build", help="Build date and time (default: now, as __DATE__ __TIME__)."),
    click.option("--blynk", default="0.6.4", show_default=True, help="Library version."),
    click.option("--set", "extra", multiple=True, metavar="KEY=VALUE", help="Another tag key, e.g. dualmcu-test=fail-health."),
]


def _write(path: str, data: bytes, what: str) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror}") from None
    click.echo(f"wrote {what} to {path}")


def tag_options(f):
    for opt in reversed(TAG_OPTIONS):
        f = opt(f)
    return f


@tag.command("create")
@click.argument("out", type=click.Path(dir_okay=False))
@tag_options
def tag_create(out, mcu, fw_type, build, blynk, extra) -> None:
    """Write a tag alone to OUT."""
    from dualmcu.image.firmware import TagError, create_tag

    try:
        data = create_tag(_tag_info(mcu, fw_type, build, blynk, extra))
    except TagError as e:
        raise click.BadParameter(str(e)) from None
    _write(out, data, f"a {len(data)}-byte tag")


@tag.command("show")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@JSON
def tag_show(file, as_json) -> None:
    """Show the tag found in a tag file or a firmware image."""
    from dualmcu.image.firmware import read_info_from_file

    info = read_info_from_file(file)
    if info is None:
        raise click.ClickException(f"no Blynk info tag found in {file}")
    if as_json:
        click.echo(json.dumps(info))
    else:
        for k, v in info.items():
            click.echo(f"{k:<10} {v}")


@tag.command("extract")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
def tag_extract(file, out) -> None:
    """Copy the tag found in FILE to OUT."""
    from dualmcu.image.firmware import find_tag

    with open(file, "rb") as f:
        t = find_tag(f.read())
    if t is None:
        raise click.ClickException(f"no Blynk info tag found in {file}")
    _write(out, t, f"a {len(t)}-byte tag")


@tag.command("append")
@click.argument("firmware", type=click.Path(exists=True, dir_okay=False))
@tag_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of changing FIRMWARE in place.")
def tag_append(firmware, mcu, fw_type, build, blynk, extra, output) -> None:
    """Append a tag to a firmware image that has none (e.g. a re-packaged image)."""
    from dualmcu.image.firmware import TagError, create_tag, find_tag

    with open(firmware, "rb") as f:
        data = f.read()
    if find_tag(data) is not None:
        raise click.ClickException(f"{firmware} already has a tag (see `dualmcu tag show`); the first one found wins")
    try:
        t = create_tag(_tag_info(mcu, fw_type, build, blynk, extra))
    except TagError as e:
        raise click.BadParameter(str(e)) from None
    with open(output or firmware, "wb") as f:
        f.write(data + t)
    click.echo(f"{output or firmware}: {len(data)} bytes of firmware + {len(t)}-byte tag")


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@tag_options
@click.option("--size", type=Size(), default="300K", show_default=True, help="Image size.")
@click.option("--test", "behaviour", type=click.Choice(TEST_BEHAVIOURS),
              help="Make an image that misbehaves on the emulated primary, to test rollback.")
def image(out, mcu, fw_type, build, blynk, extra, size, behaviour) -> None:
    """Build a tagged test firmware image (deterministic filler after the tag)."""
    from dualmcu.image.firmware import TEST_KEY, TagError, build_image

    info = _tag_info(mcu, fw_type, build, blynk, extra)
    if behaviour:
        info[TEST_KEY] = behaviour
    try:
        data = build_image(info, size)
    except (TagError, ValueError) as e:
        raise click.BadParameter(str(e)) from None
    _write(out, data, f"{len(data)} bytes, version {mcu}, type {fw_type}" + (f", test: {behaviour}" if behaviour else ""))


if __name__ == "__main__":
    main()
