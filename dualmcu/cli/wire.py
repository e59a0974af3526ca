"""Commands for the wire itself: list ports, decode captures, encode frames by hand."""

from __future__ import annotations

import itertools
import os
import stat
import sys

import click

from dualmcu.framing import get_profile
from dualmcu.rpc.interface import INTERFACE, INVOKE
from dualmcu.rpc.message import Invoke, Oneway
from dualmcu.rpc.types import ArgsError

from .common import FRAMING, JSON, emit_json, main

# Two directions are paired in memory (--other, --spy); one direction streams without bound.
MAX_PAIRED = 256 << 20


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
@click.option("--other", "other", type=click.File("rb"),
              help="A raw capture of the other direction: RESULTs are then typed by the INVOKE that went the other way.")
@click.option("--spy", "spy", type=click.File("r", errors="replace"),
              help="A pyserial spy:// log (PORT as spy:///dev/ttyUSB0?file=LOG): both directions, in time order.")
@click.argument("hexdata", required=False)
def decode(framing: str, as_json: bool, path, other, spy, hexdata: str | None) -> None:
    """Decode captured UART bytes into RPC messages, one per line.

    Give the bytes as a HEX string (spaces allowed), with -f FILE (raw binary), or as '-' to read
    stdin (hex text if it is only hex digits and spaces, raw bytes otherwise). Dropped frames
    are shown with the reason. A file or stdin is decoded as it is read, each record shown as
    its frame ends: a FIFO or a pipe from a logger streams, and any length takes little memory.

    Both sides number their calls from 1, so a RESULT answers the INVOKE with its msg_id that
    went the other way. Give each direction's capture apart, the second with --other FILE,
    and every RESULT is typed by the right call. A pyserial spy:// log (--spy LOG) holds both
    directions with their times: records come in time order, marked [tx] (sent by the
    program that opened the port) and [rx]. With one capture alone, a RESULT is typed by the
    latest INVOKE with its msg_id in that same capture: a guess, right only when the capture
    holds one side's calls and the other side's answers.

    \b
      dualmcu ncp -p 'spy:///dev/ttyUSB0?file=ncp.log' --framing blynk ...
      dualmcu decode --framing blynk --spy ncp.log
    """
    from dualmcu.capture import (
        blocks,
        decode_capture,
        decode_directions,
        format_record,
        hex_blocks,
        jsonable,
        looks_like_hex,
        parse_hex,
    )

    if path is not None and hexdata is not None:
        raise click.UsageError("give either HEXDATA or --file, not both")
    if spy is not None:
        if path is not None or hexdata is not None or other is not None:
            raise click.UsageError("--spy holds both directions: give it alone, without HEXDATA, --file or --other")
        from dualmcu.capture import parse_spy

        try:
            tx, rx = parse_spy(read_capture(spy, "--spy"))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--spy") from None
        records = decode_directions(tx, rx, framing, names=("tx", "rx"))
    else:
        if path is not None:
            if _is_tty(path):
                # A terminal or serial port read as a file is in cooked mode: it would echo
                # what it receives back out of the UART, and mangle line ends.
                raise click.BadParameter(f"{path.name} is a terminal or serial port: decode reads "
                                         "captures; record one with spy:// (see --spy)",
                                         param_hint="--file")
            data = blocks(path)
        elif hexdata in (None, "-"):
            if hexdata is None and sys.stdin.isatty():
                raise click.UsageError("give HEXDATA, --file FILE or '-' for stdin")
            data = blocks(sys.stdin.buffer)
            first = next(data, b"")
            # Hex text if its first block is only hex digits and spaces, raw bytes otherwise.
            data = itertools.chain([first], data)
            if looks_like_hex(first):
                data = hex_blocks(data)
        else:
            try:
                data = parse_hex(hexdata)
            except ValueError as e:
                raise click.BadParameter(str(e), param_hint="HEXDATA") from None
        if other is not None:
            # Pairing needs both directions whole: every INVOKE of one before any RESULT of
            # the other is typed.
            records = decode_directions(read_capture(path or data, "--file" if path else "HEXDATA"),
                                        read_capture(other, "--other"), framing)
        else:
            records = decode_capture(data, framing)
    try:
        for rec in records:
            if as_json:
                emit_json(jsonable(rec))
            else:
                click.echo(format_record(rec))
    except ValueError as e:  # hex text on stdin that stops being hex part of the way
        raise click.BadParameter(str(e), param_hint="HEXDATA") from None


def _is_tty(f) -> bool:
    try:
        return os.isatty(f.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _is_device(f) -> bool:
    try:
        return stat.S_ISCHR(os.fstat(f.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # no descriptor: a test's stdin, say
        return False


def read_capture(src, option: str) -> bytes:
    """A capture that must be read whole (to pair two directions), bounded: one line instead
    of a process that fills the memory with a device that never ends.  ``src``: the
    capture's bytes, a file, or its blocks as they are read."""
    if isinstance(src, bytes):
        return src
    if hasattr(src, "read"):
        if _is_device(src):
            raise click.BadParameter(f"{src.name} is a device: pairing needs a capture that ends "
                                     "(record a port with spy://, see --spy)", param_hint=option)
        data = src.read(MAX_PAIRED + 1)
    else:
        buf = bytearray()
        try:
            for block in src:
                buf += block
                if len(buf) > MAX_PAIRED:
                    break
        except ValueError as e:  # hex text that stops being hex
            raise click.BadParameter(str(e), param_hint=option) from None
        data = bytes(buf)
    if len(data) > MAX_PAIRED:
        name = getattr(src, "name", "the capture")
        raise click.BadParameter(f"{name} is larger than {MAX_PAIRED >> 20} MiB: decode each "
                                 "direction alone (-f FILE) to stream it", param_hint=option)
    return data


@main.command()
@FRAMING
@click.option("--msg-id", type=click.IntRange(0, 0xFFFF), default=1, show_default=True)
@click.option("--oversize", is_flag=True, help="Frame a message longer than the framing carries (1536 bytes for blynk): a deliberate test of a receiver's limit.")
@click.argument("name")
@click.argument("args", nargs=-1, metavar="[ARG=VALUE]...")
def encode(framing: str, msg_id: int, oversize: bool, name: str, args: tuple[str, ...]) -> None:
    """Print the frame of one call as hex, e.g. for a hand test against hardware.

    NAME is a function of the interface (see `dualmcu docs interface`); arguments are given as
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
    except ArgsError as e:
        raise click.UsageError(f"{e}; {fn.signature()}") from None
    profile = get_profile(framing)
    message = msg.encode()
    if len(message) > profile.send_limit and not oversize:
        raise click.UsageError(f"the message has {len(message)} bytes, more than the {framing} framing carries "
                               f"({profile.send_limit}): no peer takes it; --oversize frames it anyway, to test "
                               "a receiver's limit")
    frame = profile.encode_unchecked(message) if oversize else profile.encode(message)
    click.echo(frame.hex(" "))
