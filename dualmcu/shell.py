"""The I/O shell around a core: a serial port (or pyserial URL) and the monotonic clock.

The shell owns the only loop: read what the port has, hand it to the core with the time, let
the core's deadlines pass, write what the core wants sent, carry out its actions.  pyserial's
``inter_byte_timeout`` does not work on Linux, so the shell never relies on it: reads return as
soon as bytes are there and all timing is the core's, against ``time.monotonic()``.
"""

from __future__ import annotations

import json
import select
import signal
import sys
import time
from typing import Any, Callable, Protocol

import serial

POLL = 0.01  # longest wait for a byte; deadlines are honoured to within this


class Core(Protocol):
    actions: list

    def receive(self, data: bytes, now: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def next_deadline(self) -> float | None: ...
    def data_to_send(self) -> bytes: ...


class PortError(Exception):
    """A port that cannot be opened or used, said in words a user can act on."""


def open_port(url: str, baud: int) -> serial.SerialBase:
    try:
        port = serial.serial_for_url(url, baudrate=baud, timeout=POLL, write_timeout=10, do_not_open=True)
        if hasattr(port, "exclusive") and "://" not in url:
            port.exclusive = True  # two emulators on one port would garble each other
        port.open()
        return port
    except serial.SerialException as e:
        text = str(e)
        if "No such file" in text or "could not open port" in text and "Errno 2" in text:
            raise PortError(f"no port at {url}: check the path (dualmcu ports lists them)") from None
        if "lock" in text.lower() or "busy" in text.lower() or "Errno 16" in text:
            raise PortError(f"{url} is in use by another program") from None
        if "Permission denied" in text or "Errno 13" in text:
            raise PortError(f"no permission to open {url}: join the dialout group or run with access") from None
        if "Connection refused" in text or "Errno 111" in text:
            raise PortError(f"nothing is listening at {url}") from None
        raise PortError(f"cannot open {url}: {text}") from None
    except ValueError as e:
        raise PortError(f"cannot open {url}: {e}") from None


class EventPrinter:
    """Events as JSON lines on stdout, or as readable lines on stderr."""

    QUIET = {"ota_progress", "rpc_frame_dropped", "rpc_timeout", "rpc_stale_result"}

    def __init__(self, side: str, as_json: bool, verbose: bool = False, out=None):
        self.side = side
        self.as_json = as_json
        self.verbose = verbose
        self.out = out
        self.watchers: list[Callable[[str, dict], None]] = []

    def __call__(self, kind: str, **fields: Any) -> None:
        for w in self.watchers:
            w(kind, fields)
        if self.as_json:
            rec = {"side": self.side, "event": kind}
            rec.update({k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()})
            print(json.dumps(rec, separators=(",", ":")), file=self.out or sys.stdout, flush=True)
            return
        if kind in self.QUIET and not self.verbose:
            return
        t = fields.pop("t", None)
        detail = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = f"{t:9.3f}" if isinstance(t, (int, float)) else " " * 9
        print(f"{self.side:<7} {stamp} {kind:<20} {detail}", file=self.out or sys.stderr, flush=True)


def read_available(port: serial.SerialBase) -> bytes:
    """What the port has now, waiting at most POLL for the first byte."""
    sock = getattr(port, "_socket", None)
    try:
        if sock is not None:
            # pyserial's socket:// reports at most one byte waiting and reads byte by byte;
            # take whole segments from the socket instead.
            ready, _, _ = select.select([sock], [], [], POLL)
            if not ready:
                return b""
            data = sock.recv(65536)
            if not data:
                raise PortError("the other side closed the connection")
            return data
        data = port.read(1)
        if data and port.in_waiting:
            data += port.read(port.in_waiting)
        return data
    except (serial.SerialException, OSError) as e:
        raise PortError(f"the port failed: {e}") from None


class Runner:
    """Drive a core over a port until told to stop.

    ``on_action(kind, arg, port)`` handles what the core asks for; it returns a new core (after
    a reboot), None to go on, or raises :class:`Stop` to end the loop.
    """

    def __init__(self, port: serial.SerialBase, core: Core,
                 on_action: Callable[[str, Any, serial.SerialBase], Core | None],
                 check: Callable[[], None] | None = None):
        self.port = port
        self.core = core
        self.on_action = on_action
        self.check = check  # runs after every step; raises Stop to end the loop
        self._stopping = False

    def stop(self, *_: Any) -> None:
        self._stopping = True

    def run(self) -> None:
        port = self.port
        signal.signal(signal.SIGTERM, self.stop)
        try:
            while not self._stopping:
                data = read_available(port)
                now = time.monotonic()
                core = self.core
                if data:
                    core.receive(data, now)
                deadline = core.next_deadline()
                if deadline is not None and deadline <= now:
                    core.tick(now)
                self._flush()
                while core.actions:
                    kind, arg = core.actions.pop(0)
                    self._flush()
                    replaced = self.on_action(kind, arg, port)
                    if replaced is not None:
                        self.core = core = replaced
                        self._flush()
                if self.check is not None:
                    self.check()
        except Stop:
            self._flush()  # the last answers still go out; after a power cut nothing does
            raise

    def _flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            try:
                self.port.write(out)
            except serial.SerialTimeoutException:
                raise PortError("the port stopped taking data (is the other side reading?)") from None


class Stop(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason
