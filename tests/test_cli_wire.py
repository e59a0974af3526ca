"""The wire-layer commands: encode, decode, ports."""

import json

from click.testing import CliRunner

from dualmcu.cli import main


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def test_version_and_help_list_every_command():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("ports", "decode", "encode"):
        assert cmd in r.output
    assert run("--version").output.startswith("dualmcu, version ")


def test_encode_matches_the_real_driver_vectors():
    r = run("encode", "--framing", "blynk", "blynk_otaUpdateStart", "chunk_size=1024", "--msg-id", "2")
    assert r.exit_code == 0 and r.output.strip() == "aa bc 67 41 03 02 00 00 04 0c bb"
    r = run("encode", "--framing", "blynk", "client_otaUpdateWrite", "offset=0", "chunk=0x00aa1120", "crc32=0x9d1c0472", "--msg-id", "7")
    assert r.output.strip() == "aa bc 67 42 04 07 00 00 00 00 00 04 00 00 cc 55 cc ee 20 72 04 1c 9d 5d bb"
    r = run("encode", "--framing", "blynk", "client_processEvent", "event=1")
    assert r.output.strip() == "aa f3 1c 21 04 01 5b bb"


def test_encode_errors_are_clear():
    r = run("encode", "blynk_otaUpdateStart", "chunk=5")
    assert r.exit_code == 2 and "chunk_size" in r.output
    r = run("encode", "blynk_otaUpdateStart", "chunk_size=70000")
    assert r.exit_code == 2 and "outside UInt16" in r.output
    r = run("encode", "otaUpdateStart")
    assert r.exit_code == 2 and "did you mean" in r.output
    r = run("encode", "client_otaUpdateWrite", "offset=0")
    assert r.exit_code == 2 and "needs chunk, crc32" in r.output


CAPTURE = (
    "aa bc 67 42 04 07 00 00 00 00 00 04 00 00 cc 55 cc ee 20 72 04 1c 9d 5d bb"
    " aa 12 a5 07 00 00 01 b7 bb"
    " aa 12 a5 06 00 15 51 bb"
    " aa f3 1c 21 04 01 5b bb"
    " aa 01 02 bb"
)


def test_decode_json_types_results_by_their_request():
    r = run("decode", "--framing", "blynk", "--json", CAPTURE)
    assert r.exit_code == 0
    recs = [json.loads(line) for line in r.output.splitlines()]
    assert [x["kind"] for x in recs] == ["invoke", "result", "result", "oneway", "error"]
    assert recs[0]["name"] == "client_otaUpdateWrite"
    assert recs[0]["args"] == {"offset": 0, "chunk": "00aa1120", "crc32": 0x9D1C0472}
    assert recs[1]["name"] == "client_otaUpdateWrite" and recs[1]["args"] == {"return": True}
    assert recs[2]["status"] == "args_read" and recs[2]["name"] is None
    assert recs[3]["args"] == {"event": 1}
    assert recs[4]["reason"] == "bad_crc"
    assert all(set(x) >= {"kind", "uid", "name", "msg_id", "args", "status", "raw"} for x in recs[:4])


def test_decode_reads_stdin_hex_and_raw_files(tmp_path):
    r = run("decode", "--framing", "blynk", "-", input=CAPTURE)
    assert "client_otaUpdateWrite" in r.output and "bad_crc" in r.output
    f = tmp_path / "cap.bin"
    f.write_bytes(bytes.fromhex(CAPTURE))
    assert run("decode", "--framing", "blynk", "-f", str(f)).output == r.output
    r = run("decode", "zz")
    assert r.exit_code == 2 and "not a hex string" in r.output


def test_hex_split_anywhere_between_blocks_reads_the_same():
    """stdin hex is parsed block by block: a digit pair cut by a block edge, or the 0x in
    front, must give the same bytes as the whole text."""
    from dualmcu.capture import hex_blocks

    text = ("0x" + CAPTURE).encode()
    whole = bytes.fromhex(CAPTURE)
    for cut in range(1, len(text)):
        assert b"".join(hex_blocks([text[:cut], text[cut:]])) == whole


def test_decode_streams_a_capture_that_has_not_ended(tmp_path):
    """A FIFO (or a port, or /dev/zero) never ends: each record is shown as its frame ends,
    and memory stays bounded, instead of reading to the end first (a MemoryError on
    /dev/zero once)."""
    import os
    import select
    import subprocess
    import sys

    fifo = tmp_path / "cap"
    os.mkfifo(fifo)
    cmd = [sys.executable, "-m", "dualmcu", "decode", "--framing", "blynk", "-f", str(fifo)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        with open(fifo, "wb", buffering=0) as w:
            w.write(bytes.fromhex("aa f3 1c 21 04 01 5b bb"))
            # Before the writer closes: the frame was decoded alone.
            assert select.select([p.stdout], [], [], 30)[0], "no record before the capture ended"
            line = p.stdout.readline()
            assert "client_processEvent" in line and p.poll() is None
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
        p.stdout.close()


def test_decode_refuses_to_pair_a_capture_larger_than_it_holds(tmp_path, monkeypatch):
    import dualmcu.cli.wire as wire

    monkeypatch.setattr(wire, "MAX_PAIRED", 8)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes.fromhex(CAPTURE))
    b.write_bytes(bytes.fromhex(CAPTURE))
    r = run("decode", "--framing", "blynk", "-f", str(a), "--other", str(b))
    assert r.exit_code == 2 and "larger than" in r.output and "Traceback" not in r.output


def test_decode_cobs_round_trip_from_encode():
    frame = run("encode", "blynk_setFirmwareInfo", "type=TMPL1", "version=1.2.3", "build=b", "blynk=0.6.4").output
    r = run("decode", "--json", frame)
    (rec,) = [json.loads(x) for x in r.output.splitlines()]
    assert rec["args"] == {"type": "TMPL1", "version": "1.2.3", "build": "b", "blynk": "0.6.4"}


def test_ports_runs():
    r = run("ports", "--json")
    assert r.exit_code == 0
    for line in r.output.splitlines():
        if line.startswith("{"):
            assert "device" in json.loads(line)


def test_decode_pairs_each_result_with_the_invoke_that_went_the_other_way(tmp_path):
    """Both sides number from 1: msg_id 1 of the MCU's hasUID answer must not be labelled with
    the MCU's own msg_id 1 call. A real capture had it printed as setFirmwareInfo."""
    from dualmcu.framing import get_profile
    from dualmcu.rpc.interface import INTERFACE
    from dualmcu.rpc.message import Invoke, Result

    p = get_profile("blynk")
    fw, has = INTERFACE["blynk_setFirmwareInfo"], INTERFACE["mcu_hasUID"]
    mcu_to_ncp = p.encode(Invoke(fw.uid, 1, fw.encode_args({"type": "T", "version": "1", "build": "b", "blynk": "0"})).encode())
    mcu_to_ncp += p.encode(Result(1, 0, has.encode_result(False)).encode())  # answers the NCP's msg_id 1
    ncp_to_mcu = p.encode(Invoke(has.uid, 1, has.encode_args({"uid": 0xE002})).encode())
    ncp_to_mcu += p.encode(Result(1, 0, fw.encode_result(True)).encode())
    a, b = tmp_path / "mcu.bin", tmp_path / "ncp.bin"
    a.write_bytes(mcu_to_ncp)
    b.write_bytes(ncp_to_mcu)
    r = run("decode", "--framing", "blynk", "--json", "-f", str(a), "--other", str(b))
    recs = [json.loads(line) for line in r.output.splitlines()]
    results = {(x["dir"], x["msg_id"]): x for x in recs if x["kind"] == "result"}
    assert results[("one", 1)]["name"] == "mcu_hasUID" and results[("one", 1)]["args"] == {"return": False}
    assert results[("other", 1)]["name"] == "blynk_setFirmwareInfo"


def test_decode_a_real_spy_log_in_time_order(tmp_path):
    """A log written by pyserial's own spy:// handler on a real pty: the MCU side's calls go
    out (TX) and the NCP's come in (RX), both numbered from 1, interleaved in time.  Each
    RESULT must be typed by the call that went the other way, and records come in the order
    they crossed the wire."""
    import os

    import serial

    from dualmcu.framing import get_profile
    from dualmcu.rpc.interface import INTERFACE
    from dualmcu.rpc.message import Invoke, Result

    p = get_profile("blynk")
    fw, has = INTERFACE["blynk_setFirmwareInfo"], INTERFACE["mcu_hasUID"]
    master, slave = os.openpty()
    log = tmp_path / "spy.log"
    port = serial.serial_for_url(f"spy://{os.ttyname(slave)}?file={log}", baudrate=115200, timeout=5)
    try:
        port.write(p.encode(Invoke(fw.uid, 1, fw.encode_args({"type": "T", "version": "1", "build": "b", "blynk": "0"})).encode()))
        incoming = p.encode(Invoke(has.uid, 1, has.encode_args({"uid": 0xE002})).encode())
        os.write(master, incoming)
        assert len(port.read(len(incoming))) == len(incoming)  # the spy logs what the program reads
        port.write(p.encode(Result(1, 0, has.encode_result(False)).encode()))
        incoming = p.encode(Result(1, 0, fw.encode_result(True)).encode())
        os.write(master, incoming)
        assert len(port.read(len(incoming))) == len(incoming)
    finally:
        port.close()
        os.close(master)
        os.close(slave)
    r = run("decode", "--framing", "blynk", "--json", "--spy", str(log))
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in r.output.splitlines()]
    assert [(x["dir"], x["kind"], x["name"]) for x in recs] == [
        ("tx", "invoke", "blynk_setFirmwareInfo"), ("rx", "invoke", "mcu_hasUID"),
        ("tx", "result", "mcu_hasUID"), ("rx", "result", "blynk_setFirmwareInfo")]
    assert recs[2]["args"] == {"return": False} and recs[3]["args"] == {"return": True}
    assert [x["t"] for x in recs] == sorted(x["t"] for x in recs)
    text = run("decode", "--framing", "blynk", "--spy", str(log)).output.splitlines()
    assert "[tx] result" in text[2] and "mcu_hasUID" in text[2]


def test_decode_refuses_what_is_not_a_spy_log(tmp_path):
    raw = tmp_path / "raw.log"
    raw.write_text("\x55\xaa garbage that is no hexdump\n")
    r = run("decode", "--spy", str(raw))
    assert r.exit_code == 2 and "not a spy:// log" in r.output and "Traceback" not in r.output
    r = run("decode", "--spy", str(raw), "aa bb")
    assert r.exit_code == 2 and "give it alone" in r.output


def test_decode_refuses_a_serial_port_given_as_a_file():
    """A tty opened as a plain file is cooked: it echoes what it receives back out of the
    UART, into the device under test. Captures come through spy:// instead."""
    import os

    master, slave = os.openpty()
    try:
        r = run("decode", "-f", os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)
    assert r.exit_code == 2 and "is a terminal or serial port" in r.output


def test_a_result_after_a_reboot_answers_the_latest_call_with_its_msg_id():
    """A rebooted side numbers its calls from 1 again. Its first boot's msg_id 2 (a ping the NCP
    never answered) stays unanswered; the RESULT that follows the reboot answers the new call
    with msg_id 2, not the old one: it was typed as ncp_ping, with "15 bytes left over"."""
    from dualmcu.capture import decode_directions
    from dualmcu.framing import get_profile
    from dualmcu.rpc.interface import INTERFACE
    from dualmcu.rpc.message import Invoke, Result

    p = get_profile("blynk")
    ping, version = INTERFACE["ncp_ping"], INTERFACE["blynk_getNcpVersion"]
    calls = [(0.1, 0, p.encode(Invoke(ping.uid, 2, b"").encode())),  # lost: never answered
             (5.0, 2, p.encode(Invoke(ping.uid, 1, b"").encode())),  # after the reboot
             (5.2, 4, p.encode(Invoke(version.uid, 2, b"").encode()))]
    answers = [(5.1, 3, p.encode(Result(1, 0, b"").encode())),
               (5.3, 5, p.encode(Result(2, 0, version.encode_result(("0.7.0", True))).encode()))]
    recs = list(decode_directions(answers, calls, "blynk", names=("tx", "rx")))
    assert [(r["dir"], r["kind"], r["name"], r["msg_id"]) for r in recs] == [
        ("rx", "invoke", "ncp_ping", 2), ("rx", "invoke", "ncp_ping", 1), ("tx", "result", "ncp_ping", 1),
        ("rx", "invoke", "blynk_getNcpVersion", 2), ("tx", "result", "blynk_getNcpVersion", 2)]
    assert recs[-1]["args"] == {"version": "0.7.0", "return": True} and "reason" not in recs[-1]


def test_encode_refuses_a_message_longer_than_the_framing_carries_unless_asked():
    chunk = "0x" + "00" * 2000
    r = run("encode", "--framing", "blynk", "client_otaUpdateWrite", "offset=0", f"chunk={chunk}", "crc32=0")
    assert r.exit_code == 2
    assert "the message has 2016 bytes, more than the blynk framing carries (1536)" in r.output
    r = run("encode", "--framing", "blynk", "--oversize", "client_otaUpdateWrite", "offset=0", f"chunk={chunk}",
            "crc32=0")
    assert r.exit_code == 0
    frame = bytes.fromhex(r.output.strip().replace(" ", ""))
    assert frame[0] == 0xAA and frame[-1] == 0xBB and len(frame) > 2016
