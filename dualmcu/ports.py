"""Ports as a side uses them: open one from a path or pyserial URL, wait for its bytes or a
deadline, write without waiting, pace what it sends and keep its counters (:class:`Port`).

A real port and a pty have a file descriptor and a socket:// URL a socket: both are waited on
with select(), so a byte is handed to the core the moment it arrives and nothing polls.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import signal
import socket
import stat
import struct
import time
import urllib.parse
from dataclasses import dataclass

import serial

from dualmcu.rpc.events import Event

from .link import End, LinkConfig, misread, new_stats, rates_agree

OPEN_TIMEOUT = 0.5  # pyserial's read timeout until a wait sets its own
FALLBACK_POLL = 0.002  # read timeout for URL handlers without a file descriptor
try:  # tcdrain and tcflush raise termios.error, which is no OSError
    import termios
    from termios import error as TERMIOS_ERROR
except ImportError:  # not a POSIX system
    TERMIOS_ERROR = OSError
READ_AHEAD = 1 << 18  # bytes read in one go before the core sees them (see Port.read_rest)
MAX_QUEUE = 1 << 20  # bytes queued for a peer that does not read, before the oldest are dropped


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
        port.timeout = OPEN_TIMEOUT
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
