"""The virtual UART between two processes: a relay between two ptys, or two loopback sockets.

Each side opens an ordinary port: a pty slave path (``/dev/pts/N``) or a pyserial URL
(``socket://127.0.0.1:PORT``).  The relay in the middle copies bytes both ways and counts them.
Putting a relay in the middle, rather than handing each side one end of a single pty, is what
lets the link be observed, paced and damaged on its way.

The relay keeps each pty's slave open itself, so a side that closes its port (a killed and
restarted process) does not hang the pty up; bytes sent meanwhile wait in the pty, as they
would in a UART's FIFO.  With sockets, a side that reconnects replaces its old connection.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import tty


class Relay:
    def __init__(self, kind: str = "pty"):
        if kind not in ("pty", "socket"):
            raise ValueError("link must be pty or socket")
        self.kind = kind
        self.counts = {"a_to_b": 0, "b_to_a": 0}
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: dict[str, int | None] = {"a": None, "b": None}
        self._keep: list[int] = []
        self._listeners: dict[str, socket.socket] = {}
        self.paths: dict[str, str] = {}
        for side in ("a", "b"):
            if kind == "pty":
                master, slave = os.openpty()
                # Raw at once: a cooked pty echoes input back to the sender until a side
                # opens it and sets raw mode itself.
                tty.setraw(slave)
                tty.setraw(master)
                os.set_blocking(master, False)
                self._fds[side] = master
                self._keep.append(slave)
                self.paths[side] = os.ttyname(slave)
                self._sel.register(master, selectors.EVENT_READ, side)
            else:
                srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                srv.bind(("127.0.0.1", 0))
                srv.listen(1)
                srv.setblocking(False)
                self._listeners[side] = srv
                self.paths[side] = f"socket://127.0.0.1:{srv.getsockname()[1]}"
                self._sel.register(srv, selectors.EVENT_READ, ("listen", side))

    def start(self) -> Relay:
        self._thread = threading.Thread(target=self._loop, name="relay", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for fd in list(self._keep) + [fd for fd in self._fds.values() if fd is not None]:
            try:
                os.close(fd)
            except OSError:
                pass
        for srv in self._listeners.values():
            srv.close()
        self._sel.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self, side: str) -> None:
        conn, _ = self._listeners[side].accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        old = self._fds[side]
        if old is not None:
            self._sel.unregister(old)
            os.close(old)
        fd = conn.detach()
        self._fds[side] = fd
        self._sel.register(fd, selectors.EVENT_READ, side)

    def _drop(self, side: str) -> None:
        fd = self._fds[side]
        if fd is not None and self.kind == "socket":
            self._sel.unregister(fd)
            os.close(fd)
            self._fds[side] = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                tag = key.data
                if isinstance(tag, tuple):
                    self._accept(tag[1])
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
                other = "b" if tag == "a" else "a"
                self.counts["a_to_b" if tag == "a" else "b_to_a"] += len(data)
                self._deliver(other, data)

    def _deliver(self, side: str, data: bytes) -> None:
        fd = self._fds[side]
        if fd is None:
            self.counts["lost"] = self.counts.get("lost", 0) + len(data)
            return  # a socket side that is not connected loses what is sent, like a cut wire
        view = memoryview(data)
        waited = False
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                if waited:
                    # Nobody reads this side (a process being restarted): its buffer is full
                    # and, as in a UART whose receiver is gone, the rest is lost.
                    self.counts["lost"] = self.counts.get("lost", 0) + len(view)
                    return
                waited = True
                with selectors.DefaultSelector() as sel:
                    sel.register(fd, selectors.EVENT_WRITE)
                    sel.select(timeout=0.2)
            except OSError:
                return
