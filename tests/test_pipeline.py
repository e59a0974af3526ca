"""Pipelined writes through the extension uid, the fallback to the plain protocol, and
timeouts derived from the link."""

import hashlib

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.link import LinkConfig
from dualmcu.sim import Simulation
from support import active_image, provisioned, tagged
from dualmcu.framing import get_profile
from dualmcu.ncp.core import NcpConfig, Sending
from dualmcu.ncp.update import Shipment
from dualmcu.primary.device import PrimaryConfig
from dualmcu.primary.ota import OtaConfig
from dualmcu.rpc import message as M
from dualmcu.rpc.interface import INTERFACE

WRITE = INTERFACE["client_otaUpdateWrite"]
NEW = build_image(make_info("1.1.0", "TMPLP", build="Jan  1 2026 00:00:00"), 150_000)


def device():
    return provisioned(tagged("1.0.0", "TMPLP", 30_000), 256 * 1024)


def image(flash):
    return active_image(flash)[1]


class InFlight:
    """Counts the writes the NCP has sent and the primary not yet answered."""

    def __init__(self, framing="cobs"):
        self.p = get_profile(framing)
        self.dec_out, self.dec_in = self.p.decoder(), self.p.decoder()
        self.open: set[int] = set()
        self.most = 0

    def to_primary(self, data):
        for fr in self.dec_out.feed(data):
            m = M.parse(fr.message)
            if isinstance(m, M.Invoke) and m.uid == WRITE.uid:
                self.open.add(m.msg_id)
                self.most = max(self.most, len(self.open))
        return data

    def to_ncp(self, data):
        for fr in self.dec_in.feed(data):
            m = M.parse(fr.message)
            if isinstance(m, M.Result):
                self.open.discard(m.msg_id)
        return data


def run(window=8, pipeline=True, baud=921600, **kw):
    w = InFlight()
    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=baud, latency=0.001),
                   ncp_config=NcpConfig(pipeline=pipeline),
                   primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=4064, window=window)),
                   tap_to_primary=w.to_primary, tap_to_ncp=w.to_ncp, **kw)
    return s, w


def test_pipelined_writes_keep_the_window_full_and_never_exceed_it():
    s, w = run(window=8)
    assert s.run_update() == "success"
    assert s.find("ota_window", "ncp")[0]["window"] == 8
    assert w.most == 8
    assert image(s.flash) == NEW


@pytest.mark.parametrize("window,pipeline", [(1, True), (8, False)])
def test_without_the_extension_one_write_at_a_time_as_the_real_protocol(window, pipeline):
    s, w = run(window=window, pipeline=pipeline)
    assert s.run_update() == "success"
    assert s.find("ota_window", "ncp")[0]["window"] == 1
    assert w.most == 1
    if window == 1:  # the primary does not offer the uid: hasUID says no
        assert s.primary.ep.serves(INTERFACE["dualmcu_otaCapabilities"].uid) is False


@pytest.mark.parametrize("buffer,window", [(32 * 1024, 1), (64 * 1024, 2), (200 * 1024, 4)])
def test_the_primary_s_buffer_bounds_the_window_of_large_chunks(buffer, window):
    # Beyond the chunk being received, a write in flight may have to wait in the buffer
    # behind a missing one: chunks of 64 KiB go one at a time in 32 KiB, two at a time in 64.
    w = InFlight()
    new = build_image(make_info("1.1.0", "TMPLP", build="Jan  1 2026 00:00:00"), 600_000)
    s = Simulation(provisioned(tagged("1.0.0", "TMPLP", 30_000), 1 << 20), Shipment.from_bytes(new),
                   link=LinkConfig(baud=921600, latency=0.001),
                   primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=65535, buffer=buffer)),
                   tap_to_primary=w.to_primary, tap_to_ncp=w.to_ncp)
    assert s.run_update() == "success"
    assert s.find("ota_window", "ncp")[0]["window"] == window
    assert w.most == window
    assert image(s.flash) == new


def test_pipelining_is_faster_on_a_link_with_latency():
    times = {}
    for pipeline in (False, True):
        s, _ = run(pipeline=pipeline)
        assert s.run_update() == "success"
        start = s.find("ota_start", "ncp")[0]["t"]
        times[pipeline] = s.find("ota_installed", "primary")[0]["t"] - start
    assert times[True] < 0.9 * times[False]


def test_a_buffered_answer_overlaps_programming_with_the_wire_in_the_plain_protocol():
    # Double buffering: the write is answered once the flash has taken the chunk before it,
    # so the next chunk crosses the wire while this one programs.  Finish is still answered
    # only when the last program is done, and the image is the same.
    times = {}
    for answer in ("programmed", "buffered"):
        s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=921600, latency=0.001),
                       ncp_config=NcpConfig(pipeline=False),
                       primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=1024, write_answer=answer)))
        assert s.run_update() == "success" and image(s.flash) == NEW
        start = s.find("ota_start", "ncp")[0]["t"]
        times[answer] = s.find("ota_finished", "ncp")[0]["t"] - start
    # 147 chunks of 1024 bytes, each saving its 1.6 ms of programming from the round trip.
    assert times["programmed"] - times["buffered"] > 0.8 * 147 * 0.0016


def test_a_buffered_answer_still_answers_finish_after_the_last_program():
    from dualmcu.primary.timing import FlashTiming

    # 40 ms per 256 bytes.  The last write (496 bytes) is answered once the chunk before it
    # has programmed; its own two pages take 80 ms more, and Finish must wait for them.
    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=921600, latency=0.001),
                   ncp_config=NcpConfig(pipeline=False),
                   primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=1024, write_answer="buffered",
                                                              timing=FlashTiming(0.040, 0.045, 0.150))))
    assert s.run_update(limit=600) == "success" and image(s.flash) == NEW
    answered = s.find("ota_progress", "ncp")[-1]["t"]  # the last write's answer, at the NCP
    assert len(NEW) % 1024 == 496
    assert s.find("ota_finished", "ncp")[0]["t"] >= answered + 0.080 - 0.002  # less the answer's trip


def drop_first(kind, pick):
    """A tap that drops the first message of ``kind`` for which ``pick`` says yes."""
    p = get_profile("cobs")
    dropped = []

    def tap(data):
        out = b""
        for fr in p.decoder().feed(data):
            m = M.parse(fr.message)
            if isinstance(m, kind) and not dropped and pick(m):
                dropped.append(m)
                continue
            out += p.encode(fr.message)
        return out

    return tap, dropped


def test_a_lost_write_is_resent_alone_and_the_chunks_behind_it_are_held_in_order():
    tap, dropped = drop_first(M.Invoke, lambda m: m.uid == WRITE.uid and WRITE.decode_args(m.args)["offset"] == 4064 * 3)
    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=921600, latency=0.001),
                   primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=4064)), tap_to_primary=tap)
    assert s.run_update() == "success"
    assert dropped
    retries = s.find("ota_retry", "ncp")
    assert [r["offset"] for r in retries] == [4064 * 3]  # only what was lost is sent again
    assert image(s.flash) == NEW


def test_a_lost_answer_is_resent_and_acknowledged_without_rewriting():
    tap, dropped = drop_first(M.Result, lambda m: True and m.msg_id > 8)
    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=921600, latency=0.001),
                   primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=4064)), tap_to_ncp=tap)
    assert s.run_update() == "success"
    assert dropped and s.find("ota_duplicate", "primary")
    assert hashlib.sha256(image(s.flash)).digest() == hashlib.sha256(NEW).digest()


@pytest.mark.parametrize("baud,window,chunk,low,high", [
    # milliseconds of work plus one 150 ms block erase: a lost answer costs well under a second
    (3_000_000, 8, 4064, 0.3, 0.8),
    (9600, 1, 1024, 2.2, 4.5),  # a 1 KiB write takes ~1.1 s on the wire: never timed out early
])
def test_write_timeouts_come_from_the_work(baud, window, chunk, low, high):
    from dualmcu.ncp.core import NcpDevice

    ncp = NcpDevice(get_profile("cobs"), NcpConfig(baud=baud))
    sd = Sending(chunk=chunk, started=0, window=window, negotiated=True, program_per_kib=0.0016,
                 erase_per_block=0.150)
    assert low < ncp._write_timeout(sd) < high
    wire = window * (chunk + 32) * 10 / baud
    assert ncp._write_timeout(sd) > wire + 0.150  # never shorter than the bytes and an erase take


@pytest.mark.parametrize("baud", [115200, 230400, 921600, 3_000_000])
def test_a_plain_peer_gets_the_drivers_five_seconds_per_write(baud):
    """A real MCU may erase a 64 KiB block (150 ms and more) inside a write: it gets the
    interface table's 5 s, as from the real NCP, never a timeout derived from the baud rate."""
    from dualmcu.ncp.core import NcpDevice

    ncp = NcpDevice(get_profile("blynk"), NcpConfig(baud=baud))
    assert ncp._write_timeout(Sending(chunk=1024, started=0)) is None
    assert INTERFACE["client_otaUpdateWrite"].timeout == 5.0


def test_a_plain_primary_that_erases_inside_a_write_is_never_sent_a_chunk_twice():
    """window 1 and no resume: the primary offers no extension, as real firmware; every block
    erase happens inside a write, and no write is resent."""
    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=921600, latency=0.001),
                   ncp_config=NcpConfig(baud=921600),
                   primary_config=PrimaryConfig(ota=OtaConfig(window=1, resume=False)))
    assert s.run_update() == "success"
    assert not s.find("ota_retry", "ncp") and not s.find("ota_duplicate", "primary")


def test_a_heartbeat_queued_behind_the_writes_never_loses_the_ncp():
    """8 writes of 4 KiB in flight at 115200 are 2.9 s of wire: a 1 s getState heartbeat
    waits behind them and times out three times in a row.  The primary used to declare the
    NCP lost, initialise again mid-transfer and end the update refused.  The NCP speaking
    (its writes) after the ping left is proof of life: no miss is counted."""
    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=115200, latency=0.001),
                   ncp_config=NcpConfig(pipeline=True),
                   primary_config=PrimaryConfig(heartbeat=1.0, ota=OtaConfig(chunk_size=4064, window=8)))
    assert s.run_update() == "success"
    assert not s.find("ncp_lost", "primary")
    assert hashlib.sha256(image(s.flash)).digest() == hashlib.sha256(NEW).digest()


def test_the_timed_flash_queues_its_operations_and_owns_their_time(tmp_path):
    from dualmcu.primary.flash import Flash, Geometry
    from dualmcu.primary.timing import FlashTiming, TimedFlash

    flash = Flash.open(str(tmp_path / "f"), Geometry(4096, 1 << 16))
    timed = TimedFlash(flash, FlashTiming(0.0004, 0.045, 0.150))
    base = flash.geometry.slot_offset(1)
    assert timed.erase(base, 8192, now=1.0) == pytest.approx(1.09)  # two sectors
    assert timed.program(base, b"\x5a" * 1024, now=1.0) == pytest.approx(1.0916)  # queued behind the erase
    assert timed.erase(base + 8192, 4096, now=5.0, seconds=0.0) == 5.0  # done while the flash was idle
    assert timed.free_at(4.0) == 5.0 and flash.read(base, 4) == b"\x5a" * 4 and flash.read(base + 8192, 1) == b"\xff"


def test_ota_config_checks_its_choices():
    from dualmcu.primary.ota import VersionPolicy, WriteAnswer

    assert OtaConfig(write_answer="buffered").write_answer is WriteAnswer.BUFFERED
    assert OtaConfig(version_policy="mandatory-only").version_policy is VersionPolicy.MANDATORY_ONLY
    with pytest.raises(ValueError):
        OtaConfig(version_policy="newest")


@pytest.mark.parametrize("pipeline", [False, True])
def test_the_ncp_prepares_each_next_write_while_the_last_is_answered(monkeypatch, pipeline):
    # NcpDevice.idle reads and encodes the next write after a step's bytes are out, so an
    # answer sends it without that work.  Prepared or not, the bytes on the wire are the same.
    from dualmcu.ncp.core import NcpDevice

    wires = {}
    for prepare in (True, False):
        if not prepare:
            monkeypatch.setattr(NcpDevice, "idle", lambda self: None)
        ready = []
        real = NcpDevice._write_args

        def spy(self, offset, length, real=real, ready=ready):
            ready.append(self._next_write is not None and self._next_write[0][1:] == (offset, length))
            return real(self, offset, length)

        monkeypatch.setattr(NcpDevice, "_write_args", spy)
        sent = []
        monkeypatch.setattr(InFlight, "to_primary", lambda self, d: sent.append(d) or d)
        s, _ = run(window=8, pipeline=pipeline)
        assert s.run_update() == "success" and image(s.flash) == NEW
        wires[prepare] = b"".join(sent)
        if prepare:
            assert sum(ready) >= len(ready) - 1 - (8 if pipeline else 0)  # all but the first (the window's)
        else:
            assert not any(ready)
    assert wires[True] == wires[False]


def test_a_chunk_longer_on_the_wire_than_the_tables_timeout_still_gets_answered():
    # cobs carries 65535-byte chunks: 5.7 s at 115200, past the table's 5 s for a write. Without
    # negotiated timings the NCP gives such a write twice its wire time, or every try of it
    # would time out however healthy the link.
    s = Simulation(device(), Shipment.from_bytes(NEW), link=LinkConfig(baud=115200),
                   ncp_config=NcpConfig(pipeline=False),
                   primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=0xFFFF)))
    assert s.run_update(limit=600) == "success" and image(s.flash) == NEW
    assert s.find("ota_start", "ncp")[0]["chunk_size"] == 0xFFFF
    assert not s.find("ota_retry", "ncp") and not s.find("rpc_timeout", "ncp")


def test_writes_longer_than_a_heartbeats_timeout_never_lose_the_ncp():
    """One 65535-byte write is 5.7 s of wire at 115200: a getState sent while one crosses may
    time out before the next write has arrived whole, three times in a row over a long image.
    The NCP spoke within a heartbeat of each ping, so no miss is counted."""
    new = build_image(make_info("1.1.0", "TMPLP", build="Jan  1 2026 00:00:00"), 600_000)
    s = Simulation(provisioned(tagged("1.0.0", "TMPLP", 80_000), 1 << 20), Shipment.from_bytes(new),
                   link=LinkConfig(baud=115200), ncp_config=NcpConfig(pipeline=False),
                   primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=0xFFFF)))
    assert s.run_update(limit=600) == "success" and image(s.flash) == new
    assert s.find("rpc_timeout", "primary") and not s.find("ncp_lost", "primary")
