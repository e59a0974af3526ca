"""``exec:`` targets: the firmware under test, started on a fresh pty.

``-p 'exec:./build/app --port {pty}'`` makes a pty pair, starts the command with ``{pty}`` the
path of its far end, and gives the side the near end as its port.  What the firmware prints
goes to a log file.  When the process ends it is started again on the same pty: a firmware
reboots by ending (a native build) or, under QEMU, when the emulator exits on its reset
request.  :meth:`ExecTarget.power_cycle` kills it for a power cut.  A process that ends at
once, again and again, is not rebooting: after ``CRASH_LOOP`` such starts the target gives up
and says why.

The pty keeps each end's baud rate: the firmware sets its own with termios, as on a real
serial port, and :meth:`baud` reads it, so the side can deliver bytes as a UART at the other
rate would (:func:`dualmcu.link.misread`).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import termios
import threading
import time
import tty

PLACEHOLDER = "{pty}"
CRASH_LOOP = 5  # starts in a row that ended within QUICK seconds: the firmware cannot run
QUICK = 1.0


class TargetError(Exception):
    """The command cannot be run, or keeps ending at once."""


def parse_exec(url: str) -> list[str]:
    """The argv of ``exec:COMMAND`` with ``{pty}`` still in it; one line when it cannot be."""
    command = url.removeprefix("exec:").strip()
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise TargetError(f"{url!r}: {e}") from None
    if not argv:
        raise TargetError("exec: needs a command, e.g. exec:./build/app --port {pty}")
    if not any(PLACEHOLDER in a for a in argv):
        raise TargetError(f"{url!r} has no {PLACEHOLDER}: the firmware would not know which port is its UART")
    return argv


# termios speed constants and their rates, for reading the firmware's own choice back.
_SPEEDS = {getattr(termios, f"B{r}"): r for r in (
    300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600,
    1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000, 4000000) if hasattr(termios, f"B{r}")}


def tty_rate(fd: int) -> int | None:
    """The baud rate a tty is set to (by whichever process has it open), or None when termios
    names none of the standard rates or the descriptor is no tty."""
    try:
        return _SPEEDS.get(termios.tcgetattr(fd)[5])
    except (termios.error, OSError):
        return None


class ExecTarget:
    """One firmware process on a pty of its own, started again whenever it ends."""

    def __init__(self, url: str, log: str | None = None, env: dict[str, str] | None = None):
        self.argv = parse_exec(url)
        self.url = url
        self.env = env
        if log is None:
            fd, log = tempfile.mkstemp(prefix="dualmcu-firmware-", suffix=".log")
            os.close(fd)
        self.log_path = log
        self.master = self.slave = -1
        self.path = ""
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.exits: list[int] = []  # each ended process's exit code, in order
        self.failure: str | None = None
        self._quick = 0
        self._closing = False
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def start(self) -> ExecTarget:
        try:
            self._log = open(self.log_path, "ab")
        except OSError as e:
            raise TargetError(f"cannot write the firmware's log {self.log_path}: {e.strerror}") from None
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        # This process keeps the far end open too: the near end never hangs up while the
        # firmware reboots, and the firmware's own termios settings (its baud rate) can be read.
        self.path = os.ttyname(self.slave)
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="exec-target", daemon=True)
        self._watcher.start()
        return self

    def _spawn(self) -> None:
        argv = [a.replace(PLACEHOLDER, self.path) for a in self.argv]
        self._log.write(f"--- dualmcu: start {self.starts + 1}: {shlex.join(argv)}\n".encode())
        self._log.flush()
        try:
            # A session of its own: a power cut ends the whole group (a shell script, QEMU).
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=self.env)
        except OSError as e:
            raise TargetError(f"cannot run {argv[0]}: {e.strerror or e}") from None
        self.starts += 1
        self.started_at = time.monotonic()

    def _watch(self) -> None:
        while True:
            proc = self.proc
            code = proc.wait()
            with self._lock:
                if self._closing:
                    return
                self.exits.append(code)
                self._log.write(f"--- dualmcu: the firmware ended with code {code}\n".encode())
                self._quick = self._quick + 1 if time.monotonic() - self.started_at < QUICK else 0
                if self._quick >= CRASH_LOOP:
                    self.failure = (f"the firmware ({self.argv[0]}) ended at once {CRASH_LOOP} times, last with "
                                    f"code {code}: {self.last_line() or 'it printed nothing'} (log: {self.log_path})")
                    return
                try:
                    self._spawn()  # a reboot: it starts again on the same pty
                except TargetError as e:
                    self.failure = str(e)
                    return

    def last_line(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 4096))
                lines = [x for x in f.read().decode("utf-8", "replace").splitlines() if not x.startswith("--- dualmcu")]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def power_cycle(self) -> None:
        """Cut the power: the process is killed where it stands, then starts again."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()

    def baud(self) -> int | None:
        """The rate the firmware set on its end (None: one termios does not name)."""
        return tty_rate(self.slave)

    def close(self) -> None:
        with self._lock:
            self._closing = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)
            proc.wait()
        if self._watcher is not None:
            self._watcher.join(5)
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1
        if getattr(self, "_log", None) is not None:
            self._log.close()
