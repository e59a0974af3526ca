"""What every command group shares: the group itself, option types that refuse bad values in
one line, the port and baud conventions, and the way files are written.

Every option value is checked here, before any command starts work: numbers must be finite
and in range (nan, inf, negative or zero timeouts are refused), sizes must parse, a port named
``auto`` must resolve to exactly one USB-serial port.
"""

from __future__ import annotations

import json
import math
import os

import click

from dualmcu import __version__
from dualmcu.exits import SHORT, ExitCode, sigterm_interrupts, stopped_code, stopped_word
from dualmcu.framing import PROFILE_NAMES
from dualmcu.paths import default_flash, shown, write_whole
from dualmcu.primary.ota import WriteAnswer

EPILOG = "Exit codes: " + "; ".join(f"{int(code)} {text}" for code, text in SHORT.items()) + "."


class _Group(click.Group):
    """Ctrl-C and SIGTERM end any command the same way: its clean-up runs (a half-written
    file is removed, a side's port closed, a cluster shut down), a command that can say what
    it had done says it, and the exit code tells which (130, 143).  Left to click, Ctrl-C said
    "Aborted!" with exit 1, and SIGTERM ended the process where it stood."""

    def invoke(self, ctx: click.Context):
        try:
            with sigterm_interrupts():
                return super().invoke(ctx)
        except KeyboardInterrupt as e:
            click.echo(stopped_word(e), err=True)
            ctx.exit(stopped_code(e))


@click.group(cls=_Group, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dualmcu")
def main() -> None:
    """Emulate a dual-MCU device: a Blynk.NCP network co-processor and the primary MCU it
    updates, talking RPC over a UART.

    Run `dualmcu run` for a complete firmware update between two emulated processes, and
    `dualmcu docs` for the manual pages (wire format, hardware, faults, signing, CLI).
    """
    # A standard descriptor closed by the caller (>&-) would be the next one opened: a port or
    # pty would then be stdout, and a child's stdout pipe would replace it. /dev/null holds
    # the place, as a daemon does; Python has already made such a stream None (print() skips).
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


class _OneLine(click.ClickException):
    def format_message(self) -> str:
        # A path or port name comes from the user or a peer: a newline or an escape code in
        # it must not forge lines on the terminal.
        from dualmcu.output import shown

        return shown(self.message)


class InputError(_OneLine):
    """A bad input file or destination: one line, exit code 2 (nothing was started)."""

    exit_code = ExitCode.USAGE


class IOFailure(_OneLine):
    """A port, peer or process that cannot be used: one line, exit code 3."""

    exit_code = ExitCode.IO


# -- option types --------------------------------------------------------------------------------

class Number(click.FloatRange):
    """A float in a range that is also finite: click's FloatRange lets nan and inf through."""

    name = "number"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def seconds(minimum: float = 0.0, open_min: bool = True) -> Number:
    """Seconds: finite, and above ``minimum`` (a zero or negative timeout is refused)."""
    return Number(min=minimum, min_open=open_min)


PROBABILITY = Number(0.0, 1.0)


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1024, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = int(t[:-1] if mult > 1 else t, 0) * mult
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 4096, 512K, 1M)") from None
    if n <= 0:
        raise click.BadParameter(f"{text!r}: a size must be positive")
    return n


class Size(click.ParamType):
    name = "SIZE"

    def __init__(self, maximum: int | None = None):
        self.maximum = maximum

    def convert(self, value, param, ctx):
        n = value if isinstance(value, int) else parse_size(value)
        if self.maximum is not None and n > self.maximum:
            self.fail(f"{value!r} is larger than {self.maximum} bytes", param, ctx)
        return n


def resolve_port(ctx, param, value):
    """``auto`` stands for the one USB-serial port there is; an ``exec:`` command is checked
    before anything starts; anything else is used as given."""
    if value is not None and value.startswith("exec:"):
        from dualmcu.target import TargetError, parse_exec

        try:
            parse_exec(value)
        except TargetError as e:
            raise click.BadParameter(str(e)) from None
        return value
    if value != "auto":
        return value
    from serial.tools import list_ports

    usb = [p.device for p in list_ports.comports() if p.vid is not None]
    if len(usb) != 1:
        found = ", ".join(usb) if usb else "none"
        raise click.BadParameter(f"auto needs exactly one USB-serial port; found {found} (dualmcu ports lists them)")
    return usb[0]


# -- shared options ------------------------------------------------------------------------------

FRAMING = click.option(
    "--framing",
    type=click.Choice(PROFILE_NAMES),
    default="cobs",
    show_default=True,
    help="cobs: the native COBS+CRC-32 framing; blynk: the real Blynk.NCP UART framing.",
)
JSON = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
WRITE_ANSWER = click.option(
    "--write-answer", type=click.Choice([w.value for w in WriteAnswer]), default=WriteAnswer.PROGRAMMED.value,
    show_default=True,
    help="When the primary answers a write: once the chunk is programmed (the reference MCU), or once "
         "it is buffered while the flash programs the chunk before it (double buffering).")
# RAM, not flash: a peer may fill it, so it is bounded far above any MCU's.
HOLD_BUFFER = click.option(
    "--buffer", "rx_hold", type=Size(1 << 24), default="32K", show_default=True,
    help="Bytes of chunks the primary holds while an earlier one is missing.  With writes in "
         "flight the NCP keeps at most buffer // chunk + 1 of them, so chunks larger than it go "
         "one at a time.")
PORT = click.option("-p", "--port", required=True, envvar="DUALMCU_PORT", show_envvar=True, callback=resolve_port,
                    help="Port path or pyserial URL (/dev/ttyUSB0, COM3, socket://HOST:PORT, rfc2217://HOST:PORT, "
                         "loop://), or auto for the one USB-serial port present.")
# One baud option for every command, one default: the real NCP's initial rate.  The pacing rule,
# said once: a real serial port runs at the rate; a pty or a socket carries bytes at any rate, and
# only the link model paces (`dualmcu link` between two ports, `dualmcu run --pace`).
DEFAULT_BAUD = 38400
BAUD = click.option("-b", "--baud", type=click.IntRange(300, 10_000_000), default=DEFAULT_BAUD, show_default=True,
                    envvar="DUALMCU_BAUD", show_envvar=True,
                    help="Initial baud rate (the real NCP starts at 38400); a reboot comes back to it. A real "
                         "serial port runs at it; a pty or socket carries bytes at any rate: `dualmcu link` "
                         "or `run --pace` paces them.")
FIRMWARE_LOG = click.option(
    "--firmware-log", type=click.Path(dir_okay=False), metavar="FILE",
    help="Where an exec: target's output goes (default: a new file in the temporary directory, named in port_open).")
PROGRESS_INTERVAL = click.option(
    "--progress-interval", type=Number(min=0), default=0.0, show_default=True, metavar="SECONDS",
    help="With --json, print transfer progress at most this often (and its last step); 0: every chunk.")
VERBOSE = click.option("-v", "--verbose", is_flag=True, help="Also show per-chunk progress and link-level events.")
DEFAULT_FLASH = default_flash()
FLASH_HELP_DEFAULT = shown(DEFAULT_FLASH)


def option_group(name: str, options: list, build):
    """Options declared once, next to the config they fill, and handed to a command as one
    object: the command takes ``name`` (``build(**their values)``) instead of one parameter
    each.  Every command that takes the group takes it whole, with the same defaults."""
    import functools

    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            values = {o.name: kwargs.pop(o.name) for o in params}
            return f(*args, **{name: build(**values)}, **kwargs)

        for opt in reversed(options):
            command = opt(command)
        params = command.__click_params__[-len(options):]
        return command

    return decorate


def emit_json(obj: dict) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


def read_file(path: str, what: str, limit: int) -> bytes:
    """A whole input file, or one line saying why not (missing, a directory or a device,
    unreadable, or larger than ``limit``: a regular file's size is checked before it is read)."""
    from dualmcu.image.inputs import InputFileError, read_input

    try:
        return read_input(path, what, limit)
    except InputFileError as e:
        raise InputError(str(e)) from None


def write_file(path: str, data: bytes, what: str | None, mode: int | None = None, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` whole (:func:`dualmcu.paths.write_whole`), or say in one line
    why not (a missing folder, a full disk); then say what was written (``what``; None says
    nothing). With ``exclusive`` an existing file is never replaced (a key)."""
    try:
        device = write_whole(path, data, mode, exclusive)
    except FileExistsError:
        raise InputError(f"{path} exists already: not overwriting it") from None
    except IsADirectoryError:
        raise InputError(f"cannot write {path}: it is a directory") from None
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    if what is not None:
        click.echo(f"wrote {what} to {path}", err=device)  # stdout may be where the bytes went
