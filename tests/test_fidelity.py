"""Behaviour a real peer sees: the emulated NCP answers as the real one does (the driver's
specification, interface timeouts and examples decide), byte for byte where a vector exists."""

from __future__ import annotations

import os
import pty
import select
import termios
import tty

import pytest

from dualmcu.framing import get_profile
from dualmcu.ncp.core import NcpConfig, NcpDevice
from dualmcu.ncp.update import Shipment
from dualmcu.rpc.interface import INTERFACE, STATES
from dualmcu.rpc.message import Invoke, Result, Status, parse
from dualmcu.sides import reboot_port
from dualmcu.ports import Port, open_port
from dualmcu.sim import Simulation
from support import provisioned, tagged

H = bytes.fromhex
BLYNK = get_profile("blynk")


def answers(ncp: NcpDevice) -> list:
    d = BLYNK.decoder()
    return [parse(f.message) for f in d.feed(ncp.data_to_send())]


def test_initialize_as_the_first_call_after_power_up_answers_true_byte_for_byte():
    """The driver specification's initialization vector: no setFirmwareInfo before it."""
    ncp = NcpDevice(BLYNK, NcpConfig(), 0.0)
    ncp.receive(H("aa bc 67 01 03 06 00 54 4d 50 4c 30 76 46 6b 46 6d 4a 4d 37 00 51 50 6f 77 65 72 00 68 bb"), 0.0)
    assert ncp.data_to_send().startswith(H("aa 12 a5 06 00 00 01 a1 bb"))


def test_an_ncp_initialised_before_any_report_offers_only_after_one():
    """The gate sits on the OTA side: no offer until the primary reports its firmware."""
    new = tagged("1.1.0", "TMPLF", 40_000)
    ncp = NcpDevice(BLYNK, NcpConfig(connect_time=0.1), 0.0, Shipment.from_bytes(new))
    fn = INTERFACE["blynk_initialize"]
    ncp.receive(BLYNK.encode(Invoke(fn.uid, 1, fn.encode_args({"template_id": "TMPLF", "template_name": "x"})).encode()), 0.0)
    for t in (0.1, 0.2, 1.0):
        ncp.tick(t)
    assert ncp.state == 5 and ncp.offers_made == 0  # connected, nothing offered
    fw = INTERFACE["blynk_setFirmwareInfo"]
    ncp.receive(BLYNK.encode(Invoke(fw.uid, 2, fw.encode_args(
        {"type": "TMPLF", "version": "1.0.0", "build": "b", "blynk": "0.6.4"})).encode()), 1.1)
    assert ncp.offers_made == 1


def test_state_11_is_never_reported_while_the_primary_is_updated():
    """11 is the NCP updating itself ("NCP Upgrade"); the MCU's own update leaves it connected."""
    s = Simulation(provisioned(tagged("1.0.0", "TMPLF", 30_000)), Shipment.from_bytes(tagged("1.1.0", "TMPLF", 120_000)))
    assert s.run_update() == "success"
    assert STATES[11] == "ncp_upgrade"
    assert all(e["state"] != "ncp_upgrade" for e in s.find("state", "ncp"))
    assert all(e["state"] != "ncp_upgrade" for e in s.find("ncp_state", "primary"))


@pytest.mark.parametrize("set_ms,ok,dst", [(None, False, 0), (1_700_000_000_000, True, 1)])
def test_get_time_reports_dst_status_as_the_interface_defines_it(set_ms, ok, dst):
    ncp = NcpDevice(BLYNK, NcpConfig(), 0.0)
    if set_ms is not None:
        fn = INTERFACE["blynk_setTime"]
        ncp.receive(BLYNK.encode(Invoke(fn.uid, 1, fn.encode_args({"time": set_ms})).encode()), 0.0)
    fn = INTERFACE["blynk_getTime"]
    ncp.receive(BLYNK.encode(Invoke(fn.uid, 2, b"").encode()), 0.0)
    r = [m for m in answers(ncp) if isinstance(m, Result) and m.msg_id == 2][0]
    values = fn.decode_result(r.data)
    assert values["return"] is ok and values["dst_status"] == dst  # 0 no information, 1 not applicable


def test_set_time_beyond_year_9999_is_refused_and_get_time_keeps_working():
    ncp = NcpDevice(BLYNK, NcpConfig(), 0.0)
    st, gt = INTERFACE["blynk_setTime"], INTERFACE["blynk_getTime"]
    ncp.receive(BLYNK.encode(Invoke(st.uid, 1, st.encode_args({"time": 2**63 - 1})).encode()), 0.0)
    ncp.receive(BLYNK.encode(Invoke(gt.uid, 2, b"").encode()), 0.0)
    got = {m.msg_id: m for m in answers(ncp) if isinstance(m, Result)}
    assert st.decode_result(got[1].data)["return"] is False
    assert got[2].status == Status.OK and ncp.ep.stats["handler_errors"] == 0


def test_a_rebooted_side_is_back_at_its_initial_baud_on_the_port_itself():
    """After hw_setUartBaudRate(115200) and a reboot, the port (its termios) is at 38400 again."""
    master, slave = pty.openpty()
    tty.setraw(master)
    try:
        port = Port(open_port(os.ttyname(slave), 38400))
        port.set_baud(115200)
        assert termios.tcgetattr(port.serial.fileno())[4] == termios.B115200
        reboot_port(port, 38400, lambda *a, **k: None)
        assert termios.tcgetattr(port.serial.fileno())[5] == termios.B38400
        port.close()
    finally:
        os.close(master)
        os.close(slave)


# -- a hostile peer cannot crash the NCP or make it grow --------------------------------------

@pytest.mark.parametrize("framing", ["cobs", "blynk"])
def test_a_long_vendor_prefix_is_refused_and_the_hotspot_name_still_answers(framing):
    """Two frames used to kill the NCP: a 4080-byte prefix, then getHotspotName."""
    p = get_profile(framing)
    ncp = NcpDevice(p, NcpConfig(), 0.0)
    vp, hs = INTERFACE["blynk_setVendorPrefix"], INTERFACE["blynk_getHotspotName"]
    name = "x" * (p.max_message - 16)
    ncp.receive(p.encode(Invoke(vp.uid, 1, vp.encode_args({"name": name})).encode()), 0.0)
    ncp.receive(p.encode(Invoke(hs.uid, 2, b"").encode()), 0.0)
    d = p.decoder()
    got = {m.msg_id: m for m in (parse(f.message) for f in d.feed(ncp.data_to_send())) if isinstance(m, Result)}
    assert vp.decode_result(got[1].data)["return"] is False
    assert got[2].status == Status.OK and hs.decode_result(got[2].data)["name"].startswith("Blynk")


def test_an_answer_too_large_for_a_frame_gets_an_error_status_not_a_crash():
    """Whatever a handler returns, the endpoint answers: a RESULT that cannot be framed becomes
    status 0x16 (results write)."""
    from dualmcu.rpc import Endpoint

    ep = Endpoint("ncp", BLYNK)
    ep.handle("blynk_getNcpVersion", lambda inc: ("v" * 4000, True))
    fn = INTERFACE["blynk_getNcpVersion"]
    ep.receive(BLYNK.encode(Invoke(fn.uid, 3, b"").encode()), 0.0)
    (r,) = [parse(f.message) for f in BLYNK.decoder().feed(ep.data_to_send())]
    assert r.msg_id == 3 and r.status == Status.RESULTS_WRITE


def test_firmware_reports_do_not_grow_the_ncp():
    ncp = NcpDevice(BLYNK, NcpConfig(), 0.0)
    fw = INTERFACE["blynk_setFirmwareInfo"]
    for i in range(2000):
        ncp.receive(BLYNK.encode(Invoke(fw.uid, i % 60000 + 1, fw.encode_args(
            {"type": "T", "version": f"1.0.{i}", "build": "b", "blynk": "0.6.4"})).encode()), 0.0)
        ncp.data_to_send()
    assert ncp.primary.versions == ["1.0.0", "1.0.1999"]


def test_a_peer_that_stops_reading_costs_bytes_never_the_emulator():
    """Nobody reads the other end of the pty: writes queue up to the bound, then the oldest
    queued bytes are dropped and counted; write never blocks or raises."""
    master, slave = pty.openpty()
    tty.setraw(master)
    try:
        port = Port(open_port(os.ttyname(slave), 115200), max_queue=64 * 1024)
        for _ in range(64):
            port.write(bytes(16 * 1024))  # 1 MiB in all; a pty holds a few KiB
        assert len(port.queue) <= 64 * 1024 and port.dropped > 0
        before = len(port.queue)
        for _ in range(50):  # the peer reads again: the queue drains
            while select.select([master], [], [], 0.01)[0]:
                os.read(master, 65536)
            port.write(b"")
        assert len(port.queue) < before
        port.close()
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("fed,hint", [(b"", "no bytes at all"), (b"\x55" * 300, "no valid blynk frame")])
def test_a_side_that_hears_nothing_usable_says_so_once_with_the_likely_cause(fed, hint):
    from dualmcu.shell import Silence

    said = []
    ncp = NcpDevice(BLYNK, NcpConfig(), 0.0)
    watch = Silence(lambda kind, **f: said.append((kind, f)), "blynk", 38400, after=5.0)
    watch.started = 0.0
    if fed:
        ncp.receive(fed, 1.0)
        watch.bytes += len(fed)
    watch.check(ncp, 4.0)
    assert said == []  # not yet
    watch.check(ncp, 6.0)
    watch.check(ncp, 9.0)
    assert [k for k, _ in said] == ["no_peer"] and hint in said[0][1]["hint"]
    assert said[0][1]["bytes"] == len(fed)
