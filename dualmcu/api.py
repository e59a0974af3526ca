"""The Python API: update your firmware through an emulated NCP from a test, in a few lines.

    from dualmcu import Ncp, make_image

    new = make_image("1.1.0", "TMPL0MYPRODUCT", path="new.bin")
    with Ncp("exec:./build/app --port {pty} --flash app.flash", firmware=new) as ncp:
        outcome = ncp.outcome(timeout=60)
    assert outcome.ok and outcome.version == "1.1.0", outcome

Each side runs as its own process (``dualmcu ncp``, ``dualmcu primary``, ``dualmcu link``) in
real time, as foreign firmware needs; its JSON events are read as they come (:meth:`Side.wait_for`),
and :class:`Outcome` is how an update ended, typed.  Where both sides are emulated,
:func:`simulate` runs a whole update on the virtual clock instead, in milliseconds.  Every
object here is a context manager: leaving it ends its processes and removes its temporary files.

The names exported from :mod:`dualmcu` (``from dualmcu import Ncp``) are this module's
``__all__``: a promise kept across releases; everything else is internal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from dualmcu.ncp.core import Misbehave
from dualmcu.rpc.events import Event as Ev

__all__ = ["Ncp", "Primary", "Link", "Outcome", "Misbehave", "SideError", "make_image", "make_package",
           "flash_state", "simulate"]

Event = dict  # one JSON event line of a side: {"side", "event", "t", fields...}


class SideError(RuntimeError):
    """A side did not do what was waited for in time, or could not start; its message ends
    with the side's last events, and the firmware's last output where there is one."""


@dataclass(frozen=True)
class Outcome:
    """How an update ended, as the side that ran it judged it.

    ``verdict`` is the word the side ended on (for the NCP: ``confirmed``, ``reported``,
    ``up_to_date``, ``rollback``, ``unconfirmed``, ``refused``, ``finish_failed``, ...,
    docs/device.md; ``timeout`` and ``terminated`` when it had none); ``exit_code`` its process's
    (docs/cli.md).  The facts come from the side's events."""

    verdict: str
    exit_code: int
    version: str | None = None  # the version the primary runs at the end, as last reported
    offered: str | None = None  # the version offered
    reason: str | None = None  # the primary's reason (its telemetry's ota_reason), if it gave one
    retries: int = 0  # calls of the update sent again (writes, Finish)
    bytes_sent: int = 0  # bytes of the update acknowledged
    offers: int = 0
    misbehaved: tuple[str, ...] = ()  # the lies the test cloud told (Misbehave)
    firmware_starts: int = 0  # starts of an exec: target: 1, plus one per reboot or power cut
    seconds: float = 0.0  # from the side's port opening to its last event, on its clock
    events: tuple[Event, ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the side ended with 0: the update worked (confirmed, reported, up to date)."""
        return self.exit_code == 0

    def properties(self) -> dict[str, Any]:
        """The facts as flat name/value pairs (a JUnit report's properties)."""
        return {f.name: (",".join(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self) if f.name != "events"}


def _outcome(events: list[Event], code: int, side: str = "ncp") -> Outcome:
    events = [e for e in events if e.get("side", side) == side]  # the side that judged it
    kinds = lambda *k: [e for e in events if e.get("event") in k]  # noqa: E731
    end = kinds(Ev.EXIT)
    verdict = end[-1].get("reason", "") if end else ("terminated" if code in (130, 143) else "none")
    # The version the primary runs: the latest it said, in its firmware report or its telemetry.
    said = [e for e in kinds(Ev.PRIMARY_FIRMWARE, Ev.TELEMETRY) if e.get("version")]
    told = [e["ota_reason"] for e in kinds(Ev.TELEMETRY) if e.get("ota_reason")]
    offers, progress = kinds(Ev.OTA_OFFER), kinds(Ev.OTA_PROGRESS)
    exec_port = any("firmware_log" in e for e in kinds(Ev.PORT_OPEN))
    times = [e["t"] for e in events if isinstance(e.get("t"), (int, float))]
    return Outcome(
        verdict=verdict, exit_code=code, version=said[-1]["version"] if said else None,
        offered=offers[-1].get("version") if offers else None, reason=told[-1] if told else None,
        retries=len(kinds(Ev.OTA_RETRY)), bytes_sent=progress[-1].get("offset", 0) if progress else 0,
        offers=len(offers), misbehaved=tuple(dict.fromkeys(e.get("what", "") for e in kinds(Ev.MISBEHAVED))),
        firmware_starts=1 + len(kinds(Ev.TARGET_STARTED)) if exec_port else 0,
        seconds=round(max(times) - min(times), 6) if times else 0.0, events=tuple(events))


class Side:
    """One emulated side as a process, its events read as they come."""

    command = ""

    def __init__(self, args: Sequence[str], on_outcome: Callable[[Outcome], None] | None = None):
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._done = False
        self._outcome: Outcome | None = None
        self._on_outcome = on_outcome
        self.argv = [sys.executable, "-m", "dualmcu", self.command, "--json", *map(str, args)]
        self.stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.stderr,
                                         stdin=subprocess.DEVNULL, text=True)
        except OSError as e:
            raise SideError(f"cannot start dualmcu {self.command}: {e}") from None
        self._reader = threading.Thread(target=self._read, name=f"dualmcu-{self.command}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        self.proc.wait()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    # -- waiting -------------------------------------------------------------------------------

    def wait_for(self, event: str, timeout: float = 30.0, where: Callable[[Event], bool] | None = None,
                 **match: Any) -> Event:
        """The first event of this kind the side has said with these field values (and for
        which ``where`` holds), waiting up to ``timeout`` seconds for it:
        ``ncp.wait_for("ota_progress", where=lambda e: e["offset"] >= 16384)``."""
        def found() -> Event | None:
            return next((e for e in self.events if e.get("event") == event
                         and all(e.get(k) == v for k, v in match.items()) and (where is None or where(e))), None)

        end = time.monotonic() + timeout
        with self._cond:
            while (hit := found()) is None:
                left = end - time.monotonic()
                if left <= 0 or self._done:
                    wanted = " ".join([event, *(f"{k}={v}" for k, v in match.items())])
                    why = "it ended" if self._done else f"nothing within {timeout:g} s"
                    raise SideError(f"dualmcu {self.command}: no {wanted}: {why}\n{self.report()}")
                self._cond.wait(left)
            return hit

    def outcome(self, timeout: float | None = None) -> Outcome:
        """How the side ended; waits for it (a side given --once ends on its verdict)."""
        if self._outcome is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise SideError(f"dualmcu {self.command}: no end within {timeout:g} s\n{self.report()}") from None
            self._reader.join(10)
            self._outcome = _outcome(list(self.events), self.proc.returncode, self.command)
            if self._on_outcome is not None:
                self._on_outcome(self._outcome)
        return self._outcome

    # -- what a test does to a running side -----------------------------------------------------

    def reboot(self) -> None:
        """Reboot this side now: its state is gone, its UART back at the initial rate."""
        self._signal(signal.SIGUSR1)

    def vanish(self, seconds: float) -> None:
        """Stop this side for ``seconds`` (it hears and says nothing), then let it go on."""
        self._signal(signal.SIGSTOP)
        timer = threading.Timer(seconds, self._signal, (signal.SIGCONT,))
        timer.daemon = True
        timer.start()

    def _signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    # -- what a failed test shows ---------------------------------------------------------------

    @property
    def firmware_log(self) -> str | None:
        """The output file of an exec: target on this side's port."""
        opened = next((e for e in self.events if e.get("event") == "port_open"), {})
        return opened.get("firmware_log")

    def firmware_output(self, lines: int = 60) -> str:
        path = self.firmware_log
        if not path:
            return ""
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 64 * 1024))
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    def report(self, lines: int = 25) -> str:
        """The side's last events, its errors, and an exec: target's last output."""
        out = [f"last events of dualmcu {self.command}:"]
        out += [json.dumps(e, separators=(",", ":")) for e in self.events[-lines:]
                if e.get("event") != "ota_progress"] or ["  (none)"]
        self.stderr.seek(0)
        err = self.stderr.read().decode("utf-8", "replace").strip()
        if err:
            out += ["its errors:", err[-4000:]]
        firmware = self.firmware_output()
        if firmware:
            out += [f"the firmware's output ({self.firmware_log}):", firmware]
        return "\n".join(out)

    # -- the end ----------------------------------------------------------------------------------

    def close(self) -> None:
        """End the side (SIGTERM, then SIGKILL after 10 s) and everything it started."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a vanished side must hear the SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        self.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _paths(firmware: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[str]:
    if firmware is None:
        return []
    if isinstance(firmware, (str, os.PathLike)):
        return [os.fspath(firmware)]
    return [os.fspath(f) for f in firmware]


def _misbehave_args(m: Misbehave | None) -> list[str]:
    from dualmcu.ncp.core import MISBEHAVIOURS

    args: list[str] = []
    for key, (name, kind, _) in MISBEHAVIOURS.items():
        value = getattr(m, name) if m is not None else None
        if kind is bool and value:
            args += ["--misbehave", key]
        elif kind is not bool and value not in (None, 0):
            args += ["--misbehave", f"{key}={value}"]
    return args


class Ncp(Side):
    """The emulated NCP, standing in for the cloud, on a port: a device path, a pyserial URL, or
    ``exec:COMMAND`` with ``{pty}`` (the firmware under test, started on a fresh pty).

    By default it ends on the update's final verdict (``once``), within ``timeout`` seconds.
    ``misbehave`` makes the cloud lie on purpose; ``args`` passes any other option of
    ``dualmcu ncp`` (docs/cli.md)."""

    command = "ncp"

    def __init__(self, port: str, firmware: str | os.PathLike | Iterable[str | os.PathLike] | None = None, *,
                 framing: str = "blynk", baud: int = 38400, once: bool = True, timeout: float | None = 120.0,
                 confirm_window: float | None = None, misbehave: Misbehave | None = None, retries: int | None = None,
                 firmware_log: str | os.PathLike | None = None, args: Sequence[str] = (),
                 on_outcome: Callable[[Outcome], None] | None = None):
        # The NCP's store and an exec: target's log: in a directory of its own, removed at
        # close() (a firmware_log given elsewhere stays).
        self.workdir = tempfile.mkdtemp(prefix="dualmcu-ncp-")
        log = os.fspath(firmware_log) if firmware_log is not None else os.path.join(self.workdir, "firmware.log")
        argv = ["-p", port, "--framing", framing, "-b", str(baud), "--store", os.path.join(self.workdir, "store"),
                "--firmware-log", log]
        for path in _paths(firmware):
            argv += ["--firmware", path]
        if once:
            argv += ["--once"] + (["--timeout", str(timeout)] if timeout is not None else [])
        if confirm_window is not None:
            argv += ["--confirm-window", str(confirm_window)]
        if retries is not None:
            argv += ["--retries", str(retries)]
        super().__init__([*argv, *_misbehave_args(misbehave), *args], on_outcome)

    def power_cycle(self) -> None:
        """Cut the power of the exec: target on this NCP's port: it starts again at once."""
        self._signal(signal.SIGUSR2)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Primary(Side):
    """The emulated primary MCU on a port, booting from its flash file (a blank one is given
    ``provision``, a tagged factory image): for testing an NCP's firmware, or a cloud."""

    command = "primary"

    def __init__(self, port: str, flash: str | os.PathLike, provision: str | os.PathLike | None = None, *,
                 framing: str = "blynk", baud: int = 38400, once: bool = True, timeout: float | None = 120.0,
                 args: Sequence[str] = (), on_outcome: Callable[[Outcome], None] | None = None):
        argv = ["-p", port, "--framing", framing, "-b", str(baud), "--flash", os.fspath(flash)]
        if provision is not None:
            argv += ["--provision", os.fspath(provision)]
        if once:
            argv += ["--once"] + (["--timeout", str(timeout)] if timeout is not None else [])
        super().__init__([*argv, *args], on_outcome)
        self.flash = os.fspath(flash)

    def flash_state(self) -> dict:
        return flash_state(self.flash)


class Link(Side):
    """``dualmcu link``: two new ptys (``a`` and ``b``) joined by the simulated UART, paced at
    ``baud`` with the faults asked for (``args``: --drop 1e-4, --seed 3, ...)."""

    command = "link"

    def __init__(self, baud: int = 38400, pace: bool = True, args: Sequence[str] = ()):
        super().__init__(["-b", str(baud), "--pace" if pace else "--no-pace", *args])
        first = self.wait_for("link", timeout=30)
        self.a: str = first["a"]
        self.b: str = first["b"]

    def stats(self) -> dict:
        """What crossed and what was injected, at the end (close() first) or so far."""
        said = [e for e in self.events if e.get("event") in ("stats", "summary")]
        return {k: v for k, v in said[-1].items() if k not in ("event", "seconds")} if said else {}


def make_image(version: str, fw_type: str, path: str | os.PathLike | None = None, size: int = 64 * 1024,
               build: str = "Jan  1 2026 00:00:00", **tag: str) -> Path:
    """A tagged test image (its firmware tag says ``version`` and ``fw_type``; ``tag`` adds keys,
    e.g. ``**{"dualmcu-test": "fail-health"}``), written to ``path`` or a new temporary file."""
    from dualmcu.image.firmware import build_image, make_info

    data = build_image(make_info(version, fw_type, build=build, **tag), size)
    return _written(data, path, f"image-{version}-")


def make_package(new: str | os.PathLike, base: str | os.PathLike | None = None,
                 path: str | os.PathLike | None = None, compression: str = "heatshrink") -> Path:
    """An update package of the image ``new``: a delta against ``base``, or compressed."""
    from dualmcu.image.package import build_package

    data = build_package(Path(new).read_bytes(), Path(base).read_bytes() if base else None, compression)
    return _written(data, path, "package-")


def _written(data: bytes, path: str | os.PathLike | None, prefix: str) -> Path:
    if path is None:
        fd, name = tempfile.mkstemp(prefix=f"dualmcu-{prefix}", suffix=".bin")
        os.close(fd)
        path = name
    Path(path).write_bytes(data)
    return Path(path)


def flash_state(path: str | os.PathLike) -> dict:
    """An emulated primary's flash: the boot state and each slot's image (``dualmcu flash show``)."""
    from dualmcu.primary.inspect import describe

    return describe(os.fspath(path))


def simulate(new: bytes, factory: bytes, *, framing: str = "cobs", misbehave: Misbehave | None = None,
             baud: int | None = None, seed: int = 0, limit: float = 600.0) -> Outcome:
    """A whole update between the two emulated cores on the virtual clock: no process, no pty,
    a 60-second timeout in microseconds.  ``baud`` paces the link (None: unpaced)."""
    from dualmcu.link import LinkConfig
    from dualmcu.ncp.core import NcpConfig
    from dualmcu.ncp.update import Shipment
    from dualmcu.primary.boot import Bootloader
    from dualmcu.primary.flash import Flash, Geometry
    from dualmcu.sim import Simulation

    slot = max(64 * 1024, -(-max(len(new), len(factory)) // 4096) * 4096 + 4096)
    flash = Flash.in_memory(Geometry(4096, slot))
    Bootloader(flash).provision(factory)
    sim = Simulation(flash, Shipment.from_bytes(new, "firmware.bin"), framing=framing,
                     ncp_config=NcpConfig(once=True, misbehave=misbehave or Misbehave()),
                     link=LinkConfig(baud=baud, latency=0.0005, seed=seed))
    sim.run_until(lambda s: s.ncp_exit is not None, limit)
    events = [{"side": side, "event": str(kind), **f} for side, kind, f in sim.events]
    from dualmcu.sides import ncp_exit

    verdict = sim.ncp_exit or "timeout"
    return _outcome(events + [{"side": "ncp", "event": "exit", "reason": verdict}],
                    int(ncp_exit(verdict)) if sim.ncp_exit else 4)
