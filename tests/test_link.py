"""The link model: pacing to the baud rate, latency, buffers and seeded faults."""

import json
from dataclasses import replace

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.link import End, Faults, Link, LinkConfig
from dualmcu.sim import Simulation
from support import provisioned, tagged
from dualmcu.ncp.update import Shipment
from dualmcu.primary.device import PrimaryConfig


def drain(link, side, until):
    got, t = b"", 0.0
    while True:
        d = link.next_deadline()
        if d is None or d > until:
            return got
        t = d
        got += link.receive(side, t)


def test_pacing_is_ten_bit_times_per_byte_plus_latency():
    link = Link(LinkConfig(baud=115200, latency=0.002))
    link.send("a", bytes(11520), 0.0)
    assert link.next_deadline() == pytest.approx(1.0 + 0.002)
    link.send("a", b"x", 0.5)  # queued behind the first burst
    assert link.lanes["a_to_b"].queue[-1][0] == pytest.approx(1.0 + 10 / 115200 + 0.002)


def test_directions_are_independent():
    link = Link(LinkConfig(baud=9600))
    link.send("a", bytes(960), 0.0)
    link.send("b", b"y", 0.0)
    assert link.lanes["b_to_a"].next_deadline() == pytest.approx(10 / 9600)


def test_same_seed_same_damage():
    data = bytes(range(256)) * 40
    runs = []
    for _ in range(2):
        link = Link(LinkConfig(faults=Faults(ber=1e-3, drop=1e-3, dup=1e-3, garbage=1e-3), seed=7))
        link.send("a", data, 0)
        runs.append((drain(link, "b", 1.0), link.stats))
    assert runs[0] == runs[1]
    got, stats = runs[0]
    assert got != data and stats["bit_errors"] and stats["dropped"]


def test_a_full_buffer_loses_what_arrives_while_the_receiver_is_not_reading():
    link = Link(LinkConfig(rx_buffer=64, rx_poll=0.1))
    link.receive("b", 0.0)  # the receiver just read: next read at 0.1
    for i in range(10):
        link.send("a", bytes(32), 0.01 * i)
    got = drain(link, "b", 1.0)
    assert len(got) == 64 and link.stats["overflow_lost"] == 320 - 64


def test_a_receiver_that_polls_reads_a_long_frame_as_it_comes():
    # 1152 bytes at 115200 take 0.1 s.  Read every 2 ms (23 bytes a read), a 256-byte buffer
    # never fills.  Read every 50 ms it overflows, as a real UART's would: the first read
    # takes the first byte, the next 576 bytes (256 kept), the last the other 575 (256 kept).
    for poll, lost in ((0.002, 0), (0.05, (576 - 256) + (575 - 256))):
        link = Link(LinkConfig(baud=115200, rx_buffer=256, rx_poll=poll))
        data = bytes(range(256)) * 4 + bytes(128)
        link.send("a", data, 0.0)
        assert link.next_deadline() == pytest.approx(10 / 115200)  # the first byte is in
        got = drain(link, "b", 1.0)
        assert link.stats["overflow_lost"] == lost and len(got) == len(data) - lost
        if not lost:
            assert got == data


def test_a_disconnected_side_loses_everything_for_a_while():
    link = Link(LinkConfig())
    link.send("a", b"lost", 0.0)
    link.disconnect("b", 0.0, 1.0)
    link.send("a", b"also lost", 0.5)
    link.send("a", b"kept", 1.5)
    assert drain(link, "b", 2.0) == b"kept" and link.stats["disconnect_lost"] == 13


def test_each_end_injects_what_the_whole_link_would_on_its_direction():
    # dualmcu run's sides pace and damage what they send themselves: with the same seed and
    # plan, each end must give the bytes, times and counts a Link gives that direction.
    cfg = LinkConfig(baud=115200, latency=0.001, faults=Faults(ber=1e-3, drop=1e-3, dup=1e-3, garbage=1e-3), seed=3)
    plan = [("b", 0.5, 0.25)]
    data = bytes(range(256)) * 8
    link, ends = Link(replace(cfg)), {side: End(cfg, side, plan, start=10.0) for side in "ab"}
    for side in "ab":
        link.send(side, data, 10.0)
        ends[side].send(data, 10.0)
    assert ends["a"].next_deadline() == link.lanes["a_to_b"].next_deadline()
    link.disconnect("b", 10.5, 0.25)
    for t in (10.6, 10.7):  # sent while cut off: lost at both
        link.send("a", b"lost", t)
        ends["a"].send(b"lost", t)
    link.send("a", b"kept", 10.8)
    ends["a"].send(b"kept", 10.8)
    for side, other in (("a", "b"), ("b", "a")):
        assert ends[side].due(12.0) == link.receive(other, 12.0)
    total = {k: ends["a"].stats[k] + ends["b"].stats[k] for k in link.stats}
    assert total == link.stats and total["disconnects"] == 1 and total["disconnect_lost"] > 8


def test_a_flush_waits_for_bytes_on_the_wire_not_for_a_planned_disconnection():
    # Before a baud switch or at exit a side waits until its bytes have arrived; a cut planned
    # for later is not something to wait for.
    import socket
    import time

    from dualmcu.ports import Port, Wire

    mine, peer = socket.socketpair()
    start = time.monotonic()
    wire = Wire(mine.detach(), "a", 115200, "test", LinkConfig(baud=115200), disconnects=(("b", 1.5, 1.0),), start=start)
    port = Port.of(wire)
    port.write(bytes(115), time.monotonic())  # 10 ms of wire
    port.flush()
    took = time.monotonic() - start
    assert peer.recv(4096) == bytes(115) and 0.01 <= took < 1.0
    assert port.next_deadline() == pytest.approx(start + 1.5)  # the cut is still planned
    port.close()
    peer.close()


def test_an_end_switches_its_own_rate_and_says_when_nothing_is_to_model():
    cfg = LinkConfig(baud=115200)
    a, b = End(cfg, "a"), End(cfg, "b")
    a.set_baud(921600)
    a.send(bytes(92160), 0.0)
    b.send(bytes(11520), 0.0)
    assert a.next_deadline() == pytest.approx(1.0) and b.next_deadline() == pytest.approx(1.0)
    assert cfg.baud == 115200  # the caller's config is not the end's
    assert End(LinkConfig(), "a").transparent and not End(LinkConfig(), "a", [("a", 1, 1)]).transparent
    unpaced = End(LinkConfig(), "a")
    unpaced.set_baud(9600)
    assert unpaced.transparent  # a switch of rate does not pace an unpaced link


def test_a_paced_port_writes_a_frame_when_it_has_arrived_and_counts_it(tmp_path):
    import socket
    import time

    from dualmcu.ports import Port, Tally, Wire

    mine, peer = socket.socketpair()
    tally = str(tmp_path / "a.tally")
    port = Port.of(Wire(mine.detach(), "a", 115200, "test", LinkConfig(baud=115200, latency=0.002), tally=tally))
    peer.setblocking(False)
    t = time.monotonic() + 100  # far ahead of the real clock: only the times given count
    port.write(bytes(1152), t)  # 0.1 s of wire
    assert port.next_deadline() == pytest.approx(t + 0.102)
    port.pump(t + 0.1)
    with pytest.raises(BlockingIOError):
        peer.recv(4096)  # still on the wire
    # Pumped at the deadline it gave, as a shell does: ``t + 0.102`` itself may lie one float
    # step before it, depending on the machine's uptime.
    port.pump(port.next_deadline())
    assert peer.recv(4096) == bytes(1152) and port.next_deadline() is None
    port.close()
    port = Port.of(Wire(socket.socketpair()[0].detach(), "a", 115200, "test", LinkConfig(baud=115200), tally=tally))
    port.write(b"again", time.monotonic())
    port.close()
    counts = Tally.read(tally)  # a process started again adds to what the last one counted
    assert counts["sent"] == 1157 and counts["bytes"] == 1157


def test_an_unpaced_port_reads_before_it_waits_and_never_blocks_on_a_blocking_descriptor():
    import os
    import pty
    import time
    import tty

    import serial

    from dualmcu.ports import Port

    # The virtual UART of an unpaced run: what waits is read without a select, nothing waiting
    # reads as nothing at once, and queued output still goes out as the peer takes it.
    a, b = pty.openpty()
    tty.setraw(a), tty.setraw(b)
    port = Port(None, fd=a)
    assert port.reads_first and port.read_waiting() == b""
    os.write(b, b"\x00frame\x00")
    deadline = time.monotonic() + 2
    got = b""
    while got != b"\x00frame\x00" and time.monotonic() < deadline:
        got += port.read_waiting()
    assert got == b"\x00frame\x00"
    port.queue += b"answer"
    assert port.read_waiting() == b"" and not port.queue
    assert os.read(b, 100) == b"answer"
    port.close()
    os.close(b)

    # A port whose descriptor blocks (not one pyserial opened) is never read before a select.
    class Blocking(serial.SerialBase):
        def __init__(self, fd):
            super().__init__()
            self._fd = fd

        def fileno(self):
            return self._fd

    r, w = os.pipe()
    assert os.get_blocking(r)
    assert not Port(Blocking(r)).reads_first
    os.close(r), os.close(w)


def device(slot=512 * 1024):
    return provisioned(tagged("1.0.0", "TMPL1", 60_000), slot)


NEW = build_image(make_info("1.1.0", "TMPL1", build="Jan  1 2026 00:00:10"), 200_000)  # fixed bytes: fixed faults


@pytest.mark.parametrize("baud", [115200, 921600])
def test_an_update_on_a_paced_link_is_limited_by_the_wire(baud):
    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=baud))
    assert s.run_update() == "success"
    start = s.find("ota_start", "ncp")[0]["t"]
    end = s.find("ota_installed", "primary")[0]["t"]
    wire = 200_000 * 10 / baud
    # stop-and-wait: the image's bytes plus framing and one round trip per chunk; never faster
    # than the wire, and within the overhead one would compute by hand
    assert wire < end - start < wire * 1.2


def test_a_lost_ping_after_a_baud_change_is_retried():
    lost = []

    def lose_first_ping_after_switch(data):
        if s.link.cfg.baud == 921600 and not lost and b"\x01\x01" in data:
            lost.append(data)
            return b""
        return data

    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=115200),
                   primary_config=PrimaryConfig(baud=921600), tap_to_ncp=lose_first_ping_after_switch)
    assert s.run_update() == "success"
    assert lost and s.find("baud_ping_lost", "primary") and s.find("baud_changed", "primary")
    assert s.link.cfg.baud == 921600


@pytest.mark.parametrize("framing", ["cobs", "blynk"])
def test_an_update_survives_a_noisy_link(framing):
    faults = Faults(ber=2e-5, drop=2e-5, dup=2e-5, garbage=2e-5)
    s = Simulation(device(), Shipment.from_bytes(NEW), framing=framing,
                   link=LinkConfig(baud=921600, faults=faults, seed=3))
    assert s.run_update(limit=3600) == "success"
    assert sum(s.link.stats[k] for k in ("bit_errors", "dropped", "duplicated", "garbage_bytes")) > 0
    assert s.find("ota_retry", "ncp")


def test_the_relay_paces_and_counts_between_two_real_ports():
    # dualmcu link between a device and an emulator: the bytes must be paced (never early)
    # and counted.
    import time

    from dualmcu.relay import Relay
    from dualmcu.ports import open_port

    relay = Relay("pty", LinkConfig(baud=115200, latency=0.001)).start()
    a, b = open_port(relay.paths["a"], 115200), open_port(relay.paths["b"], 115200)
    try:
        data = bytes(range(256)) * 4
        t0 = time.monotonic()
        a.write(data)
        got = b""
        while len(got) < len(data) and time.monotonic() - t0 < 5:
            got += b.read(len(data) - len(got))
        took = time.monotonic() - t0
    finally:
        a.close()
        b.close()
        relay.close()
    assert got == data
    assert took >= len(data) * 10 / 115200 + 0.001  # paced: 89 ms of wire, never faster
    assert relay.stats["a_to_b"] == len(data) and relay.stats["delivered"] == len(data)


def test_wait_for_polls_the_last_stretch_before_a_deadline():
    # Timers wake late on a loaded machine; the shells and the relay block until SPIN before
    # a deadline and poll the rest, so that a paced byte or a deferred answer leaves on time.
    from dualmcu.shell import SPIN, wait_for

    assert wait_for(None, 10.0, 0.5) == 0.5
    assert wait_for(10.1, 10.0, 0.5) == pytest.approx(0.1 - SPIN)
    assert wait_for(20.0, 10.0, 0.5) == 0.5
    assert wait_for(10.0 + SPIN / 2, 10.0, 0.5) == 0.0
    assert wait_for(9.0, 10.0, 0.5) == 0.0  # a deadline already passed


class RecordingCore:
    """A core for the shell's loop that records what the loop asks of it: the bytes it is
    handed, its ticks and its idle work.  ``ended`` is how many frames receive() says any
    bytes end."""

    actions: list = []

    def __init__(self, due, ended):
        self.due, self.ended, self.calls = due, ended, []

    def receive(self, data, now):
        self.calls.append(data.decode())
        return self.ended

    def tick(self, now):
        self.calls.append("tick")
        self.due = None

    def next_deadline(self):
        return self.due

    def data_to_send(self):
        return b""

    def idle(self):
        self.calls.append("idle")


class QuietPort:
    """What the shell's loop asks of a port beyond reading: nothing paced, nothing to send."""

    end = None

    def next_deadline(self):
        return None

    def read_rest(self, data):
        return data

    def pump(self, now, counted=True):
        pass

    def flush(self):
        pass


def test_the_shell_skips_the_step_for_bytes_that_only_continue_a_frame_but_not_a_deadline():
    """A pty hands over 4 to 6 KiB a read, so a 64 KiB write is eleven to sixteen reads; for
    those that only continue a frame (receive says it ended none) the shell neither ticks,
    flushes nor runs idle work.  A deadline that passes meanwhile still ticks the core on time."""
    import time

    from dualmcu.shell import Runner, Stop

    core = RecordingCore(time.monotonic() + 0.05, ended=0)  # every byte only continues a frame

    class FakePort(QuietPort):
        reads_first = True
        reads = ["a", "b", "c"]

        def read_waiting(self):
            if not self.reads:
                raise Stop(0, "done")
            if self.reads[0] == "b":
                # "b" comes after the deadline
                time.sleep(max(0.0, core.due - time.monotonic()) + 0.01)
            return self.reads.pop(0).encode()

        def wait_read(self, wait):
            return self.read_waiting()

    with pytest.raises(Stop):
        Runner(FakePort(), core, lambda a, p: None).run()
    assert core.calls == ["a", "b", "tick", "idle", "c"]


def test_the_shell_takes_no_step_for_a_wake_that_only_let_queued_bytes_out(monkeypatch):
    """A pty takes a 64 KiB write about 12 KiB at a time, so its writer wakes four or five
    times a write only to let more out.  Those wakes hand the core nothing, so the shell takes
    no step for them (no tick, no idle work).  A deadline that passes meanwhile still ticks
    the core, and a side whose every wake only lets bytes out still gets a step each
    IDLE_WAKE (signals, --once checks, the silence watchdog)."""
    import types

    from dualmcu import shell
    from dualmcu.shell import Runner, Stop

    clock = [1024.0]  # the shell's clock, moved by the port's waits: no real time in the test
    monkeypatch.setattr(shell, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(shell, "IDLE_WAKE", 1 / 16)  # binary fractions: exact sums

    class FakePort(QuietPort):
        reads_first, made_room = False, False

        def __init__(self, wakes):
            self.wakes = wakes  # (seconds the wait took, bytes); b"": it only made room

        def wait_read(self, wait):
            if not self.wakes:
                raise Stop(0, "done")
            took, data = self.wakes.pop(0)
            clock[0] += took
            self.made_room = not data
            return data

    # Two wakes before the deadline, one after it, then bytes.
    core = RecordingCore(clock[0] + 0.01, ended=1)
    port = FakePort([(0.001, b""), (0.001, b""), (0.02, b""), (0.001, b"x")])
    with pytest.raises(Stop):
        Runner(port, core, lambda a, p: None).run()
    assert core.calls == ["tick", "idle", "x", "idle"]

    # No deadline at all, and 30 wakes 1/64 s apart: a step every fourth, at each 1/16 s.
    core = RecordingCore(None, ended=1)
    with pytest.raises(Stop):
        Runner(FakePort([(1 / 64, b"")] * 30), core, lambda a, p: None).run()
    assert core.calls == ["idle"] * 7


def test_a_primary_sends_its_first_ping_when_it_starts_not_at_its_first_wake():
    """The primary's first ncp_ping is made with the core. The shell sends it at start: held
    until the first wake (its own 100 ms timeout on a quiet line), it reached the NCP only as
    it timed out, the NCP's answer came back stale, and every start took a ping retry longer."""
    import time

    from dualmcu.framing import get_profile
    from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
    from dualmcu.primary.flash import Flash, Geometry
    from dualmcu.primary.boot import Bootloader
    from dualmcu.rpc import INTERFACE
    from dualmcu.rpc.message import Invoke, parse
    from dualmcu.shell import Runner
    from support import tagged

    flash = Flash.in_memory(Geometry(4096, 128 * 1024))
    Bootloader(flash).provision(tagged("1.0.0", "TMPLRUN", 20_000))
    core = PrimaryDevice(flash, get_profile("cobs"), PrimaryConfig(), time.monotonic())

    class WritingPort(QuietPort):
        def __init__(self):
            self.written = bytearray()

        def write(self, data, now=None):
            self.written += data

    port = WritingPort()
    Runner(port, core, lambda a, p: None).start()
    frames = get_profile("cobs").decoder().feed(bytes(port.written))
    assert [parse(f.message) for f in frames] == [Invoke(INTERFACE["ncp_ping"].uid, 1)]


def test_sigterm_ends_the_process_again_once_the_shells_loop_is_over():
    """Inside the loop SIGTERM only stops it, cleanly; after it, a side may wait for a --json
    reader that never reads, and SIGTERM must then end it as it ends any process."""
    import signal

    from dualmcu.shell import Runner, Stop

    class StoppingPort(QuietPort):
        reads_first = True

        def read_waiting(self):
            assert signal.getsignal(signal.SIGTERM) == runner.stop
            raise Stop(0, "done")

    before = signal.getsignal(signal.SIGTERM)
    runner = Runner(StoppingPort(), RecordingCore(None, ended=1), lambda a, p: None)
    with pytest.raises(Stop):
        runner.run()
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.timeout(20)
def test_sigterm_ends_a_side_waiting_with_nothing_due_at_once(monkeypatch):
    """A side with nothing due waits in select() for up to IDLE_WAKE. Python resumes a select()
    a signal interrupted once the handler has run, so SIGTERM was seen only when the wait ran
    out: half a second at the end of every `dualmcu run`. The signal's wake pipe ends the wait.
    With IDLE_WAKE at an hour, the loop ends only if the signal ended the wait."""
    import os
    import signal
    import threading
    import tty

    from dualmcu import shell
    from dualmcu.ports import Port
    from dualmcu.shell import Runner

    monkeypatch.setattr(shell, "IDLE_WAKE", 3600.0)
    master, slave = os.openpty()
    tty.setraw(slave)
    port = Port(None, fd=slave, baud=115200)
    core = RecordingCore(None, ended=1)
    runner = Runner(port, core, lambda a, p: None)
    # After the loop's first wait began: the core's idle work runs only after a full step.
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        runner.run()  # returns once stopped; pytest-timeout fails the test if it never does
    finally:
        timer.cancel()
        port.close()
        os.close(master)
    assert runner._stopping and core.calls == ["idle"]  # the one step after the wake


def test_a_side_takes_all_that_has_arrived_before_its_core_sees_any_of_it():
    """With writes in flight the peer's next frame is already on the way when one ends. A pty
    holds only 12 to 20 KiB, and a writer blocked on it sends nothing while the core works on
    the frame that ended: taking what the pty holds first lets the writer fill it meanwhile
    (16 MiB, 64 KiB chunks, two in flight: the transfer 0.34 s against 0.41 s, median of
    eight interleaved pairs). At most READ_AHEAD bytes go at once, so a flood still gives
    the core its steps. A socket pair here: all it holds is readable at once."""
    import socket

    from dualmcu import ports
    from dualmcu.ports import Port

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    port = Port(None, fd=b.detach(), baud=115200)
    try:
        sent = bytes(range(256)) * 400  # 100 KiB
        a.sendall(sent)
        first = port.read_waiting()
        assert 0 < len(first) < len(sent)
        assert port.read_rest(first) == sent
        assert port.read_rest(b"") == b""  # nothing read, nothing to add: the loop waits
        a.setblocking(False)
        flood = 0
        try:
            while flood < 2 * ports.READ_AHEAD:
                flood += a.send(bytes(65536))
        except BlockingIOError:
            pass
        assert flood > ports.READ_AHEAD
        taken = port.read_rest(port.read_waiting())
        assert ports.READ_AHEAD <= len(taken) < ports.READ_AHEAD + 65536 and len(taken) < flood
    finally:
        port.close()
        a.close()


def test_the_shell_reads_ahead_only_deep_in_a_large_frame():
    """Deep in a frame larger than a pty holds, the shell takes all that has arrived before
    the core works on it. Never with small frames: taking a whole window of 1 KiB writes at
    once answered them all at once, and the transfer took 1.8 times as long."""
    from dualmcu import shell
    from dualmcu.shell import Runner, Stop

    big = b"b" * shell.BIG_FRAME

    class Port(QuietPort):
        reads_first, made_room = True, False

        def __init__(self, reads):
            self.reads = reads

        def read_waiting(self):
            if not self.reads:
                raise Stop(0, "done")
            return self.reads.pop(0)

        def read_rest(self, data):
            return data + b"+"  # what the pty held behind the read

    class Core(RecordingCore):
        def receive(self, data, now):
            self.calls.append(data)
            return 0 if data.startswith(b"b") else 1  # a large frame goes on; "s" ends one

    # Small frames: each read goes to the core as it is.
    core = Core(None, ended=None)
    with pytest.raises(Stop):
        Runner(Port([b"s1", b"s2"]), core, lambda a, p: None).run()
    assert core.calls == [b"s1", "idle", b"s2", "idle"]
    # A large frame: once BIG_FRAME of it has gone in, what follows comes with the rest.
    core = Core(None, ended=None)
    with pytest.raises(Stop):
        Runner(Port([big, b"send", b"s3"]), core, lambda a, p: None).run()
    assert core.calls == [big, b"send+", "idle", b"s3", "idle"]


@pytest.mark.parametrize("stop,code", [("sigterm", 143), ("ctrl-c", 130), ("sigterm-in-loop", 143)])
def test_a_stopped_side_ends_as_an_interruption_wherever_the_signal_lands(monkeypatch, stop, code):
    """A side stopped by SIGTERM has no outcome: it ends 143 with an exit event, whether the
    signal arrives before its loop took it over (the command's Terminated) or inside the loop
    (which only stops). It ended 0 inside the loop, the code that also means "confirmed", so
    a CI job killed by `timeout --preserve-status` read as a pass. Ctrl-C: 130, said alike."""
    import io

    from dualmcu import sides
    from dualmcu.exits import Terminated
    from dualmcu.output import EventPrinter
    from dualmcu.shell import Runner

    def start(self):
        if stop != "sigterm-in-loop":
            raise Terminated if stop == "sigterm" else KeyboardInterrupt

    monkeypatch.setattr(Runner, "start", start)
    monkeypatch.setattr(Runner, "run", lambda self: self.stop())  # the loop ends once stopped

    class ClosingPort(QuietPort):
        dropped = 0

        def close(self):
            pass

    out = io.StringIO()
    emit = EventPrinter("ncp", True, out=out, start=0.0)
    got = sides._serve(ClosingPort(), "pty", 115200, "cobs", lambda now: RecordingCore(None, 1),
                       lambda a, p: None, emit)
    emit.close()
    assert got == code
    said = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in said] == ["port_open", "exit"]
    assert said[-1]["code"] == code and said[-1]["reason"] == ("interrupted" if code == 130 else "terminated")


def test_a_relay_keeps_each_ptys_rate_and_a_mismatch_garbles_as_a_uart_would():
    """dualmcu link paced at one fixed rate, and a pty ignores line speed: a firmware that stayed
    at 230400 after its peer went back to 38400 went unnoticed. Each end's rate is now its own."""
    import time

    import serial

    from dualmcu.relay import Relay

    data = bytes(range(32, 127)) * 4
    with Relay("pty", LinkConfig(baud=38400)) as relay:
        a = serial.Serial(relay.paths["a"], 230400, timeout=0.3)
        b = serial.Serial(relay.paths["b"], 38400, timeout=0.3)
        try:
            a.write(data)
            time.sleep(0.3)
            heard = b.read(4096)
            assert heard != data and relay.stats["misheard"] == len(data)
            b.baudrate = 230400  # both ends agree again: every byte, paced at their rate
            time.sleep(0.05)
            a.write(data)
            got = b.read(len(data))
            assert got == data and relay.link.cfg.baud == 230400
        finally:
            a.close()
            b.close()
