"""A relay between two ports that carries the link model (``dualmcu link``).

Each side opens an ordinary port: a pty slave path (``/dev/pts/N``), a pyserial URL
(``socket://127.0.0.1:PORT``), or, with :meth:`Relay.between`, the relay itself opens two
existing ports (a real device on ``/dev/ttyUSB0`` and an emulator on a pty, say).  Bytes go
through a :class:`~dualmcu.link.Link` on the monotonic clock, so the same pacing, latency,
buffer and seeded faults as in the tests apply between real processes and real hardware.

The relay keeps each pty's slave open itself, so a side that closes its port (a killed and
restarted process) does not hang the pty up; bytes sent meanwhile wait for it (up to 1 MiB,
then the oldest are lost).  It also reads each pty's rate, as the process on it set it with
termios: when the two ends' rates disagree, bytes arrive as a UART at the other rate hears them
(:func:`~dualmcu.link.misread`, counted as ``misheard``), so a side that forgets a baud switch
fails here as on the bench; when they agree, a paced link paces at their rate.  A slow reader is waited for: losing bytes to a full receive
buffer is the link model's business (``rx_buffer``), not the relay's.  With sockets, a side that reconnects
replaces its old connection.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
import tty

from .link import Link, LinkConfig, misread, rates_agree
from .shell import wait_for
from .target import tty_rate

SIDES = ("a", "b")
MAX_BACKLOG = 1 << 20  # bytes waiting for a side that does not read before the oldest are lost


class Relay:
    def __init__(self, kind: str = "pty", link: LinkConfig | None = None,
                 disconnects: list[tuple[str, float, float]] | None = None):
        if kind not in ("pty", "socket", "ports"):
            raise ValueError("link must be pty or socket")
        self.kind = kind
        self.link = Link(link or LinkConfig())
        self.disconnects = sorted(disconnects or [], key=lambda d: d[1])  # (side, at, seconds)
        self.counts = {"a_to_b": 0, "b_to_a": 0, "lost": 0, "misheard": 0}
        self._ttys: dict[str, int] = {}  # a pty side's slave, whose termios says its rate
        # select() waits to the microsecond; epoll and poll round a timeout up to the next
        # millisecond, which added 2-3 ms to every paced round trip (a 12.4 ms frame was held
        # 14 ms).  The relay watches at most four descriptors, all low-numbered.
        self._sel = selectors.SelectSelector()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: dict[str, int | None] = {"a": None, "b": None}
        self._backlog: dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}
        self._keep: list[int] = []
        self._listeners: dict[str, socket.socket] = {}
        self.paths: dict[str, str] = {}
        self.started = 0.0
        if kind == "ports":
            return
        for side in SIDES:
            if kind == "pty":
                master, slave = os.openpty()
                # Raw at once: a cooked pty echoes input back to the sender until a side
                # opens it and sets raw mode itself.
                tty.setraw(slave)
                tty.setraw(master)
                self._attach(side, master)
                self._keep.append(slave)
                self._ttys[side] = slave
                self.paths[side] = os.ttyname(slave)
            else:
                srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                srv.bind(("127.0.0.1", 0))
                srv.listen(1)
                srv.setblocking(False)
                self._listeners[side] = srv
                self.paths[side] = f"socket://127.0.0.1:{srv.getsockname()[1]}"
                self._sel.register(srv, selectors.EVENT_READ, ("listen", side))

    @classmethod
    def between(cls, port_a, port_b, link: LinkConfig | None = None,
                disconnects: list[tuple[str, float, float]] | None = None) -> Relay:
        """A relay between two ports already opened with pyserial; None makes a pty there."""
        r = cls("ports", link, disconnects)
        for side, port in zip(SIDES, (port_a, port_b)):
            if port is None:
                master, slave = os.openpty()
                tty.setraw(slave)
                tty.setraw(master)
                r._attach(side, master)
                r._keep += [slave, master]
                r.paths[side] = os.ttyname(slave)
                continue
            sock = getattr(port, "_socket", None)
            try:
                fd = sock.fileno() if sock is not None else port.fileno()
            except (AttributeError, OSError):
                raise ValueError(f"{port.portstr} has no file descriptor to relay (rfc2217 is not supported here)") from None
            r._attach(side, fd)
            r.paths[side] = port.portstr
        return r

    def _attach(self, side: str, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fds[side] = fd
        self._backlog[side].clear()
        self._sel.register(fd, selectors.EVENT_READ, side)

    def start(self) -> Relay:
        """Relay in a thread of this process (``dualmcu link`` runs nothing else)."""
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="relay", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        # Ports opened by the caller are the caller's to close; what the relay made, it closes.
        mine = list(self._keep)
        if self.kind != "ports":
            mine += [fd for fd in self._fds.values() if fd is not None]
        for fd in set(mine):
            try:
                os.close(fd)
            except OSError:
                pass
        for srv in self._listeners.values():
            srv.close()
        self._sel.close()

    def __enter__(self) -> Relay:
        return self if self.started else self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        return {**self.counts, **self.link.stats}

    # -- the loop --------------------------------------------------------------------------------

    def _accept(self, side: str) -> None:
        conn, _ = self._listeners[side].accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        old = self._fds[side]
        if old is not None:
            self._sel.unregister(old)
            os.close(old)
        self._attach(side, conn.detach())

    def _drop(self, side: str) -> None:
        fd = self._fds[side]
        if fd is not None and self.kind == "socket":
            self._sel.unregister(fd)
            os.close(fd)
            self._fds[side] = None

    def _loop(self) -> None:
        link = self.link
        while not self._stop.is_set():
            now = time.monotonic()
            while self.disconnects and self.started + self.disconnects[0][1] <= now:
                side, _, seconds = self.disconnects.pop(0)
                link.disconnect(side, now, seconds)
            wait = wait_for(link.next_deadline(), now, 0.05)
            if self.disconnects:
                wait = min(wait, max(0.0, self.started + self.disconnects[0][1] - now))
            for key, mask in self._sel.select(timeout=wait):
                tag = key.data
                if isinstance(tag, tuple):
                    self._accept(tag[1])
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._flush(tag)
                if not mask & selectors.EVENT_READ:
                    continue
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(tag)
                    continue
                self.counts["a_to_b" if tag == "a" else "b_to_a"] += len(data)
                link.send(tag, self._heard(tag, data), time.monotonic())
            now = time.monotonic()
            for side in SIDES:
                out = link.receive(side, now)
                if out:
                    self._deliver(side, out)

    def _heard(self, sender: str, data: bytes) -> bytes:
        """``data`` as the other side's UART takes it, each end at the rate it set."""
        if len(self._ttys) < 2:
            return data
        sent_at, read_at = (tty_rate(self._ttys[s]) for s in (sender, "b" if sender == "a" else "a"))
        if sent_at is None or read_at is None:
            return data
        if not rates_agree(sent_at, read_at):
            self.counts["misheard"] += len(data)
            return misread(data, sent_at, read_at)
        if self.link.cfg.baud is not None and self.link.cfg.baud != sent_at:
            self.link.set_baud(sent_at, time.monotonic())  # both ends switched: pace at it
        return data

    def _deliver(self, side: str, data: bytes) -> None:
        fd = self._fds[side]
        if fd is None:
            self.counts["lost"] += len(data)
            return  # a socket side that is not connected loses what is sent, like a cut wire
        backlog = self._backlog[side]
        backlog += data
        if len(backlog) > MAX_BACKLOG:
            # Nobody has read this side for a long while (a process being restarted): like a
            # UART whose receiver is gone, the oldest bytes are lost.
            excess = len(backlog) - MAX_BACKLOG
            del backlog[:excess]
            self.counts["lost"] += excess
        self._flush(side)

    def _flush(self, side: str) -> None:
        """Write what waits for ``side``; a slow reader is waited for, not dropped."""
        fd, backlog = self._fds[side], self._backlog[side]
        if fd is None:
            return
        try:
            while backlog:
                n = os.write(fd, backlog)
                del backlog[:n]
        except BlockingIOError:
            pass
        except OSError:
            backlog.clear()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if backlog else 0)
        try:
            if self._sel.get_key(fd).events != events:
                self._sel.modify(fd, events, side)
        except (KeyError, ValueError):
            pass
