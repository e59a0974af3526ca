"""What a side says: its event lines (JSON on stdout, or readable lines on stderr), a progress
line redrawn in place, and the outlet that never lets a slow reader stall the side."""

from __future__ import annotations

import datetime
import json
import math
import os
import select
import shutil
import stat
import sys
import time
from typing import Any, Callable

from dualmcu.rpc.events import Event, checked

from .exits import ExitCode, say_error


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
