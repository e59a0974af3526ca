"""The I/O shell around a core: a serial port (or pyserial URL) and the monotonic clock.

The shell owns the only loop: read what the port has, hand it to the core with the time, let
the core's deadlines pass, write what the core wants sent, carry out its actions.  It waits in
select() for the next byte or the core's next deadline, whichever comes first, so it adds no
latency of its own to a round trip; all timing is the core's, against ``time.monotonic()``.
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import mmap
import os
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import serial

from dualmcu.rpc.endpoint import earliest
from dualmcu.rpc.device import Reboot
from dualmcu.rpc.events import Event, checked

from .exits import ExitCode, say_error
from .link import End, LinkConfig, misread, new_stats, rates_agree

IDLE_WAKE = 0.5  # with no deadline, wake this often anyway (signals, --once checks, silence)
FALLBACK_POLL = 0.002  # read timeout for URL handlers without a file descriptor
try:  # tcdrain and tcflush raise termios.error, which is no OSError
    import termios
    from termios import error as TERMIOS_ERROR
except ImportError:  # not a POSIX system
    TERMIOS_ERROR = OSError
READ_AHEAD = 1 << 18  # bytes read in one go before the core sees them (see Port.read_rest)
# A frame this far along is larger than a pty holds (12 to 20 KiB): its writer is blocked on
# the full pty, and the rest is read in one go (Port.read_rest).  Below it nothing is read
# ahead: with small frames that would take a whole window of writes at once, answer them all
# at once, and leave the wire idle while the writer waits for the answers (1 KiB chunks, eight
# in flight: 1.8 times the transfer, measured).
BIG_FRAME = 8 << 10
MAX_QUEUE = 1 << 20  # bytes queued for a peer that does not read, before the oldest are dropped
# A sleeping process wakes 0.1-0.3 ms after its timer on a busy 2-core machine (measured in the
# relay: 155-226 us late at the median), and a paced round trip has several timed steps.  So
# a wait ends this much before a deadline, and the rest is polled: the deadline is met to a
# few microseconds, for at most this much CPU per deadline.
SPIN = 0.0003


def wait_for(deadline: float | None, now: float, idle: float) -> float:
    """How long to block before ``deadline`` (at most ``idle``): 0 within SPIN of it."""
    if deadline is None:
        return idle
    left = deadline - now
    return min(idle, left - SPIN) if left > SPIN else 0.0


class Core(Protocol):
    actions: list

    def receive(self, data: bytes, now: float) -> int | None: ...  # frames the bytes ended
    def tick(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def data_to_send(self) -> bytes: ...
    def idle(self) -> None: ...


class PortError(Exception):
    """A port that cannot be opened or used, said in words a user can act on."""


def check_host_url(url: str) -> None:
    """A socket:// or rfc2217:// URL is HOST:PORT, checked here: pyserial's own message for a
    bad one is a formatting error of its own (``'debug|info|warning|error'``)."""
    scheme = url.partition("://")[0]
    if scheme not in ("socket", "rfc2217"):
        return
    form = f"expected {scheme}://HOST:PORT with a port from 1 to 65535"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        port = None
    if port is None or not 1 <= port <= 65535:
        raise PortError(f"cannot open {url}: {form}")
    options = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    allowed = {"logging"}
    if scheme == "rfc2217":
        allowed |= {"ign_set_control", "poll_modem", "timeout"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise PortError(f"cannot open {url}: unknown option {unknown[0]!r} (known: {known})")


# What each errno of a failed open means to a user, said once: pyserial's words repeat the
# path and the errno ("[Errno 6] could not open port P: [Errno 6] No such device ...: 'P'").
_OPEN_ERRNO = {
    errno.ENOENT: "no port at {url}: check the path (dualmcu ports lists them)",
    errno.EISDIR: "{url} is a directory, not a port",
    errno.EBUSY: "{url} is in use by another program",
    errno.EACCES: "no permission to open {url}: join the dialout group or run with access",
    errno.EPERM: "no permission to open {url}: join the dialout group or run with access",
    errno.ECONNREFUSED: "nothing is listening at {url}",
    errno.ENOTTY: "{url} is not a serial port: it takes no baud rate or line settings",
    errno.ENXIO: "cannot open {url}: no device behind that path (unplugged?)",
    errno.ENODEV: "cannot open {url}: no device behind that path (unplugged?)",
}


def _open_failure(url: str, e: serial.SerialException) -> str:
    """One line for a port pyserial could not open."""
    text = str(e)
    if "lock" in text.lower():  # another process holds the port's lock (errno EWOULDBLOCK)
        return f"{url} is in use by another program"
    if getattr(e, "errno", None) in _OPEN_ERRNO:
        return _OPEN_ERRNO[e.errno].format(url=url)
    if getattr(e, "errno", None):
        return f"cannot open {url}: {os.strerror(e.errno)}"
    # No errno: pyserial's own words (a host it could not resolve, a URL it does not know),
    # the URL said once.
    if "busy" in text.lower():
        return f"{url} is in use by another program"
    if "Connection refused" in text or "Errno 111" in text:
        return f"nothing is listening at {url}"
    if "Inappropriate ioctl" in text or "(25," in text:
        return f"{url} is not a serial port: it takes no baud rate or line settings"
    if "Name or service not known" in text or "Errno -2" in text:
        return f"cannot open {url}: no host of that name"
    for said in (f"could not open port {url}: ", f"Could not open port {url}: "):
        text = text.removeprefix(said)
    return f"cannot open {url}: {text}"


def open_port(url: str, baud: int) -> serial.SerialBase:
    if not url:
        raise PortError("no port given: a device path (/dev/ttyUSB0) "
                        "or a pyserial URL (socket://HOST:PORT)")
    check_host_url(url)
    try:
        port = serial.serial_for_url(url, do_not_open=True)
        port.baudrate = baud
        port.timeout = IDLE_WAKE
        # Writes never wait on the peer (see Port.write_some): a real port is non-blocking at
        # the fd, and only the URL handlers without an fd use a write timeout at all.
        if not url.startswith("rfc2217://"):
            port.write_timeout = 10
        if hasattr(port, "exclusive") and "://" not in url:
            port.exclusive = True  # two emulators on one port would garble each other
        port.open()
        return port
    except serial.SerialException as e:
        raise PortError(_open_failure(url, e)) from None
    except (ValueError, OSError) as e:
        raise PortError(f"cannot open {url}: {e}") from None


def shown(value: Any) -> str:
    """A field as a readable line shows it: text from a peer (a filename, a version) may hold
    control characters, and an escape sequence must not reach the user's terminal."""
    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


def readable(value: Any) -> str:
    """A field's value as a person reads it: no Python reprs (``{'a': 1}``, ``['x']``)."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{readable(v)}" for k, v in value.items() if v is not None) or "-"
    if isinstance(value, (list, tuple, set)):
        return ",".join(readable(v) for v in value) or "-"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, bool):
        return "yes" if value else "no"
    return shown(value)


def detail(fields: dict[str, Any]) -> str:
    """The fields of a readable line; one with no value (None) is left out (--json keeps it)."""
    return " ".join(f"{k}={readable(v)}" for k, v in fields.items() if v is not None)


class Outlet:
    """Where a side's event lines go, without ever stalling the side.

    A pipe whose reader stops (a pager left on its first screen, a script that sleeps) would
    block a plain write, and a side blocked in its log neither answers its peer nor meets a
    deadline: the peer then times out for a reason that is not on the wire. On a pipe or a
    socket the lines go out as the reader takes them and wait here meanwhile; past ``limit``
    bytes held, new lines are left out and counted until the reader has caught up, and then
    said in one line (``note``). A file or a terminal is written as before: neither stops
    reading. At the side's end :meth:`close` waits for the reader and writes the rest, so
    nothing below the limit is lost. A stream that cannot be written (a reader that went away,
    a full disk) is never raised into the core that emitted the line: :attr:`failed` holds the
    error, lines go nowhere from then on, and the shell ends the side (:meth:`Runner.run`). A
    closed stream (``>&-``) takes nothing and fails nothing, as print() does.

    The descriptor stays blocking: O_NONBLOCK would be set on a description the shell shares
    with other writers (stderr, with ``2>&1``), whose own writes would then fail. Instead a
    write waits for select() to say the pipe has room and is at most PIPE_BUF bytes, which a
    pipe with room takes whole.
    """

    CHUNK = select.PIPE_BUF

    def __init__(self, stream, note: Callable[[int, int], str], limit: int = 32 << 20):
        self.stream = stream
        self.note = note  # the line that says how many lines were left out, and the limit
        self.limit = limit
        self.held = bytearray()
        self.head = 0  # the first byte of held not yet written
        self.left_out = 0  # lines left out since the last time that was said
        self.failed: OSError | ValueError | None = None
        self.name = {"<stdout>": "stdout", "<stderr>": "stderr"}.get(getattr(stream, "name", None), "the output")
        self.fd: int | None = None
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError):
            return
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            stream.flush()
            self.fd = fd

    def write(self, text: str) -> None:
        self.add(text)
        self.pump()

    def add(self, text: str) -> None:
        """Hold ``text`` for the next :meth:`pump` (on a file or terminal: buffer it)."""
        if self.stream is None:
            return
        if self.fd is None:
            try:
                self.stream.write(text)
            except (OSError, ValueError) as e:
                self._fail(e)
            return
        if self.left_out or len(self.held) - self.head + len(text) > self.limit:
            # Left out until all that is held has gone and the gap is said, so that the lines
            # a reader gets stay in order around it.
            self.left_out += text.count("\n")
        else:
            self.held += text.encode()

    def pump(self) -> None:
        """Write what the reader takes now."""
        if self.stream is None:
            return
        if self.fd is None:
            try:
                self.stream.flush()
            except (OSError, ValueError) as e:
                self._fail(e)
            return
        self._write(wait=False)
        if self.head and self.head * 2 >= len(self.held):
            del self.held[:self.head]
            self.head = 0

    def _write(self, wait: bool) -> None:
        try:
            self._write_held(wait)
        except OSError as e:
            self._fail(e)

    def _fail(self, e: OSError | ValueError) -> None:
        self.failed = e
        self.stream = None
        self.fd = None
        self.held.clear()
        self.head = 0

    def _write_held(self, wait: bool) -> None:
        while self.head < len(self.held) or self.left_out:
            if self.head == len(self.held):
                self.held += self.note(self.left_out, self.limit).encode()
                self.left_out = 0
            if not select.select([], [self.fd], [], None if wait else 0)[1]:
                return
            try:
                with memoryview(self.held) as view:
                    self.head += os.write(self.fd, view[self.head:self.head + self.CHUNK])
            except BlockingIOError:  # a descriptor another program made non-blocking
                if not wait:
                    return

    def close(self) -> None:
        """Wait for the reader and write everything held."""
        if self.fd is None:
            self.pump()
            return
        try:
            self._write(wait=True)
        finally:
            self.held.clear()
            self.head = 0
            self.fd = None

    def broken(self) -> str | None:
        """Why the stream failed, in one line; None when it did not, or when its reader went
        away (a closed pipe ends a program quietly)."""
        if self.failed is None or isinstance(self.failed, BrokenPipeError):
            return None
        e = self.failed
        return f"cannot write the event lines to {self.name}: {shown(getattr(e, 'strerror', None) or e)}"

    @property
    def code(self) -> ExitCode | None:
        """The exit code a failed stream ends its program with: 1 when the reader went away
        (as a closed pipe ends any program), 3 when the stream could not be written."""
        if self.failed is None:
            return None
        return ExitCode.FAILED if isinstance(self.failed, BrokenPipeError) else ExitCode.IO

    def say_broken(self) -> None:
        """Say once, on stderr, why the lines could not be written (:meth:`broken`)."""
        why = self.broken()
        if why is not None:
            try:
                say_error(why)
            except (OSError, ValueError):
                pass  # stderr is the stream that failed


def json_note(side: str) -> Callable[[int, int], str]:
    """The ``events_dropped`` line of a --json stream."""
    def note(lines: int, limit: int) -> str:
        return json.dumps({"side": side, "event": Event.EVENTS_DROPPED.value, "lines": lines,
                           "held": limit}, separators=(",", ":")) + "\n"
    return note


def text_note(side: str) -> Callable[[int, int], str]:
    """The same, in the readable lines on stderr."""
    def note(lines: int, limit: int) -> str:
        return (f"{side:<7} {'':9} {Event.EVENTS_DROPPED.value:<20} lines={lines} "
                f"note=the reader of this output fell {limit >> 20} MiB behind\n")
    return note


class Progress:
    """One line, redrawn in place on a terminal: bytes, rate, ETA, retries.  It is cut to the
    terminal's width, so that it never wraps (a wrapped line is not redrawn in place: each
    redraw would add a line).  Off a terminal it draws nothing."""

    def __init__(self, stream, note: Callable[[int, int], str] | None = None):
        self.stream = stream
        self.out = Outlet(stream, note or text_note("run"))  # lines; the redrawn one is a terminal's
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self.started: float | None = None
        self.first = 0  # the offset at the first step: the rate counts what came after it
        self.last = 0.0
        self.drawn = False

    def width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, AttributeError, ValueError):
            return shutil.get_terminal_size().columns

    def update(self, offset: int, size: int, retries: int | None = None) -> None:
        now = time.monotonic()
        if self.started is None:
            # The first step reports a chunk that crossed the wire before it: counting it over
            # the time since would show more than the line can carry (11.4 KiB/s at 115200).
            self.started, self.first = now, offset
        if not self.live or (now - self.last < 0.1 and offset < size):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        rate = (offset - self.first) / elapsed
        eta = (size - offset) / rate if rate > 0 else 0
        text = (f"{offset / 1024:7.1f}/{size / 1024:.1f} KiB  {rate / 1024:6.1f} KiB/s  ETA {eta:4.0f}s"
                + (f"  retries {retries}" if retries is not None else ""))
        room = self.width() - 1  # the last column would wrap on some terminals
        bar = max(0, min(30, room - len(text) - 3))
        if bar >= 5:
            fill = int(bar * offset / size) if size else bar
            text = f"[{'#' * fill}{'.' * (bar - fill)}] {text}"
        self.stream.write("\r" + text[:max(room, 1)] + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def line(self, text: str) -> None:
        if self.drawn:
            self.out.add("\n")
            self.drawn = False
        if text:
            self.out.add(text + "\n")
        self.out.pump()

    def close(self) -> None:
        """Wait for a slow reader to take every line still held."""
        self.out.close()


class EventPrinter:
    """Events as JSON lines on stdout, or as readable lines on stderr.

    Both carry ``t`` in seconds since ``start``: the side's own start, or the start of the
    ``dualmcu run`` that started it, so that the events of its two processes share one origin.
    On a terminal a transfer is one progress line redrawn in place (``-v`` prints each step
    instead)."""

    QUIET = {Event.OTA_PROGRESS, Event.RPC_FRAME_DROPPED, Event.RPC_TIMEOUT, Event.RPC_STALE_RESULT}

    def __init__(self, side: str, as_json: bool, verbose: bool = False, out=None, start: float | None = None,
                 progress_interval: float = 0.0):
        self.side = side
        self.as_json = as_json
        # A JSON line for every chunk is what a tool reading the stream wants; a reader that
        # only draws progress (``dualmcu run`` for a human) asks for one every so often, and
        # the sides spend their time on the transfer instead of on their log.
        self.progress_interval = progress_interval
        self._progress_at = -math.inf
        self.verbose = verbose
        self.start = time.monotonic() if start is None else start
        self.progress = Progress(out or sys.stderr, text_note(side))
        self.watchers: list[Callable[[Event, dict], None]] = []
        self._held: list[tuple[Event, dict]] | None = None  # a step's events, while held
        self.outlet = Outlet(out or sys.stdout, json_note(side)) if as_json else self.progress.out

    def origin_utc(self) -> str:
        """The wall-clock time at which ``t`` is 0, to set this stream beside other logs."""
        wall = time.time() - (time.monotonic() - self.start)
        return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat(timespec="milliseconds")

    def hold(self) -> None:
        """Keep JSON lines until :meth:`release`: the shell holds a step's events until its
        bytes are on the wire, so that logging never delays an answer."""
        if self.as_json and self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            self.outlet.write("".join(map(self._line, held)))
        elif self.outlet.held:
            self.outlet.pump()  # lines a slow reader left: each step gives it more

    def close(self) -> None:
        """Write every line still held for a slow reader (the side is ending)."""
        self.outlet.close()

    @property
    def failed(self) -> OSError | ValueError | None:
        """Why the lines could not be written (the side then ends: :class:`Runner`)."""
        return self.outlet.failed

    def _line(self, item: tuple[Event, dict]) -> str:
        kind, fields = item
        rec = {"side": self.side, "event": kind}
        rec.update({k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()})
        if isinstance(rec.get("t"), float):
            rec["t"] = round(rec["t"] - self.start, 6)  # the cores keep the monotonic clock
        return json.dumps(rec, separators=(",", ":")) + "\n"

    def __call__(self, kind: Event, **fields: Any) -> None:
        checked(kind)
        for w in self.watchers:
            w(kind, fields)
        if self.as_json:
            if kind is Event.OTA_PROGRESS and self.progress_interval:
                now = time.monotonic()
                last = fields.get("offset", 0) >= fields.get("size", 0)
                if now - self._progress_at < self.progress_interval and not last:
                    return
                self._progress_at = now
            if self._held is not None:
                self._held.append((kind, fields))  # formatted once the step's bytes are sent
                return
            self.outlet.write(self._line((kind, fields)))
            return
        if kind is Event.OTA_PROGRESS and not self.verbose:
            self.progress.update(fields.get("offset", 0), fields.get("size", 0), fields.get("retries"))
            return
        if kind in self.QUIET and not self.verbose:
            return
        t = fields.pop("t", None)
        stamp = f"{t - self.start:9.3f}" if isinstance(t, (int, float)) else " " * 9
        self.progress.line(f"{self.side:<7} {stamp} {kind:<20} {detail(fields)}")


@dataclass(frozen=True)
class Wire:
    """One side's end of ``dualmcu run``'s virtual UART, handed down to the side's process: a
    descriptor of a pty or socket pair, and the link model this side sends through."""

    fd: int
    side: str  # "a" (the NCP) or "b" (the primary)
    baud: int
    name: str  # what the user is told: the pty's path, the socket's address
    link: LinkConfig | None = None
    disconnects: tuple[tuple[str, float, float], ...] = ()
    start: float = 0.0  # the monotonic time the disconnections count from
    tally: str | None = None  # the file of this end's counters (Tally)


class Tally:
    """One end's counters, in a small file that the parent reads when the run ends.

    A file, not an event at exit: a side killed on purpose (``--kill-*-at``) or by a power cut
    does not get to say anything, and the bytes it sent and the faults injected into them still
    count.  A restarted side adds to what its previous process counted."""

    KEYS = ("sent", "lost", *new_stats())

    def __init__(self, path: str):
        size = 8 * len(self.KEYS)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._cells = memoryview(self._map).cast("q")
        self._base = list(self._cells)

    def update(self, port: Port) -> None:
        cells, base = self._cells, self._base
        cells[0] = base[0] + port.sent
        cells[1] = base[1] + port.dropped
        if port.end is not None:  # a transparent link counts nothing else
            stats = port.end.stats
            for i, key in enumerate(self.KEYS[2:], 2):
                cells[i] = base[i] + stats[key]

    def close(self) -> None:
        self._cells.release()
        self._map.close()

    @classmethod
    def read(cls, path: str) -> dict[str, int]:
        try:
            with open(path, "rb") as f:
                raw = f.read(8 * len(cls.KEYS))
        except OSError:
            return {}
        if len(raw) < 8 * len(cls.KEYS):
            return {}
        return dict(zip(cls.KEYS, struct.unpack(f"{len(cls.KEYS)}q", raw)))


class SignalWake:
    """A pipe the signal module writes a byte to when a signal arrives, waited on beside the
    port.  Python runs a signal's handler and then resumes an interrupted select() (PEP 475),
    so without it a side told to stop by SIGTERM went on waiting until its next deadline or
    IDLE_WAKE: half a second at the end of every `dualmcu run`, with both sides idle."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        for fd in (self.fd, self._w):
            os.set_blocking(fd, False)
        try:
            self._previous = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: signals reach it only between waits
            self.close()
            raise

    def clear(self) -> None:
        try:
            while os.read(self.fd, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if getattr(self, "_previous", None) is not None:
            signal.set_wakeup_fd(self._previous)
            self._previous = None
        for fd in (self.fd, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


class Port:
    """A pyserial port as the shell uses it: wait for bytes or a deadline, write without waiting.

    A real port and a pty have a file descriptor and a socket:// URL a socket: both are waited
    on with select(), so a byte is handed to the core the moment it arrives and a deadline is
    met to the millisecond; nothing polls.  Other URL handlers (loop://, spy://, rfc2217://)
    have neither and are read with a short timeout instead.

    Writes go to a bounded queue that drains as the peer reads.  A peer that stops reading is
    its own problem: the emulator keeps running, and past ``max_queue`` bytes the oldest queued
    bytes are dropped and counted (the framing recovers at the next frame).
    """

    def __init__(self, port: serial.SerialBase | None, max_queue: int = MAX_QUEUE, *, fd: int | None = None,
                 baud: int | None = None, end: End | None = None, tally: Tally | None = None):
        self.serial = port
        self.max_queue = max_queue
        self.queue = bytearray()
        self.dropped = 0
        self.sent = 0  # bytes this side has written
        self.baudrate = port.baudrate if port is not None else baud
        # With an end, this side paces what it sends (and injects its direction's faults):
        # bytes wait in the end's lane until they have arrived, then go out.  A transparent
        # end (nothing paced, nothing injected) is left out: bytes go straight out.
        self.end = end if end is not None and not end.transparent else None
        self.tally = tally
        # Whether the last wait ended only because the peer took queued bytes: no byte came
        # in, so the loop has nothing to hand the core.
        self.made_room = False
        self.wake: SignalWake | None = None  # set while a Runner waits on this port
        self._sock = None
        # An exec: target (dualmcu.target) on the far end of this port's pty: its process is
        # ended with the port, and its own baud rate decides what each end hears.
        self.owner = None
        self.misheard: tuple[int, int] | None = None  # (theirs, ours) when bytes last crossed mismatched
        self._said: tuple[tuple[int, int] | None, int, int] = (None, 1, 0)  # mismatch, starts, exits said
        # A spy:// port logs in its read() and write(), which the shell goes round (it reads
        # and writes the descriptor): what crosses is handed to the spy's own formatter, so
        # the capture holds every byte in pyserial's format (`dualmcu decode --spy` reads it).
        self._spy = getattr(port, "formatter", None) if type(port).__module__.endswith("protocol_spy") else None
        if port is None:  # a descriptor handed down by the parent (dualmcu run)
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                self._sock, fd = socket.socket(fileno=fd), None
                self._sock.setblocking(False)
            else:
                os.set_blocking(fd, False)
            self._fd = fd
            self._nonblocking = fd is not None
            return
        # Only a socket:// port is a plain socket to read and write directly.  An rfc2217://
        # port has one too, but it carries telnet commands and escaped 0xFF bytes, and the
        # client's own thread reads it: going round that thread splits the stream.
        plain = type(port).__module__.endswith("protocol_socket")
        self._sock = getattr(port, "_socket", None) if plain else None
        fd = None
        if self._sock is None:
            try:
                fd = port.fileno()
            except (AttributeError, NotImplementedError, ValueError, serial.SerialException):
                fd = None
        self._fd = fd
        # pyserial opens a port non-blocking; a read before a select must never block.
        self._nonblocking = fd is not None and not os.get_blocking(fd)

    @classmethod
    def of(cls, wire: Wire) -> Port:
        """The port of one side of ``dualmcu run``'s virtual UART."""
        end = End(wire.link, wire.side, wire.disconnects, wire.start) if wire.link is not None else None
        return cls(None, fd=wire.fd, baud=wire.baud, end=end, tally=Tally(wire.tally) if wire.tally else None)

    def wait_read(self, wait: float) -> bytes:
        """What arrives within ``wait`` seconds (all of it that is there once the first byte is);
        b"" when the wait ended with nothing, ``made_room`` set when it ended early because the
        peer took queued bytes."""
        self.made_room = False
        try:
            if self._sock is not None or self._fd is not None:
                # Straight from the socket or descriptor select() found readable: pyserial's
                # socket:// reads byte by byte, and its serial read would select again and ask
                # the driver how much waits, two more system calls on every round trip.
                return self._read_now(hung_up=True) if self._select(wait) else b""
            self.serial.timeout = max(0.0, min(wait, FALLBACK_POLL))
            data = self.serial.read(1)
            if data and self.serial.in_waiting:
                data += self.serial.read(self.serial.in_waiting)
            return data
        except (serial.SerialException, OSError) as e:
            raise PortError(f"the port failed: {e}") from None

    @property
    def reads_first(self) -> bool:
        """Whether to try a read before waiting in select(): on a descriptor with nothing paced.
        A side that cannot keep up then finds its next bytes there and skips the select, one
        system call in two on its busiest path; one with nothing waiting pays a failed read."""
        return self.end is None and (self._sock is not None or self._nonblocking)

    def read_waiting(self) -> bytes:
        """What has already arrived, without waiting (b"" when nothing has); queued output
        goes out as the peer takes it, as it would in a wait."""
        if self.queue:
            self._drain()
        try:
            # A pty reads empty for a while after its peer closed (a relay reconnecting): only
            # a socket's empty read, and one after select() said readable, are a hang-up.
            return self._read_now(hung_up=self._sock is not None)
        except OSError as e:
            raise PortError(f"the port failed: {e}") from None

    def read_rest(self, data: bytes) -> bytes:
        """``data`` and what else has arrived behind it (up to READ_AHEAD bytes), read before the
        core takes any of it.  A pty holds only 12 to 20 KiB: while the core works on a large
        frame that ended in ``data``, a writer blocked on the full pty sends nothing, and
        taking what it holds first lets the writer fill it again meanwhile (the shell asks for
        this deep in a large frame only: BIG_FRAME).  Only where reads come first (a
        descriptor or socket with nothing paced)."""
        if not data or not self.reads_first:
            return data
        parts, n = [data], len(data)
        while n < READ_AHEAD and (more := self.read_waiting()):
            parts.append(more)
            n += len(more)
        return data if len(parts) == 1 else b"".join(parts)

    def _read_now(self, hung_up: bool) -> bytes:
        """What the socket or descriptor holds now, b"" when nothing.  ``hung_up``: an empty
        read means the peer closed or a USB adapter was pulled, as pyserial reports it."""
        try:
            data = (self._sock.recv(65536, socket.MSG_DONTWAIT) if self._sock is not None
                    else os.read(self._fd, 65536))
        except (BlockingIOError, InterruptedError):
            return b""
        if data and self._spy is not None:
            self._spy.rx(data)
        if data and self.owner is not None:
            data = self._across(data, sending=False)
        if not data and hung_up:
            raise PortError("the other side closed the connection" if self._sock is not None else
                            "the port failed: it reports data to read but gives none "
                            "(device disconnected, or another program on the port?)")
        return data

    def _select(self, wait: float) -> bool:
        handle = self._sock if self._sock is not None else self._fd
        writers = [handle] if self.queue else []
        readers = [handle] if self.wake is None else [handle, self.wake.fd]
        readable, writable, _ = select.select(readers, writers, [], max(0.0, wait))
        if self.wake is not None and self.wake.fd in readable:
            self.wake.clear()  # a signal: its handler has run, the loop looks at its flags
        port_readable = handle in readable
        if writable:
            self._drain()
            self.made_room = not port_readable
        return port_readable

    def write(self, data: bytes, now: float | None = None) -> None:
        """Queue ``data`` and send what the peer takes now; never waits for it.

        With an end, ``data`` starts on the wire at ``now``: the time of the step that made it,
        as the core was given it, so the emulator's own work in the step does not count as
        wire time (a real MCU answers in microseconds)."""
        self.sent += len(data)
        if self.owner is not None:
            data = self._across(data, sending=True)
        if self.end is not None:
            self.end.send(data, time.monotonic() if now is None else now)
            self.pump(time.monotonic(), counted=False)
            return
        self._queue(data)

    def _across(self, data: bytes, sending: bool) -> bytes:
        """Bytes between this side and an exec: target as the receiving UART makes of them: a
        pty ignores line speed, so the two ends' rates are compared here (link.misread)."""
        theirs = self.owner.baud()
        if theirs is None or self.baudrate is None or rates_agree(self.baudrate, theirs):
            return data
        self.misheard = (theirs, self.baudrate)
        return misread(data, self.baudrate, theirs) if sending else misread(data, theirs, self.baudrate)

    def notes(self) -> list[tuple[Event, dict]]:
        """What an exec: target did since last asked, as events: a new mismatch of the two
        ends' rates, a restart (a reboot, or a power cut).  A target that gave up ends the side."""
        owner = self.owner
        if owner is None:
            return []
        if owner.failure is not None:
            raise PortError(owner.failure)
        out: list[tuple[Event, dict]] = []
        said_rates, said_starts, said_exits = self._said
        if self.misheard is not None and self.misheard != said_rates:
            out.append((Event.BAUD_MISMATCH, {"firmware_baud": self.misheard[0], "baud": self.misheard[1],
                                              "note": "bytes crossed as a UART at the other rate hears them"}))
        for code in owner.exits[said_exits:]:
            out.append((Event.TARGET_EXITED, {"code": code}))
        if owner.starts > said_starts:
            out.append((Event.TARGET_STARTED, {"starts": owner.starts, "log": owner.log_path}))
        self._said = (self.misheard, owner.starts, len(owner.exits))
        return out

    def _queue(self, data: bytes) -> None:
        self.queue += data
        self._drain()
        over = len(self.queue) - self.max_queue
        if over > 0:
            del self.queue[:over]
            self.dropped += over
        if self.tally is not None:
            self.tally.update(self)

    def next_deadline(self) -> float | None:
        """When the end has bytes arriving at the other side (None: nothing on the wire)."""
        return self.end.next_deadline() if self.end is not None else None

    def pump(self, now: float, counted: bool = True) -> None:
        """Send what has arrived at the other side by ``now``.  ``counted``: the end's counters
        have not changed since the tally last took them (it runs on every turn of the loop)."""
        if self.end is None:
            return
        cuts = len(self.end.cuts)
        due = self.end.due(now)
        if due:
            self._queue(due)  # tallies
        elif self.tally is not None and (not counted or cuts != len(self.end.cuts)):
            self.tally.update(self)

    def _drain(self) -> None:
        try:
            while self.queue:
                if self._sock is not None:
                    n = self._sock.send(self.queue, socket.MSG_DONTWAIT)
                elif self._fd is not None:
                    n = os.write(self._fd, self.queue)
                else:
                    n = self.serial.write(bytes(self.queue)) or 0
                if n <= 0:
                    return
                if self._spy is not None and (self._sock is not None or self._fd is not None):
                    self._spy.tx(bytes(self.queue[:n]))  # pyserial's write() logs its own
                del self.queue[:n]
        except (BlockingIOError, InterruptedError, serial.SerialTimeoutException):
            return
        except (serial.SerialException, OSError) as e:
            raise PortError(f"the port failed: {e}") from None

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until what is on the wire has arrived and the queue has left (bounded), then
        until the UART has sent it."""
        end = time.monotonic() + timeout
        while self.end is not None and (deadline := self.end.arriving()) is not None:
            now = time.monotonic()
            if deadline > end or now >= end:
                break
            if deadline > now:
                time.sleep(deadline - now)
            self.pump(time.monotonic())
        while self.queue and time.monotonic() < end:
            handle = self._sock if self._sock is not None else self._fd
            if handle is None:
                self._drain()
                break
            select.select([], [handle], [], max(0.0, end - time.monotonic()))
            self._drain()
        if self.serial is not None and self._sock is None:
            try:
                self.serial.flush()
            except (serial.SerialException, OSError, TERMIOS_ERROR):
                pass

    def set_baud(self, baud: int) -> None:
        self.flush()
        if self.serial is not None:
            self.serial.baudrate = baud
        if self.end is not None:
            self.end.set_baud(baud)
        self.baudrate = baud

    def discard_input(self) -> None:
        try:
            if self.serial is not None:
                self.serial.reset_input_buffer()
            elif self._sock is not None:
                while self._sock.recv(65536, socket.MSG_DONTWAIT):
                    pass
            elif os.isatty(self._fd):
                termios.tcflush(self._fd, termios.TCIFLUSH)
        except (BlockingIOError, serial.SerialException, OSError, TERMIOS_ERROR):
            pass

    def close(self) -> None:
        if self.tally is not None:
            self.tally.update(self)
            self.tally.close()
        if self.serial is not None:
            self.serial.close()
        elif self._sock is not None:
            self._sock.close()
        else:
            os.close(self._fd)
        if self.owner is not None:
            self.owner.close()


# SIGUSR1 and SIGUSR2 a side received, in order (Runner._requested): kept from the side's start,
# so that one sent as soon as the side said port_open is not lost, nor kills the process.
REQUESTS: list[int] = []


def take_requests() -> None:
    """From now on SIGUSR1 and SIGUSR2 are requests to the side, not the end of the process."""
    for s in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, lambda signum, _frame: REQUESTS.append(signum))


class Runner:
    """Drive a core over a port until told to stop.

    The loop waits for whichever comes first: the next byte, or the core's next deadline.
    ``on_action(action, port)`` carries out what the core asks for; it returns a new core
    (after a reboot), None to go on, or raises :class:`Stop` to end the loop.  ``check`` runs
    after every step and may raise Stop; ``watchdog`` (a :class:`Silence`) counts the bytes
    that arrive and reads the core's frame count, to say once when nothing sensible arrives.
    """

    def __init__(self, port: Port, core: Core,
                 on_action: Callable[[Any, Port], Core | None],
                 check: Callable[[], None] | None = None,
                 watchdog: Silence | None = None, events: EventPrinter | None = None):
        self.port = port
        self.core = core
        self.on_action = on_action
        self.check = check
        self.watchdog = watchdog
        self.events = events  # held during a step, released once its bytes are sent
        self._stopping = False
        self.requests = REQUESTS  # SIGUSR1, SIGUSR2 received, handled in the loop

    def stop(self, *_: Any) -> None:
        self._stopping = True

    def _requested(self) -> None:
        """What a test script asks of a running side by signal (docs/testing.md): SIGUSR1
        reboots this side now (its state gone, its UART back at the initial rate), SIGUSR2
        cuts the power of an exec: target on its port."""
        while self.requests:
            if self.requests.pop(0) == signal.SIGUSR1:
                self._flush()
                replaced = self.on_action(Reboot("signal"), self.port)
                if replaced is not None:
                    self.core = replaced
                    self._flush()
            elif getattr(self.port, "owner", None) is not None:
                self.port.owner.power_cycle()

    def run(self) -> None:
        port = self.port
        # SIGTERM ends the loop cleanly; once the loop is over it ends the process again, so
        # that a side waiting at its end for a --json reader that never reads can be stopped.
        previous = signal.signal(signal.SIGTERM, self.stop)
        asked = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
        take_requests()
        deadline = self.core.next_deadline()  # the core's, as the last full step left it
        stepped = time.monotonic()  # when the last full step ran
        wake = None
        inside = 0  # bytes handed to the core since it last ended a frame
        try:
            wake = port.wake = SignalWake()
            while not self._stopping:
                if self.requests:
                    self._requested()
                    deadline = self.core.next_deadline()
                data = port.read_waiting() if port.reads_first else b""
                if not data:
                    # A full step at least every IDLE_WAKE (signals, --once checks, silence),
                    # even for a side whose wakes all only let queued bytes out.
                    due = earliest(deadline, port.next_deadline(), stepped + IDLE_WAKE)
                    data = port.wait_read(wait_for(due, time.monotonic(), IDLE_WAKE))
                    if not data and port.made_room and due > time.monotonic():
                        # The wake only let queued bytes out: a pty takes about 12 KiB at a
                        # time, so a 64 KiB write wakes its writer four or five times.  Nothing
                        # reached the core and nothing is due, so there is no step to take.
                        continue
                if inside >= BIG_FRAME and port.reads_first:
                    data = port.read_rest(data)
                now = time.monotonic()
                port.pump(now)  # what has arrived at the peer goes out first: it is due
                core = self.core
                if self.events is not None:
                    self.events.hold()
                if data:
                    if self.watchdog is not None:
                        self.watchdog.bytes += len(data)
                    ended = core.receive(data, now)
                    inside = inside + len(data) if ended == 0 else 0
                    if ended == 0 and (deadline is None or deadline > now):
                        # The bytes only continued a frame: nothing the core sends, does or
                        # waits for has changed, so the step ends here.  A pty hands over 4 to
                        # 6 KiB a read, so this is ten of eleven reads of a 64 KiB write.
                        if self.events is not None:
                            self.events.release()
                        if self.watchdog is not None:
                            self.watchdog.check(core, now)
                        continue
                stepped = now
                deadline = core.next_deadline()
                if deadline is not None and deadline <= now:
                    core.tick(now)
                self._flush(now)
                core.idle()  # work nothing waits for, once the bytes are out
                self._flush(now)  # what that work had to say (a failure found in it)
                if self.events is not None:
                    self.events.release()
                self._act()
                notes = getattr(port, "notes", None)  # stand-in ports in tests have none
                if self.events is not None and notes is not None:
                    for kind, fields in notes():
                        self.events(kind, **fields)
                deadline = self.core.next_deadline()  # after the tick, the idle work and a reboot
                if self.watchdog is not None:
                    self.watchdog.check(core, now)
                self._check_events()
                if self.check is not None:
                    self.check()
        except Stop:
            self._flush()  # the last answers still go out; after a power cut nothing does
            port.flush()
            raise
        finally:
            if wake is not None:
                wake.close()
                port.wake = None
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            for s, handler in asked.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
            if self.events is not None:
                self.events.release()  # a power cut loses the step's bytes, never its events

    def start(self) -> None:
        """Send what the core has to say at boot (a primary's first ping) and carry out what it
        asked for (e.g. a device that halts at once)."""
        self._flush()
        self._act()
        self._check_events()
        if self.check is not None:
            self.check()

    def _check_events(self) -> None:
        """A side whose event lines cannot be written ends: it would go on unwatched, and a
        reader that went away has stopped watching (as a closed pipe ends any program)."""
        if self.events is not None and self.events.outlet.code is not None:
            raise Stop(self.events.outlet.code, "the event lines cannot be written")

    def _act(self) -> None:
        while self.core.actions:
            action = self.core.actions.pop(0)
            self._flush()
            replaced = self.on_action(action, self.port)
            if replaced is not None:
                self.core = replaced
                self._flush()

    def _flush(self, now: float | None = None) -> None:
        out = self.core.data_to_send()
        if out:
            self.port.write(out, now)


class Silence:
    """Says once, with counts and the likely cause, when a side hears nothing it can use.

    After ``after`` seconds with no byte at all, or with bytes but no valid frame, it emits one
    ``no_peer`` event, as esptool says "No serial data received": a user on real hardware
    learns to check the wiring, the baud rate or the framing instead of waiting.
    """

    def __init__(self, emit: Callable[..., None], framing: str, baud: int, after: float = 5.0):
        self.emit = emit
        self.framing = framing
        self.baud = baud
        self.after = after
        self.started = time.monotonic()
        self.bytes = 0
        self.said = False

    def check(self, core: Core, now: float) -> None:
        if self.said or now - self.started < self.after:
            return
        ep = getattr(core, "ep", None)
        frames = ep.decoder_stats.get("frames", 0) if ep is not None else 0
        if frames:
            self.said = True  # a peer speaks our framing: nothing to say
            return
        self.said = True
        if self.bytes == 0:
            self.emit(Event.NO_PEER, seconds=round(now - self.started, 1), bytes=0,
                      hint=f"no bytes at all in {self.after:.0f} s: is the peer powered and running, "
                           "are TX and RX crossed (TX to RX), is it the right port?")
        else:
            drops = {k: v for k, v in ep.decoder_stats.items() if k != "frames" and v} if ep is not None else {}
            self.emit(Event.NO_PEER, seconds=round(now - self.started, 1), bytes=self.bytes, dropped=drops,
                      hint=f"{self.bytes} bytes but no valid {self.framing} frame: check --framing "
                           f"(cobs or blynk) and --baud ({self.baud})")


class Stop(Exception):
    """End a side: its exit code, the reason its exit event gives, and for a verdict the
    line a person reads (``OK: text`` or ``FAILED: text``)."""

    def __init__(self, code: int, reason: str, text: str | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.text = text
