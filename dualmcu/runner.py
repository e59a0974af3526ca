"""``dualmcu run``: a whole update between two emulated processes joined by a virtual UART.

The parent process builds what is missing (a demo shipment, a factory image, a fresh flash),
makes the virtual UART, starts ``ncp`` and ``primary`` as two OS processes on its two ends,
reads their JSON events, shows progress, and decides: success only when the primary has booted
and confirmed the new version.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import socket
import tempfile
import time
import tty
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

from dualmcu.image.firmware import build_image, make_info
from dualmcu.ncp.core import NcpConfig
from dualmcu.ncp.outcome import FINAL, Outcome
from dualmcu.ncp.update import Catalog
from dualmcu.primary.device import PrimaryConfig
from dualmcu.primary.flash import FlashError, Geometry
from dualmcu.rpc.events import Event
from .child import send
from .link import INJECTED, LinkConfig
from .exits import ExitCode, say_error, stopped_code, stopped_word
from .ports import Tally, Wire
from .output import Outlet, Progress, detail, json_note, shown
from .sides import NcpOptions, PrimaryOptions, read_factory_image
DEMO_TYPE = "TMPL0DEMO01"
DEMO_SIZE = 300 * 1024


@dataclass
class RunOptions:
    """What ``dualmcu run`` does.  The sides' own settings are the sides' config objects,
    handed to each process whole (dualmcu/child.py); the run fills in what only it knows:
    the ports, the files of this run, the power cut of the first boot."""

    firmware: list[str] = field(default_factory=list)  # files or directories of one release
    factory: str | None = None  # the primary's factory image (default: built here)
    framing: str = "cobs"
    flash: str | None = None
    link: str = "pty"
    baud: int = 115200
    ncp: NcpConfig = field(default_factory=NcpConfig)
    primary: PrimaryConfig = field(default_factory=PrimaryConfig)
    geometry: Geometry = field(default_factory=Geometry)  # of a new flash file
    net_rate: float | None = None
    net_fail_at: int | None = None
    timeout: float = 300.0
    kill_primary_at: int | None = None
    kill_ncp_at: int | None = None
    power_cut_at: int | None = None
    power_cut_seed: int | None = None
    link_config: LinkConfig | None = None
    disconnects: list = field(default_factory=list)
    workdir: str | None = None
    keep: bool = False
    sign_key: str | None = None  # signs the factory image and the demo shipment
    target: str = "dualmcu/1"
    as_json: bool = False
    progress_interval: float = 0.0  # the sides' progress events at most this often (0: every one)


class VirtualUart:
    """The wire between the two sides: a pty pair, or a connected pair of loopback sockets.

    Each side's process gets one end as an inherited descriptor and paces what it sends
    itself (:class:`~dualmcu.link.End`): a round trip crosses the two sides' processes and
    nothing else.  A relay process in between, as ``dualmcu link`` has, cost four more hops,
    0.4-0.6 ms a round trip on a 2-core machine, more than a whole answer takes at 3 Mbaud.

    The parent keeps both ends open, so that a side's process can be killed and started again
    on the same end; what the other side sent meanwhile waits in the kernel's buffer (and past
    it in the sender's queue, up to 1 MiB)."""

    SIDES = ("a", "b")

    def __init__(self, kind: str):
        if kind == "pty":
            master, slave = os.openpty()
            # Raw at once: a cooked pty echoes and translates bytes.
            tty.setraw(master)
            tty.setraw(slave)
            path = os.ttyname(slave)
            self.fds = {"a": master, "b": slave}
            self.names = {"a": f"the master side of {path}", "b": path}
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            a = socket.create_connection(srv.getsockname())
            b, _ = srv.accept()
        for sock in (a, b):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.names = {"a": "socket://%s:%d" % a.getsockname(), "b": "socket://%s:%d" % b.getsockname()}
        self.fds = {"a": a.detach(), "b": b.detach()}

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            os.close(fd)


def link_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """The run's link counters from its two ends' tallies, in the relay's terms."""
    counts = {"a_to_b": a.get("sent", 0), "b_to_a": b.get("sent", 0), "lost": a.get("lost", 0) + b.get("lost", 0)}
    for key in Tally.KEYS[2:]:
        counts[key] = a.get(key, 0) + b.get(key, 0)
    return counts


RAW = "_line"  # a side's event line as the side printed it
EOF = "_eof"  # the reader's own mark: the side's output has ended
Verdict = tuple[int, str]  # the exit code and the reason the run ends with


def _event(side: str, raw: bytes) -> dict | None:
    line = raw.decode("utf-8", "replace").strip()
    if not line:
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        ev = None
    if isinstance(ev, dict):
        ev[RAW] = line  # printed as it came, not encoded again
        return ev
    return {"side": side, "event": "output", "text": line}


class Lines:
    """The sides' event lines, read in the run's own thread.

    select() waits for whichever side prints first, and one wake takes every whole line a
    side has printed.  Reader threads and a queue cost a thread switch per line: with an
    event every 64 KiB chunk (--json) that was CPU the two sides need (a 16 MiB run took
    1.47 s of CPU in all, 1.21 s with this loop).  Each side's lines keep their order; the
    two sides' lines interleave as they are read.  ``before_wait`` runs whenever the lines
    read so far are all taken."""

    def __init__(self, before_wait: Callable[[], None]):
        self.sources: dict[int, tuple[str, subprocess.Popen, bytearray]] = {}
        self.pending: deque[dict] = deque()
        self.before_wait = before_wait

    def add(self, side: str, proc: subprocess.Popen) -> None:
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        self.sources[fd] = (side, proc, bytearray())

    def get(self, timeout: float) -> dict | None:
        """The next event, or None when none came within ``timeout`` seconds.  A read that
        brought only part of a line goes on waiting for the rest."""
        end = time.monotonic() + timeout
        while not self.pending:
            self.before_wait()
            self._read(max(0.0, end - time.monotonic()))
            if time.monotonic() >= end:
                break
        return self.pending.popleft() if self.pending else None

    def _read(self, timeout: float) -> None:
        if not self.sources:
            time.sleep(max(0.0, timeout))
            return
        ready, _, _ = select.select(list(self.sources), [], [], max(0.0, timeout))
        for fd in ready:
            side, proc, buf = self.sources[fd]
            try:
                data = os.read(fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                continue
            if data:
                buf += data
                cut = buf.rfind(b"\n") + 1
                lines, buf[:cut] = bytes(buf[:cut]), b""
                self.pending.extend(ev for raw in lines.split(b"\n") if (ev := _event(side, raw)))
                continue
            # The side's output ended: its last line (if unfinished), then the end.
            if buf and (ev := _event(side, bytes(buf))):
                self.pending.append(ev)
            del self.sources[fd]
            proc.stdout.close()
            self.pending.append({"side": side, "event": EOF, "proc": proc})


class Run:
    def __init__(self, o: RunOptions):
        self.o = o
        self.lines = Lines(before_wait=self._flush_json)
        self.outlet: Outlet | None = None  # where --json lines go, made when the run starts
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, str] = {}  # each side's log: its event lines and its stderr
        self.log_files: dict[str, object] = {}  # where this process appends the event lines
        self.killed: set[subprocess.Popen] = set()
        self.progress = Progress(sys.stderr)
        self.state: dict = {"installed": None, "confirmed": None, "ncp_outcome": None, "retries": 0,
                            "offset": 0, "old_version": None, "primary_kills": 0, "ncp_kills": 0,
                            "power_cuts": 0, "rolled_back": False, "back_on": None,
                            "trial": None}  # the version on trial, unconfirmed
        self.spawned: dict[str, int] = {"ncp": 0, "primary": 0}
        self.peak_rss: dict[str, int] = {"ncp": 0, "primary": 0}  # KiB, most of any incarnation
        self._rss_at = 0.0
        self.handlers = self._handlers()

    # -- preparation -------------------------------------------------------------------------

    def prepare(self) -> None:
        o = self.o
        self.workdir = o.workdir or tempfile.mkdtemp(prefix="dualmcu-run-")
        os.makedirs(self.workdir, exist_ok=True)
        if not o.firmware:
            demo = os.path.join(self.workdir, "demo-1.1.0.bin")
            with open(demo, "wb") as f:
                f.write(self._signed(build_image(make_info("1.1.0", DEMO_TYPE, build="Nov 21 2026 12:00:00"), DEMO_SIZE), 2))
            o.firmware = [demo]
        release = Catalog.from_paths(o.firmware)  # checked here: a bad file is a usage error
        self.largest = max(s.package.image_size if s.package else s.size for s in release.shipments)
        info = release.shipments[0].info
        self.new_version = info.get("mcu", "")
        self.fw_type = info.get("fw-type", "")
        running = self._running(o.flash)
        only_deltas = release.deltas and release.image is None and release.compressed is None
        if o.factory is not None:
            # Checked here, as the primary will check it: a bad factory image is a usage error
            # before any process starts. The primary reads the file again, so not a pipe.
            read_factory_image(o.factory, regular=True)
            self.factory = os.path.abspath(o.factory)
        elif running is not None:
            # The primary boots what its flash holds, as the device does: that image, not a
            # factory one, is what the NCP picks a file for.
            self.factory = None
            bases = sorted(release.deltas)  # keyed by the version each applies to
            if only_deltas and running not in bases:
                raise ValueError(f"the delta packages apply to {', '.join(bases)}, and the flash {o.flash} "
                                 f"runs {running}: give a release with its image, or a delta from {running}")
        elif only_deltas:
            raise ValueError("a delta package applies to its base only: give the primary that base with --factory")
        else:
            self.factory = os.path.join(self.workdir, "factory.bin")
            old = "1.0.0" if self.new_version != "1.0.0" else "0.9.0"
            with open(self.factory, "wb") as f:
                f.write(self._signed(build_image(make_info(old, self.fw_type, build="Nov 20 2026 12:00:00"), 120 * 1024), 1))
        self._check_time(min(s.size for s in release.shipments))
        if o.flash is None:
            o.flash = os.path.join(self.workdir, "primary.flash")
        if not os.path.exists(o.flash):
            # A new flash is provisioned by the primary process: a factory image its slots
            # cannot hold is refused here, before anything starts.
            size, slot = os.path.getsize(self.factory), o.geometry.slot_size
            if size > slot:
                which = "the factory image" if o.factory is None else f"factory image {o.factory}"
                raise ValueError(f"{which} has {size:,} bytes, more than a slot holds "
                                 f"(--slot-size {slot:,})")

    @staticmethod
    def _running(path: str | None) -> str | None:
        """The version an existing --flash boots (its active slot's), None for no flash file or
        one that holds no firmware.  Checked before anything starts, as the primary will check
        it: not a flash file (a device, a pipe, another file) is a usage error."""
        if path is None or not os.path.exists(path):
            return None
        from dualmcu.primary.inspect import describe

        try:
            d = describe(path)
        except FlashError as e:
            raise ValueError(str(e)) from None
        active = d["active_slot"]
        return d["slots"][active]["version"] if active is not None else None

    def _check_time(self, size: int) -> None:
        """Refuse a paced run whose wire alone cannot carry the update within --timeout: at
        1200 baud a 300 KiB image needs 43 minutes, and the user would otherwise wait out the
        timeout (5 minutes by default) to learn it."""
        o = self.o
        if o.link_config is None or o.link_config.baud is None:
            return  # unpaced: the bytes move as fast as the processes go
        baud = o.link_config.baud
        wire = size * 10 / baud
        if wire > o.timeout:
            raise ValueError(f"at {baud} baud the wire alone takes {wire:,.0f} s to carry the "
                             f"{size:,} bytes of the update, more than --timeout {o.timeout:g} s: "
                             "raise --timeout or --baud")

    def _os_error(self, e: OSError) -> str:
        """One line for a file the preparation could not make or read."""
        why = e.strerror or str(e)
        name = os.fspath(e.filename) if e.filename is not None else None
        work = os.path.abspath(self.workdir)
        if name is None or os.path.abspath(name) == work:
            return f"cannot use the work directory {self.workdir}: {why}"
        if os.path.abspath(name).startswith(work + os.sep):
            return f"cannot use the work directory {self.workdir}: {name}: {why}"
        return f"cannot read {name}: {why}"

    def _signed(self, image: bytes, counter: int) -> bytes:
        if not self.o.sign_key:
            return image
        from dualmcu.image.inputs import MAX_KEY, read_input
        from dualmcu.image.signing import load_private, sign

        pem = read_input(self.o.sign_key, "private key", MAX_KEY)
        return sign(image, load_private(pem), counter, [self.o.target])

    # -- processes ---------------------------------------------------------------------------

    def wire(self, side: str) -> Wire:
        end = "a" if side == "ncp" else "b"
        o = self.o
        return Wire(self.uart.fds[end], end, o.baud, self.uart.names[end], o.link_config,
                    tuple(o.disconnects), self.t0, self.tally(end))

    def tally(self, end: str) -> str:
        """The file of one end's link counters (shell.Tally)."""
        return os.path.join(self.workdir, f"link-{end}.tally")

    def options(self, side: str) -> NcpOptions | PrimaryOptions:
        """The side's whole configuration for one process on its end of the virtual UART."""
        o = self.o
        wire = self.wire(side)
        port = wire.name
        if side == "ncp":
            return NcpOptions(port=port, baud=o.baud, framing=o.framing,
                              firmware=tuple(os.path.abspath(f) for f in o.firmware),
                              prefetch_store=os.path.join(self.workdir, "ncp-store"), net_rate=o.net_rate,
                              net_fail_at=o.net_fail_at, config=replace(o.ncp, once=True), as_json=True,
                              progress_interval=o.progress_interval, start=self.t0, wire=wire)
        cut_at = cut_seed = None
        within: dict = {}  # the side's own default unless a seed is drawn from
        if self.spawned["primary"] == 0:  # the power fails once; the restarted device runs on
            cut_at, cut_seed = o.power_cut_at, None if o.power_cut_at is not None else o.power_cut_seed
            if cut_seed is not None:
                # Draw from the operations this update takes: page erases, chunk programs
                # (one per page crossed) and a few boot-state writes.
                page, chunk = o.geometry.page_size, o.primary.ota.chunk_size
                pages, chunks = -(-self.largest // page), -(-self.largest // chunk)
                crossings = pages if page % chunk else 0
                within = {"power_cut_within": pages + chunks + crossings + 6}
        geometry = None if os.path.exists(o.flash) else o.geometry  # an existing file keeps its own
        return PrimaryOptions(port=port, flash=o.flash, baud=o.baud, framing=o.framing, geometry=geometry,
                              provision=self.factory, config=o.primary, as_json=True, power_cut_at=cut_at,
                              power_cut_seed=cut_seed, progress_interval=o.progress_interval, start=self.t0,
                              wire=wire, **within)

    def spawn(self, side: str) -> None:
        log = os.path.join(self.workdir, f"{side}.log")
        self.logs[side] = log
        if side not in self.log_files:
            # The side's event stream, kept with the work files (--keep, or a failed run): its
            # pipe comes here, so the run writes what it reads, one buffered append per line.
            self.log_files[side] = open(log, "a", encoding="utf-8")
        else:
            self.log_files[side].flush()  # the lines of the incarnation before come first
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "ab") as err:
            options = self.options(side)
            p = subprocess.Popen([sys.executable, "-m", "dualmcu.child"], stdout=subprocess.PIPE, stderr=err,
                                 stdin=subprocess.PIPE, env=env, pass_fds=(options.wire.fd,))
        send(options, p.stdin)
        self.spawned[side] += 1
        self.procs[side] = p
        self.lines.add(side, p)

    def sample_memory(self) -> None:
        """Peak resident memory of each side so far (Linux /proc), checked a few times a second."""
        now = time.monotonic()
        if now - self._rss_at < 0.2:
            return
        self._rss_at = now
        for side, p in self.procs.items():
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak_rss[side] = max(self.peak_rss[side], int(line.split()[1]))
            except OSError:
                pass

    def stop_all(self, drain: bool = False) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        try:
            if drain:
                # Read while they stop: a side ends by writing the lines its pipe had no room
                # for, and would wait for this process to read them.
                self.drain(3.0)
            for p in self.procs.values():
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        except BaseException:
            # A second Ctrl-C or SIGTERM while they stop: this process ends now, and leaves
            # no side running on behind it.
            for p in self.procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
            raise

    def drain(self, seconds: float = 2.0) -> None:
        """Show the lines the sides printed before they stopped and the verdict did not wait
        for: --json holds every side's every line, and the run's result stays the last."""
        running = set(self.procs.values())
        end = time.monotonic() + seconds
        while running and (left := end - time.monotonic()) > 0:
            ev = self.lines.get(left)
            if ev is None:
                return
            if ev.get("event") == EOF:
                running.discard(ev["proc"])
            else:
                self.keep_line(ev)
                self.say(ev)

    def keep_line(self, ev: dict) -> None:
        """A side's line, as it printed it, into its log."""
        log = self.log_files.get(ev.get("side"))
        line = ev.get(RAW) or ev.get("text")
        if log is not None and line is not None:
            log.write(line + "\n")

    def close_logs(self) -> None:
        for f in self.log_files.values():
            try:
                f.close()
            except OSError:
                pass  # a full disk: the logs are a record, never the verdict

    def tail(self, side: str, n: int = 8) -> str:
        self.log_files[side].flush()
        try:
            with open(self.logs[side], "rb") as f:
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    # -- events ------------------------------------------------------------------------------

    def say(self, obj: dict) -> None:
        """Pass a line on to --json; it goes out before the run next waits (_flush_json), so
        a reader sees every line as soon as the run has taken the lines that came with it."""
        raw = obj.pop(RAW, None)
        if self.outlet is not None:
            self.outlet.add((raw or json.dumps(obj, separators=(",", ":"))) + "\n")

    def _flush_json(self) -> None:
        if self.outlet is not None:
            self.outlet.pump()

    def _handlers(self) -> dict[tuple[str, str], Callable[[dict], Verdict | None]]:
        """What the run does with each side's event; an event not listed is only shown."""
        trouble = (Event.OTA_REFUSED, Event.OTA_CANCELLED, Event.ROLLBACK, Event.HEALTH_CHECK_FAILED, Event.CRASHED,
                   Event.COMMIT_TIMEOUT, Event.OTA_DEFERRED, Event.HUNG)
        return {
            ("ncp", Event.OTA_PROGRESS): self._progressed,
            ("ncp", Event.OTA_OFFER): self._offered,
            ("ncp", Event.OTA_OUTCOME): self._ended,
            ("primary", Event.POWER_CUT): self._power_cut,
            ("primary", Event.BOOTED): self._booted,
            ("primary", Event.READY): self._ready,
            ("primary", Event.OTA_INSTALLED): self._installed,
            ("primary", Event.CONFIRMED): self._confirmed,
            ("primary", Event.HALTED): self._halted,
            **{("primary", kind): self._trouble for kind in trouble},
        }

    def on_event(self, ev: dict) -> Verdict | None:
        side, kind = ev.get("side"), ev.get("event")
        if kind == EOF:
            return self._exited(side, ev["proc"])
        self.keep_line(ev)
        self.say(ev)
        handler = self.handlers.get((side, kind))
        verdict = handler(ev) if handler else None
        if verdict is not None:
            return verdict
        st = self.state
        if st["ncp_outcome"] == Outcome.ROLLBACK and st["back_on"] is not None:
            why = st.get("rollback_reason") or "reason unknown"
            return ExitCode.FAILED, (f"rolled back to {st['back_on']} ({why}); "
                                     "the old image runs, confirmed")
        if st["confirmed"] == self.new_version and st["ncp_outcome"] == Outcome.SUCCESS:
            return ExitCode.OK, f"updated {st['old_version']} -> {self.new_version}, confirmed"
        if st["ncp_outcome"] == Outcome.UP_TO_DATE:
            return ExitCode.OK, f"already running {self.new_version}"
        return None

    def tell(self, text: str) -> None:
        """A line for a human; the JSON stream has the event itself."""
        if not self.o.as_json:
            self.progress.line(text)

    def _progressed(self, ev: dict) -> None:
        st = self.state
        st["offset"], st["retries"] = ev["offset"], ev["retries"]
        if not self.o.as_json:
            self.progress.update(ev["offset"], ev["size"], ev["retries"])
        for who in ("primary", "ncp"):
            at = self.o.kill_primary_at if who == "primary" else self.o.kill_ncp_at
            if at is not None and ev["offset"] >= at and not st[f"{who}_kills"]:
                st[f"{who}_kills"] += 1
                self.killed.add(self.procs[who])
                self.procs[who].kill()
                self.procs[who].wait()
                self.say({"side": "run", "event": f"{who}_killed", "offset": ev["offset"]})
                self.tell(f"{who} process killed at offset {ev['offset']}; starting it again")
                self.spawn(who)

    def _offered(self, ev: dict) -> None:
        self.tell(f"ncp offers {shown(ev.get('filename'))} version {shown(ev.get('version'))}, {ev.get('size')} bytes")

    def _ended(self, ev: dict) -> Verdict | None:
        st = self.state
        st["ncp_outcome"] = ev.get("outcome")
        self.tell(f"ncp outcome: {ev.get('outcome')}")
        if ev.get("outcome") == Outcome.DEFERRED:
            # The primary's own OTA_DEFERRED line may not have been heard yet (the sides' lines
            # come in no set order); the telemetry the NCP's outcome carries has the reason too.
            told = (ev.get("telemetry") or {}).get("ota_reason") or None
            st["deferred_reason"] = st.get("deferred_reason") or told
            why = st["deferred_reason"] or "reason unknown"
            return ExitCode.FAILED, f"update deferred by the device ({why}) past --max-defer"
        if ev.get("outcome") not in FINAL:
            # The primary's reason (too_large, wrong_type...) comes in the outcome's telemetry.
            told = ev.get("reason") or (ev.get("telemetry") or {}).get("ota_reason")
            why = f" ({told})" if told else ""
            return ExitCode.FAILED, f"update failed: {ev.get('outcome')}{why}"
        return None

    def _power_cut(self, ev: dict) -> None:
        self.state["power_cuts"] += 1
        self.tell(f"power cut at flash operation {ev.get('op')} ({ev.get('operation')}, {ev.get('applied')} bytes applied)")

    def _booted(self, ev: dict) -> None:
        if self.state["old_version"] is None:
            self.state["old_version"] = ev.get("version")
        self.state["trial"] = ev.get("version") if ev.get("trial") else None
        self.tell(f"primary booted slot {ev.get('slot')} version {ev.get('version')}" + (" (trial)" if ev.get("trial") else ""))

    def _on_trial(self) -> str:
        """Why a run that timed out had no verdict yet, when the new image was on trial."""
        trial = self.state["trial"]
        if trial is None:
            return ""
        ct = self.o.primary.commit_timeout
        return (f"; {trial} ran on trial, unconfirmed, and is rolled back only {ct:g} s "
                "after its boot (--commit-timeout)")

    def _trouble(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == Event.ROLLBACK:
            self.state["rollback_reason"] = ev.get("reason")
            self.state["rolled_back"] = True
        elif kind == Event.OTA_DEFERRED:
            self.state["deferred_reason"] = ev.get("reason")
        self.tell(f"primary {kind}: " + detail({k: v for k, v in ev.items() if k not in ("side", "event", "t")}))

    def _ready(self, ev: dict) -> None:
        # The two sides' lines reach this queue in no set order: the primary's READY after its
        # rollback may come before or after the NCP's outcome. Each side's own lines keep their
        # order, so a READY that follows the primary's ROLLBACK is the old image back, confirmed
        # and talking to the NCP; the run ends once the NCP's outcome says rollback too.
        st = self.state
        if st["rolled_back"] or st["ncp_outcome"] == Outcome.ROLLBACK:
            st["back_on"] = ev.get("version")

    def _installed(self, ev: dict) -> None:
        self.state["installed"] = ev.get("version")
        self.tell(f"primary installed version {ev.get('version')} in slot {ev.get('slot')}, sha256 {ev.get('sha256')}")

    def _confirmed(self, ev: dict) -> None:
        self.state["trial"] = None
        if self.state["installed"] and ev.get("version") == self.new_version:
            self.state["confirmed"] = ev.get("version")
        self.tell(f"primary confirmed version {ev.get('version')} in slot {ev.get('slot')}")

    def _halted(self, ev: dict) -> Verdict:
        return ExitCode.FAILED, f"the primary has no bootable image ({ev.get('reason')})"

    def _exited(self, side: str, proc: subprocess.Popen) -> Verdict | None:
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        if proc in self.killed or (side == "ncp" and self.state["ncp_outcome"] in FINAL):
            return None
        if side == "primary" and code == ExitCode.POWER_CUT:
            self.spawn("primary")  # power comes back: the device boots
            self.tell("primary powered up again")
            return None
        return ExitCode.IO, f"the {side} process exited with code {code}:\n{self.tail(side)}"

    # -- the whole run -----------------------------------------------------------------------

    def run(self) -> int:
        # A --json reader that stops reading holds up neither the sides (see Outlet) nor this
        # process's own work (kills and power cuts at an offset, the timeout): lines wait.
        self.outlet = Outlet(sys.stdout, json_note("run")) if self.o.as_json else None
        try:
            code = self._run()  # the CLI makes SIGTERM a KeyboardInterrupt, as Ctrl-C
        finally:
            if self.outlet is not None:
                self.outlet.close()
            self.progress.close()
        if self.outlet is not None and self.outlet.code is not None:
            self.outlet.say_broken()  # nothing said for a reader that went away
            return code or self.outlet.code
        return code

    def _run(self) -> int:
        # Events and the result's seconds count from here, when the user started waiting.
        self.t0 = t0 = time.monotonic()
        try:
            self.prepare()
        except (ValueError, OSError) as e:  # OSError: the work directory, a file in it, an input
            said = e if isinstance(e, ValueError) else self._os_error(e)
            say_error(shown(said))
            if self.o.workdir is None and getattr(self, "workdir", None):
                # Nothing was started: the temporary work directory made for it goes too.
                shutil.rmtree(self.workdir, ignore_errors=True)
            return ExitCode.USAGE
        verdict: Verdict | None = None
        tallies = [self.tally(end) for end in VirtualUart.SIDES]
        for path in tallies:  # a work directory used again counts this run only
            if os.path.exists(path):
                os.remove(path)
        self.uart = None
        try:
            self.uart = uart = VirtualUart(self.o.link)
            if not self.o.as_json:
                self.progress.line(f"link: {self.o.link}, ncp on {uart.names['a']}, primary on {uart.names['b']}, "
                                   f"framing {self.o.framing}; work files in {self.workdir}")
            self.spawn("ncp")
            self.spawn("primary")
            deadline = t0 + self.o.timeout
            while verdict is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    verdict = (ExitCode.TIMEOUT,
                               f"no result within {self.o.timeout:.0f} s "
                               f"(at offset {self.state['offset']}){self._on_trial()}")
                    break
                self.sample_memory()
                ev = self.lines.get(min(left, 0.5))
                if ev is not None:
                    verdict = self.on_event(ev)
                if self.outlet is not None and self.outlet.code is not None:
                    # Nobody can see the run any more: the reader went away, or the disk is full.
                    verdict = self.outlet.code, "the event lines cannot be written"
            self._rss_at = 0.0
            self.sample_memory()
            self.stop_all(drain=True)
            counts = link_counts(*(Tally.read(path) for path in tallies))
        except OSError as e:
            # No pty, no fork, no process: the system refused, and the user gets one line.
            self.stop_all()
            self.progress.line("")
            say_error(f"the virtual UART or a side could not be started: {shown(e)}")
            return ExitCode.IO
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM
            self.stop_all()
            self.progress.line("")  # close the progress line before saying anything else
            code, word = stopped_code(e), stopped_word(e)
            self.say({"side": "run", "event": "result", "exit_code": int(code), "reason": word,
                      "workdir": self.workdir})
            self._flush_json()
            print(f"{word}; work files kept in {self.workdir}", file=sys.stderr)
            return code
        finally:
            if self.uart is not None:
                self.uart.close()
            self.close_logs()
        code, reason = verdict
        # A temporary work directory goes once the run succeeded, unless --keep: a failed run
        # keeps it, for its logs and flash.
        remove = self.o.workdir is None and not self.o.keep and code == ExitCode.OK
        flash_inside = os.path.dirname(os.path.abspath(self.o.flash)) == os.path.abspath(self.workdir)
        wall = time.monotonic() - t0
        moved = counts.get("a_to_b", 0)
        summary = {"side": "run", "event": "result", "exit_code": code, "reason": reason,
                   "old_version": self.state["old_version"], "new_version": self.new_version,
                   "confirmed": self.state["confirmed"], "ncp_outcome": self.state["ncp_outcome"],
                   "rollback_reason": self.state.get("rollback_reason"),
                   "deferred_reason": self.state.get("deferred_reason"),
                   "flash": None if remove and flash_inside else self.o.flash,
                   "workdir": None if remove else self.workdir, "seconds": round(wall, 3), "link": counts,
                   "power_cuts": self.state["power_cuts"], "primary_kills": self.state["primary_kills"],
                   "ncp_kills": self.state["ncp_kills"], "retries": self.state["retries"],
                   "peak_rss_kib": dict(self.peak_rss)}
        if self.o.as_json:
            self.say(summary)
            self._flush_json()
        else:
            self.progress.line("")  # end the progress line; the verdict goes to stdout
            self.progress.close()  # after every line a slow reader has not taken yet
            print(("OK: " if code == 0 else "FAILED: ") + reason
                  + f" ({wall:.1f} s, {moved} bytes from the NCP, {self.state['retries']} retries)")
            injected = {k: counts[k] for k in INJECTED if counts.get(k)}
            injected.update({k: self.state[k] for k in ("power_cuts", "primary_kills", "ncp_kills") if self.state[k]})
            if injected:
                print("injected: " + ", ".join(f"{k} {v}" for k, v in injected.items()))
            if remove and flash_inside:
                print("work files removed (--keep keeps them, with the flash to inspect)", flush=True)
            else:
                print(f"flash: {self.o.flash}  (inspect with: dualmcu flash show --flash {self.o.flash})", flush=True)
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code
