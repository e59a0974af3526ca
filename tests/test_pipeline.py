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
from dualmcu.primary.boot import Bootloader, BootStore
from dualmcu.primary.device import PrimaryConfig
from dualmcu.primary.flash import Flash, Geometry
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


def test_pipelining_is_faster_on_a_link_with_latency():
    times = {}
    for pipeline in (False, True):
        s, _ = run(pipeline=pipeline)
        assert s.run_update() == "success"
        start = s.find("ota_start", "ncp")[0]["t"]
        times[pipeline] = s.find("ota_installed", "primary")[0]["t"] - start
    assert times[True] < 0.9 * times[False]


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
    (3_000_000, 8, 4064, 0.05, 0.5),  # milliseconds of work: a lost answer costs well under a second
    (9600, 1, 1024, 2.2, 4.0),  # a 1 KiB write takes ~1.1 s on the wire: never timed out early
])
def test_write_timeouts_come_from_the_work(baud, window, chunk, low, high):
    from dualmcu.ncp.core import NcpDevice

    ncp = NcpDevice(get_profile("cobs"), NcpConfig(baud=baud))
    sd = Sending(chunk=chunk, started=0, window=window, program_per_kib=0.0016)
    assert low < ncp._write_timeout(sd) < high
    wire = window * (chunk + 32) * 10 / baud
    assert ncp._write_timeout(sd) > wire  # never shorter than the bytes take
