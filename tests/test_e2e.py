"""The real processes: `dualmcu run`, each side alone on a pty, and the file commands."""

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.rpc.events import Event

TIMEOUT = 90


def dualmcu(*args, timeout=TIMEOUT):
    return subprocess.run([sys.executable, "-m", "dualmcu", *map(str, args)], capture_output=True, timeout=timeout)


def events(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]


def flash_show(path):
    r = dualmcu("flash", "show", "--flash", path, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def shipment(tmp_path):
    data = build_image(make_info("2.3.4", "TMPLE2E", build="Mar  3 2026 03:03:03"), 200_000)
    path = tmp_path / "fw-2.3.4.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("framing,link", [("cobs", "pty"), ("blynk", "pty"), ("cobs", "socket")])
def test_run_updates_two_real_processes(tmp_path, shipment, framing, link):
    fw, sha = shipment
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", fw, "--framing", framing, "--link", link, "--flash", flash,
                "--workdir", tmp_path / "work", "--json")
    evs = events(r.stdout)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    result = evs[-1]
    assert result["event"] == "result" and result["confirmed"] == "2.3.4" and result["ncp_outcome"] == "success"
    sides = {e["side"] for e in evs}
    assert {"ncp", "primary", "run"} <= sides
    d = flash_show(flash)
    assert d["active_slot"] == "B" and d["confirmed"] is True and d["trial"] is False
    b = d["slots"]["B"]
    assert (b["version"], b["fw_type"], b["length"], b["sha256"], b["valid"]) == ("2.3.4", "TMPLE2E", 200_000, sha, True)
    assert d["slots"]["A"]["valid"] is True


@pytest.mark.slow
def test_a_json_reader_that_stops_reading_for_a_while_holds_up_no_side(tmp_path):
    """`dualmcu run --json | less`, with the pager left on its first screen for 8 s while the
    sides log a line a chunk: a side blocked writing its log answered nothing, and such a run
    ended in its timeout. Now the lines wait, the update completes, and every line arrives."""
    fw = tmp_path / "fw.bin"
    fw.write_bytes(build_image(make_info("2.0.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 1 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "dualmcu", "run", "--firmware", fw, "--chunk-size", "1024",
                             "--json", "--timeout", "40", "--workdir", tmp_path / "w"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(8)  # nothing read: the pipe fills within the first second
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    evs = events(out)
    assert proc.returncode == 0, err[-2000:]
    assert evs[-1]["event"] == "result" and evs[-1]["confirmed"] == "2.0.0"
    progress = [e["offset"] for e in evs if e["side"] == "ncp" and e["event"] == "ota_progress"]
    assert progress == list(range(1024, (1 << 20) + 1, 1024))
    assert not [e for e in evs if e["event"] == "events_dropped"]


def test_a_side_whose_event_lines_cannot_be_written_ends_with_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "dualmcu", "ncp", "--port", "loop://", "--json"],
                           stdout=full, stderr=subprocess.PIPE, timeout=TIMEOUT)
    assert r.returncode == 3
    assert r.stderr.decode() == "Error: cannot write the event lines to stdout: No space left on device\n"


@pytest.mark.slow
def test_run_with_its_stdout_closed_still_updates(tmp_path):
    """`dualmcu run --json >&-`: a closed descriptor is the next one opened, and was taken by
    the virtual UART, which the children's stdout pipes then replaced (exit 3)."""
    r = subprocess.run([sys.executable, "-m", "dualmcu", "run", "--json", "--flash", tmp_path / "f.flash",
                        "--workdir", tmp_path / "w"], stderr=subprocess.PIPE, timeout=TIMEOUT,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 0, r.stderr[-2000:]
    assert flash_show(tmp_path / "f.flash")["confirmed"] is True


def test_a_killed_primary_process_boots_from_its_flash_and_the_update_completes(tmp_path, shipment):
    fw, sha = shipment
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", fw, "--flash", flash, "--workdir", tmp_path / "w", "--json",
                "--kill-primary-at", 60000)
    evs = events(r.stdout)
    assert r.returncode == 0, r.stderr[-2000:]
    kinds = [(e["side"], e["event"]) for e in evs]
    killed = kinds.index(("run", "primary_killed"))
    boots = [e for e in evs[killed:] if e["event"] == "booted"]
    assert boots[0]["version"] != "2.3.4" and boots[0]["slot"] == "A"  # the old image, from the file
    assert flash_show(flash)["slots"]["B"]["sha256"] == sha


def test_run_reports_a_rollback_with_a_non_zero_exit(tmp_path):
    bad = tmp_path / "bad.bin"
    r = dualmcu("image", bad, "--mcu", "9.0.0", "--type", "TMPLBAD", "--size", "64K", "--test", "fail-health")
    assert r.returncode == 0, r.stderr
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", bad, "--flash", flash, "--workdir", tmp_path / "w")
    assert r.returncode == 1
    assert b"rollback" in r.stdout + r.stderr
    d = flash_show(flash)
    assert d["active_slot"] == "A" and d["confirmed"] and d["slots"]["A"]["version"] != "9.0.0"


def test_run_refused_update_says_why(tmp_path, shipment):
    fw, _ = shipment
    r = dualmcu("run", "--firmware", fw, "--battery", "5", "--max-defer", "1", "--workdir", tmp_path / "w", "--json")
    assert r.returncode == 1
    evs = events(r.stdout)
    # The run's verdict may come on the NCP's outcome before the primary's own line is heard;
    # that line is shown all the same, before the result.
    assert any(e["side"] == "primary" and e["event"] == "ota_deferred"
               and e["reason"] == "low_battery" for e in evs[:-1])
    assert evs[-1]["reason"] == "update deferred by the device (low_battery) past --max-defer"
    assert evs[-1]["deferred_reason"] == "low_battery"
    old = tmp_path / "old.bin"
    old.write_bytes(build_image(make_info("0.1.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 20_000))
    r = dualmcu("run", "--firmware", old, "--workdir", tmp_path / "w2", "--json")
    # The primary's reason comes with the NCP's outcome: "refused" alone left the user guessing.
    assert r.returncode == 1 and events(r.stdout)[-1]["reason"] == "update failed: refused (not_newer)"


def test_run_with_a_hanging_build_ends_once_the_old_image_runs_again(tmp_path):
    hang = tmp_path / "hang.bin"
    r = dualmcu("image", hang, "--mcu", "9.0.0", "--type", "TMPLE2E", "--test", "hang", "--size", "40K")
    assert r.returncode == 0
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", hang, "--commit-timeout", "2", "--flash", flash, "--workdir", tmp_path / "w",
                "--json")
    assert r.returncode == 1
    result = events(r.stdout)[-1]
    assert result["ncp_outcome"] == "rollback" and result["rollback_reason"] == "commit_timeout"
    d = flash_show(flash)
    assert d["active_slot"] == "A" and d["confirmed"] and d["last_failure"] == "commit_timeout"
    assert d["counters"]["rollbacks"] == 1 and d["config"]["schema"] == 1


@pytest.mark.parametrize("at", [4, 5, 6, 7])
def test_a_rollback_ends_the_run_whichever_side_is_heard_first(at):
    """The sides' lines reach the run on one loop, each side's in order but the two
    interleaved in no set order. The NCP's outcome follows the primary's boot of the old image
    on the wire, yet may be heard anywhere from the primary's COMMIT_TIMEOUT on. A run once
    waited forever when the primary's READY after its rollback came before the outcome."""
    from dualmcu.runner import Run, RunOptions

    run = Run(RunOptions())
    run.new_version = "9.0.0"
    primary = [{"side": "primary", "event": Event.BOOTED, "version": "1.0.0", "slot": "A"},
               {"side": "primary", "event": Event.READY, "version": "1.0.0"},
               {"side": "primary", "event": Event.BOOTED, "version": "9.0.0", "slot": "B",
                "trial": True},
               {"side": "primary", "event": Event.COMMIT_TIMEOUT, "waited": 2.0},
               {"side": "primary", "event": Event.ROLLBACK, "reason": "commit_timeout"},
               {"side": "primary", "event": Event.BOOTED, "version": "1.0.0", "slot": "A"},
               {"side": "primary", "event": Event.READY, "version": "1.0.0"}]
    outcome = {"side": "ncp", "event": Event.OTA_OUTCOME, "outcome": "rollback"}
    stream = [*primary[:at], outcome, *primary[at:]]
    verdicts = [run.on_event(dict(ev)) for ev in stream]
    # The first READY, before the update, ends nothing; the last line heard ends the run.
    assert verdicts[:-1] == [None] * (len(stream) - 1)
    assert verdicts[-1] == (1, "rolled back to 1.0.0 (commit_timeout); "
                               "the old image runs, confirmed")


def test_the_sides_lines_keep_their_order_across_partial_reads_and_the_end():
    """The run reads both sides' lines in its own thread (no reader threads, no queue): a line
    split between two reads, a line that is not JSON, an unfinished last line and a side's
    end each come out whole and in the side's order, and --json is flushed before each wait."""
    from dualmcu.runner import EOF, Lines

    # Each side prints part of a line alone, pauses, goes on, pauses again in the middle of
    # its second line, and ends without a final newline.
    script = textwrap.dedent("""
        import sys, time
        side, w = sys.argv[1], sys.stdout.buffer
        for part in (b'{"side": "%s", "event": "a", "n"' % side.encode(),
                     b': 1}\\n{"side": "%s", "event": "a", "n"' % side.encode(),
                     b': 2}\\nnot json\\n\\n{"side": "%s", "event": "a", "n": 3}' % side.encode()):
            w.write(part)
            w.flush()
            time.sleep(0.2)
    """)
    waits = []
    lines = Lines(before_wait=lambda: waits.append(1))
    procs = {side: subprocess.Popen([sys.executable, "-c", script, side], stdout=subprocess.PIPE)
             for side in ("ncp", "primary")}
    for side, p in procs.items():
        lines.add(side, p)
    got: dict[str, list] = {"ncp": [], "primary": []}
    while sum(x[-1:] == [EOF] for x in got.values()) < 2:
        ev = lines.get(10.0)
        assert ev is not None, "no line within 10 s"
        got[ev["side"]].append(ev.get("n", ev.get("text", ev["event"])))
    for p in procs.values():
        assert p.wait(5) == 0
    assert got == {side: [1, 2, "not json", 3, EOF] for side in procs}
    assert len(waits) >= 2  # at least once before the first lines, once during the pause
    assert lines.get(0.01) is None  # both ended: nothing more, and no busy wait


def test_a_deferral_is_said_with_its_reason_when_the_ncp_is_heard_first():
    """The NCP's outcome can end the run before the primary's OTA_DEFERRED line is heard; the
    telemetry the outcome carries gives the reason (CI once saw 'deferred by the device (None)')."""
    from dualmcu.runner import Run, RunOptions

    run = Run(RunOptions())
    run.new_version = "9.0.0"
    verdict = run.on_event({"side": "ncp", "event": Event.OTA_OUTCOME, "outcome": "deferred",
                            "telemetry": {"ota_state": "deferred", "ota_reason": "low_battery"}})
    assert verdict == (1, "update deferred by the device (low_battery) past --max-defer")
    assert run.state["deferred_reason"] == "low_battery"


def test_a_run_that_times_out_on_a_trial_image_says_why():
    """--timeout shorter than --commit-timeout cannot see a rollback: the reason says so."""
    from dualmcu.runner import Run, RunOptions

    run = Run(RunOptions())
    run.new_version = "9.0.0"
    run.on_event({"side": "primary", "event": Event.BOOTED, "version": "9.0.0", "trial": True})
    assert run._on_trial() == ("; 9.0.0 ran on trial, unconfirmed, and is rolled back only 60 s "
                               "after its boot (--commit-timeout)")
    run.on_event({"side": "primary", "event": Event.CONFIRMED, "version": "9.0.0"})
    assert run._on_trial() == ""


def test_side_alone_on_a_missing_port_fails_clearly(tmp_path):
    factory = tmp_path / "factory.bin"
    factory.write_bytes(build_image(make_info("2.0.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 20_000))
    r = dualmcu("primary", "--port", "/dev/does-not-exist", "--flash", tmp_path / "f", "--provision", factory)
    assert r.returncode == 3 and b"no port at /dev/does-not-exist" in r.stderr
    # A wrong port leaves no flash file behind: the command given again with the right port
    # provisions the image it is given then.
    assert not (tmp_path / "f").exists()
    # A factory image the device could not describe is refused first, before port and flash.
    r = dualmcu("primary", "--port", "/dev/does-not-exist", "--flash", tmp_path / "g", "--provision", __file__)
    assert r.returncode == 2 and b"firmware tag" in r.stderr and not (tmp_path / "g").exists()
    r = dualmcu("ncp", "--port", "socket://127.0.0.1:1")
    assert r.returncode == 3 and b"nothing is listening" in r.stderr


def test_a_failed_start_writes_nothing_to_the_flash(tmp_path):
    """Every check runs before a byte goes to the flash: a blank flash file made earlier stays
    blank when the port cannot be opened, and a factory image too big for a slot is refused
    before the port is tried and the file is made."""
    from dualmcu.primary.flash import Flash, Geometry

    blank = tmp_path / "blank.flash"
    Flash.open(blank, Geometry(4096, 256 * 1024)).close()
    before = blank.read_bytes()
    factory = tmp_path / "factory.bin"
    factory.write_bytes(build_image(make_info("2.0.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 20_000))
    r = dualmcu("primary", "--port", "/dev/does-not-exist", "--flash", blank, "--provision", factory)
    assert r.returncode == 3 and b"no port at /dev/does-not-exist" in r.stderr
    assert blank.read_bytes() == before
    big = tmp_path / "big.bin"
    big.write_bytes(build_image(make_info("2.0.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 300_000))
    for flash in (blank, tmp_path / "new.flash"):
        r = dualmcu("primary", "--port", "/dev/does-not-exist", "--flash", flash, "--provision", big,
                    "--slot-size", "256K")
        assert r.returncode == 2, r.stderr
        assert r.stderr.decode().strip() == ("Error: factory image of 300000 bytes does not fit "
                                             "a 262144-byte slot")
    assert blank.read_bytes() == before and not (tmp_path / "new.flash").exists()
    # A flash path under a file: said as such, not as the errno's "File exists".
    r = dualmcu("primary", "--port", "loop://", "--flash", factory / "sub" / "x.flash", "--provision", factory)
    assert r.returncode == 2
    assert r.stderr.decode() == (f"Error: cannot make the flash file {factory / 'sub' / 'x.flash'}: "
                                 f"{factory} is not a directory\n")


@pytest.mark.parametrize("url, said", [
    ("", "no port given"),
    ("/dev/null", "/dev/null is not a serial port"),
    ("/", "/ is a directory, not a port"),
    ("socket://localhost:99999", "expected socket://HOST:PORT with a port from 1 to 65535"),
    ("socket://localhost", "expected socket://HOST:PORT"),
    ("socket://[::1:5", "expected socket://HOST:PORT"),
    ("socket://localhost:5?x=1", "unknown option 'x' (known: logging)"),
    ("socket://no-such-host.invalid:5", "no host of that name"),
    ("bogus://x", "protocol 'bogus' not known"),
])
def test_a_port_that_cannot_be_opened_is_said_in_one_line(url, said):
    """pyserial's own words for a bad URL were a formatting error of its own, or the URL said
    twice; each is said once, with what was expected."""
    from dualmcu.ports import PortError, open_port

    with pytest.raises(PortError) as e:
        open_port(url, 115200)
    assert said in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).count(url) <= 1 or not url


@pytest.mark.parametrize("code, said", [
    (errno.ENXIO, "cannot open /dev/ttyUSB9: no device behind that path (unplugged?)"),
    (errno.EIO, "cannot open /dev/ttyUSB9: Input/output error"),
    (errno.EACCES, "no permission to open /dev/ttyUSB9"),
])
def test_a_port_error_with_an_errno_says_the_path_and_the_cause_once(code, said):
    """pyserial repeats the path and the errno ("[Errno 6] could not open port P: [Errno 6] No
    such device or address: 'P'"); the line names each once."""
    import serial

    from dualmcu.ports import _open_failure

    e = serial.SerialException(code, f"could not open port /dev/ttyUSB9: [Errno {code}] x")
    text = _open_failure("/dev/ttyUSB9", e)
    assert text.startswith(said) and text.count("/dev/ttyUSB9") == 1 and "Errno" not in text


def test_a_blank_flash_needs_a_factory_image(tmp_path):
    r = dualmcu("primary", "--port", "/dev/null", "--flash", tmp_path / "f")
    assert r.returncode == 2 and b"--provision" in r.stderr


def test_a_port_in_use_is_refused(tmp_path):
    from dualmcu.relay import Relay
    from dualmcu.ports import PortError, open_port

    with Relay("pty") as relay:
        first = open_port(relay.paths["a"], 115200)
        try:
            with pytest.raises(PortError, match="in use"):
                open_port(relay.paths["a"], 115200)
        finally:
            first.close()


def test_ncp_firmware_without_a_tag_is_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(os.urandom(1000))
    r = dualmcu("ncp", "--port", "/dev/null", "--firmware", raw)
    assert r.returncode == 2 and b"no firmware tag" in r.stderr


def test_python_dash_m_runs_each_side():
    for side in ("ncp", "primary"):
        r = subprocess.run([sys.executable, "-m", "dualmcu", side, "--help"], capture_output=True, timeout=30)
        assert r.returncode == 0 and b"--port" in r.stdout


def test_each_side_alone_with_once_over_a_relay(tmp_path, shipment):
    """`dualmcu ncp` and `dualmcu primary`, started by hand on the two ends of a virtual UART."""
    from dualmcu.relay import Relay

    fw, sha = shipment
    factory = tmp_path / "factory.bin"
    factory.write_bytes(build_image(make_info("2.0.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 50_000))
    flash = tmp_path / "dev.flash"
    with Relay("pty") as relay:
        ncp = subprocess.Popen([sys.executable, "-m", "dualmcu", "ncp", "--port", relay.paths["a"], "--firmware", str(fw),
                                "--once", "--json", "--store", str(tmp_path / "store")], stdout=subprocess.PIPE)
        mcu = subprocess.Popen([sys.executable, "-m", "dualmcu", "primary", "--port", relay.paths["b"], "--flash", str(flash),
                                "--provision", str(factory), "--once", "--json", "--prefetch"], stdout=subprocess.PIPE)
        out_mcu, _ = mcu.communicate(timeout=TIMEOUT)
        out_ncp, _ = ncp.communicate(timeout=TIMEOUT)
    assert mcu.returncode == 0 and ncp.returncode == 0
    assert events(out_mcu)[-1] == {"side": "primary", "event": "exit", "code": 0, "reason": "confirmed"}
    assert any(e["event"] == "prefetch_done" for e in events(out_ncp))
    assert (tmp_path / "store" / "ota.bin").read_bytes() == fw.read_bytes()
    assert flash_show(flash)["slots"]["B"]["sha256"] == sha


def test_run_on_a_device_already_updated_is_up_to_date(tmp_path, shipment):
    fw, _ = shipment
    flash = tmp_path / "dev.flash"
    assert dualmcu("run", "--firmware", fw, "--flash", flash, "--workdir", tmp_path / "w").returncode == 0
    r = dualmcu("run", "--firmware", fw, "--flash", flash, "--workdir", tmp_path / "w2")
    assert r.returncode == 0 and r.stdout.startswith(b"OK: already running 2.3.4")


def test_run_survives_a_power_cut_in_the_middle_of_a_flash_operation(tmp_path, shipment):
    fw, sha = shipment
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", fw, "--flash", flash, "--workdir", tmp_path / "w", "--json", "--power-cut-at", 30)
    evs = events(r.stdout)
    assert r.returncode == 0, r.stderr[-2000:]
    (cut,) = [e for e in evs if e["event"] == "power_cut"]
    assert cut["op"] == 30 and 0 < cut["applied"]
    assert evs[-1]["power_cuts"] == 1
    assert flash_show(flash)["slots"]["B"]["sha256"] == sha


def test_run_survives_an_ncp_restart_mid_transfer(tmp_path, shipment):
    fw, sha = shipment
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", fw, "--flash", flash, "--workdir", tmp_path / "w", "--json",
                "--kill-ncp-at", 50000, "--heartbeat", 0.5)
    evs = events(r.stdout)
    assert r.returncode == 0, r.stderr[-2000:]
    assert evs[-1]["ncp_kills"] == 1
    assert any(e["event"] == "ncp_restarted" for e in evs)
    assert flash_show(flash)["slots"]["B"]["sha256"] == sha


def test_run_on_a_paced_noisy_link_counts_what_it_injected(tmp_path, shipment):
    fw, sha = shipment
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", fw, "--flash", flash, "--workdir", tmp_path / "w", "--json", "--pace",
                "--baud", 3000000, "--garbage", 2e-5, "--dup", 2e-5, "--seed", 5, "--write-timeout", 0.3)
    evs = events(r.stdout)
    assert r.returncode == 0, r.stderr[-2000:]
    link = evs[-1]["link"]
    assert link["garbage_bytes"] + link["duplicated"] > 0
    assert flash_show(flash)["slots"]["B"]["sha256"] == sha


@pytest.mark.slow
def test_run_counts_what_a_killed_side_sent_and_cuts_both_ways_once(tmp_path, shipment):
    # Each side paces and counts its own direction; a side killed mid-transfer cannot report
    # at exit, so its counts live in a file the run reads, and the restarted side adds to it.
    fw, sha = shipment
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", fw, "--flash", flash, "--workdir", tmp_path / "w", "--json", "--link", "socket",
                "--pace", "--baud", 921600, "--kill-primary-at", 60000, "--disconnect", "b@1.5:0.3")
    evs = events(r.stdout)
    assert r.returncode == 0, r.stderr[-2000:]
    result = evs[-1]
    link = result["link"]
    assert result["primary_kills"] == 1 and link["disconnects"] == 1
    assert link["a_to_b"] >= 200_000 and link["bytes"] == link["a_to_b"] + link["b_to_a"]
    assert flash_show(flash)["slots"]["B"]["sha256"] == sha


def test_link_relays_between_two_ports_and_counts_faults(tmp_path):
    import serial

    p = subprocess.Popen([sys.executable, "-m", "dualmcu", "link", "--json", "--no-pace", "--drop", "0.01",
                          "--seed", "3", "--duration", "4"], stdout=subprocess.PIPE)
    first = json.loads(p.stdout.readline())
    a = serial.Serial(first["a"], 115200, timeout=0.2)
    b = serial.Serial(first["b"], 115200, timeout=0.2)
    data = bytes(range(256)) * 20
    a.write(data)
    got = b""
    for _ in range(20):
        got += b.read(10000)
        if len(got) >= len(data) * 0.95:
            break
    out, _ = p.communicate(timeout=30)
    summary = events(out)[-1]
    a.close()
    b.close()
    assert summary["event"] == "summary" and summary["bytes"] == len(data)
    assert summary["dropped"] > 0 and len(got) == len(data) - summary["dropped"]


def test_link_stopped_with_sigterm_says_its_summary():
    """A script runs the relay in the background and stops it with `kill`: it still learns
    what crossed and what was injected, as with Ctrl-C."""
    import signal

    p = subprocess.Popen([sys.executable, "-m", "dualmcu", "link", "--json", "--no-pace"],
                         stdout=subprocess.PIPE)
    first = json.loads(p.stdout.readline())
    assert first["event"] == "link"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 143  # stopped, not done: never the code of a success
    assert events(out)[-1]["event"] == "summary"


def test_run_stopped_by_sigterm_stops_its_sides_says_so_and_keeps_its_files(tmp_path, shipment):
    """`timeout 60 dualmcu run ...` or a CI job's end sends SIGTERM. The run ends as on Ctrl-C:
    its sides stopped, its result said, its work directory kept, exit 143."""
    import signal

    fw, _ = shipment
    work = tmp_path / "w"
    p = subprocess.Popen([sys.executable, "-m", "dualmcu", "run", "--firmware", str(fw),
                          "--workdir", str(work), "--json", "--pace", "--baud", "115200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if json.loads(line).get("event") == "ota_progress":
            break
    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
        sides = [int(pid) for pid in f.read().split()]
    assert len(sides) == 2
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=30)
    assert p.returncode == 143, err[-2000:]
    result = events(b"".join(lines) + rest)[-1]
    assert result["event"] == "result" and result["reason"] == "terminated"
    assert result["exit_code"] == 143
    assert b"terminated; work files kept in " + str(work).encode() in err
    assert (work / "ncp.log").exists() and (work / "primary.log").exists()
    for pid in sides:  # stopped and reaped by the run
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_killed_primary_resumes_where_it_stopped(tmp_path, shipment):
    fw, sha = shipment
    flash = tmp_path / "dev.flash"
    r = dualmcu("run", "--firmware", fw, "--flash", flash, "--workdir", tmp_path / "w", "--json",
                "--kill-primary-at", 150000)
    evs = events(r.stdout)
    assert r.returncode == 0, r.stderr[-2000:]
    (resumed,) = [e for e in evs if e["event"] == "ota_resumed" and e["side"] == "ncp"]
    assert resumed["offset"] >= 65536
    assert flash_show(flash)["slots"]["B"]["sha256"] == sha


def test_the_relay_waits_for_a_slow_reader_instead_of_losing_bytes():
    """A pty fills up when its reader pauses; the relay keeps the rest until it reads again."""
    import time

    import serial

    from dualmcu.relay import Relay

    data = bytes(range(256)) * 2048  # 512 KiB, far more than a pty buffers
    with Relay("pty") as relay:
        a = serial.Serial(relay.paths["a"], 115200, timeout=0.5)
        b = serial.Serial(relay.paths["b"], 115200, timeout=0.5)
        a.write(data)
        time.sleep(1.0)  # the reader is busy elsewhere
        got = b""
        while len(got) < len(data):
            chunk = b.read(65536)
            if not chunk:
                break
            got += chunk
        a.close()
        b.close()
        assert got == data and relay.counts["lost"] == 0


@pytest.mark.slow
def test_run_removes_its_temporary_work_files_after_success_unless_kept(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "dualmcu", "run", "--json"], capture_output=True, timeout=TIMEOUT, env=env)
    assert r.returncode == 0 and events(r.stdout)[-1]["workdir"] is None
    assert not list(tmp_path.glob("dualmcu-run-*"))
    r = subprocess.run([sys.executable, "-m", "dualmcu", "run", "--json", "--keep"], capture_output=True, timeout=TIMEOUT,
                       env=env)
    kept = events(r.stdout)[-1]["workdir"]
    assert r.returncode == 0 and kept and os.path.exists(os.path.join(kept, "primary.flash"))
    # Each side's log holds its event stream (it held only the children's stderr: empty).
    for side in ("ncp", "primary"):
        with open(os.path.join(kept, f"{side}.log")) as f:
            logged = [json.loads(line) for line in f if line.startswith("{")]
        said = [e for e in events(r.stdout) if e["side"] == side]
        assert logged == said and logged[-1]["event"] == "exit"


class Rfc2217Server:
    """A pty served over RFC 2217 by pyserial's own server-side PortManager, as ser2net or
    pyserial's rfc2217_server would serve a board's adapter on another machine."""

    def __init__(self, path: str):
        import socket
        import threading

        import serial
        import serial.rfc2217

        class Pty(serial.Serial):
            # A pty has no modem lines, and the manager polls them: report them all low.
            # Nor lines to drive: the client's DTR and RTS requests change nothing.
            cts = dsr = ri = cd = property(lambda self: False)

            def _update_dtr_state(self):
                pass

            def _update_rts_state(self):
                pass

        self.port = Pty(path, timeout=0.05)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        self.alive = True
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def _serve(self) -> None:
        import threading

        import serial
        import serial.rfc2217

        conn, _ = self.listener.accept()
        conn.settimeout(0.05)

        class Connection:
            write = conn.sendall

        manager = serial.rfc2217.PortManager(self.port, Connection())

        def to_net():
            while self.alive:
                try:
                    data = self.port.read(self.port.in_waiting or 1)
                    if data:
                        conn.sendall(b"".join(manager.escape(data)))
                except (OSError, serial.SerialException):  # the client or the pty has gone
                    return

        threading.Thread(target=to_net, daemon=True).start()
        while self.alive:
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            self.port.write(b"".join(manager.filter(data)))

    def close(self) -> None:
        self.alive = False
        self.listener.close()


def test_an_update_through_an_rfc2217_port(tmp_path, shipment):
    """The help names rfc2217:// URLs: the NCP on a port served over the network by RFC 2217
    updates a primary on the other end of the wire."""
    from dualmcu.relay import Relay

    fw, sha = shipment
    factory = tmp_path / "factory.bin"
    factory.write_bytes(build_image(make_info("2.0.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 50_000))
    flash = tmp_path / "dev.flash"
    with Relay("pty") as relay:
        server = Rfc2217Server(relay.paths["a"])
        try:
            ncp = subprocess.Popen([sys.executable, "-m", "dualmcu", "ncp", "--port", server.address, "--firmware",
                                    str(fw), "--once", "--json", "--store", str(tmp_path / "store")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            mcu = subprocess.Popen([sys.executable, "-m", "dualmcu", "primary", "--port", relay.paths["b"], "--flash",
                                    str(flash), "--provision", str(factory), "--once", "--json"], stdout=subprocess.PIPE)
            out_mcu, _ = mcu.communicate(timeout=TIMEOUT)
            out_ncp, err_ncp = ncp.communicate(timeout=TIMEOUT)
        finally:
            server.close()
    assert b"Traceback" not in err_ncp
    assert mcu.returncode == 0 and ncp.returncode == 0, (out_ncp[-3000:], out_mcu[-3000:])
    assert events(out_mcu)[-1] == {"side": "primary", "event": "exit", "code": 0, "reason": "confirmed"}
    assert flash_show(flash)["slots"]["B"]["sha256"] == sha


def test_an_rfc2217_port_with_nothing_listening_is_one_line():
    r = dualmcu("ncp", "--port", "rfc2217://127.0.0.1:1", "--firmware", "/dev/null")
    assert r.returncode in (2, 3) and b"Traceback" not in r.stderr and len(r.stderr.decode().strip().splitlines()) == 1


def test_a_step_s_bytes_leave_before_its_events_are_printed():
    # The shell holds a step's JSON lines until the step's bytes are written: a side never
    # makes its peer wait while it formats and prints its log.
    import io

    from dualmcu.output import EventPrinter
    from dualmcu.shell import Runner, Stop

    order: list[str] = []

    class Port:
        dropped = 0
        reads_first = False  # every step waits, as a paced port does

        def wait_read(self, wait):
            return b"x"

        def next_deadline(self):
            return None

        def pump(self, now):
            pass

        def write(self, data, now=None):
            order.append("bytes")

        def flush(self):
            pass

    class Out(io.StringIO):
        def write(self, s):
            order.append("events")
            return super().write(s)

    out = Out()
    printer = EventPrinter("ncp", as_json=True, out=out)

    class Core:
        actions: list = []

        def receive(self, data, now):
            printer(Event.OTA_PROGRESS, offset=1, size=2)
            printer(Event.STATE, state="x")

        def tick(self, now):
            pass

        def next_deadline(self):
            return None

        def data_to_send(self):
            return b"answer" if "bytes" not in order else b""

        def idle(self):
            pass

    def check():
        raise Stop(0, "done")

    runner = Runner(Port(), Core(), lambda a, p: None, check, events=printer)
    with pytest.raises(Stop):
        runner.run()
    assert order == ["bytes", "events"]  # both lines in one write, after the answer
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["ota_progress", "state"]


def test_progress_is_thinned_only_when_asked_and_its_last_step_is_always_printed():
    import io

    from dualmcu.output import EventPrinter

    def lines(interval):
        out = io.StringIO()
        p = EventPrinter("ncp", as_json=True, out=out, progress_interval=interval)
        for off in (1024, 2048, 3072):
            p(Event.OTA_PROGRESS, offset=off, size=3072, retries=0)
            p(Event.STATE, state="connected")
        return [json.loads(x) for x in out.getvalue().splitlines()]

    every = lines(0.0)
    assert [x["offset"] for x in every if x["event"] == "ota_progress"] == [1024, 2048, 3072]
    thinned = lines(3600.0)
    assert [x["offset"] for x in thinned if x["event"] == "ota_progress"] == [1024, 3072]
    assert sum(x["event"] == "state" for x in thinned) == 3  # other events are never thinned


def test_run_refuses_a_progress_interval_with_a_kill_at_an_offset():
    r = dualmcu("run", "--kill-primary-at", "1000", "--progress-interval", "0.1")
    assert r.returncode == 2 and b"need every progress step" in r.stderr


def test_a_paced_run_the_wire_cannot_finish_within_its_timeout_is_refused_and_leaves_nothing(
        monkeypatch, tmp_path):
    """At 1200 baud the demo image needs 43 minutes of wire: the run says so at once (exit 2)
    instead of waiting out --timeout, and a usage error leaves no temporary work directory."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the run makes its work directory
    r = dualmcu("run", "--pace", "--baud", "1200")
    assert r.returncode == 2
    assert r.stderr.decode().strip() == (
        "Error: at 1200 baud the wire alone takes 2,560 s to carry the 307,200 bytes of the "
        "update, more than --timeout 300 s: raise --timeout or --baud")
    assert list(tmp_path.iterdir()) == []


def test_run_says_in_one_line_when_the_system_refuses_a_pty(monkeypatch, capsys, tmp_path):
    from dualmcu import relay
    from dualmcu.runner import Run, RunOptions

    def no_pty():
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(relay.os, "openpty", no_pty)
    code = Run(RunOptions(workdir=str(tmp_path))).run()
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and "could not be started: [Errno 24] Too many open files" in err


@pytest.mark.parametrize("args,every", [([], "0.1"), (["--json"], "0.0"), (["--kill-primary-at", "4096"], "0.0"),
                                         (["--json", "--progress-interval", "0.5"], "0.5")])
def test_run_asks_the_sides_for_every_step_only_when_someone_reads_them(monkeypatch, args, every):
    # A progress line needs a step every 0.1 s; --json and the kill options need every one.
    from click.testing import CliRunner

    from dualmcu import runner
    from dualmcu.cli import main

    seen = {}

    class Captured:
        def __init__(self, o):
            seen["o"] = o

        def run(self):
            return 0

    monkeypatch.setattr(runner, "Run", Captured)
    r = CliRunner().invoke(main, ["run", *args])
    assert r.exit_code == 0, r.output
    assert seen["o"].progress_interval == float(every)  # handed to both sides (Run.options)


def test_run_gives_the_primary_the_buffer_that_decides_the_window_of_large_chunks(monkeypatch):
    # The NCP keeps buffer // chunk + 1 writes in flight: with the default 32 KiB, chunks of
    # 64 KiB go one at a time; a primary with 64 KiB for one held chunk takes two.
    from click.testing import CliRunner

    from dualmcu import runner
    from dualmcu.cli import main

    seen = []

    class Captured:
        def __init__(self, o):
            seen.append(o.primary.ota)

        def run(self):
            return 0

    monkeypatch.setattr(runner, "Run", Captured)
    for args in ([], ["--buffer", "64K"]):
        r = CliRunner().invoke(main, ["run", "--chunk-size", "65535", *args])
        assert r.exit_code == 0, r.output
    assert [o.buffer for o in seen] == [32768, 65536]


def test_run_hands_each_side_its_whole_configuration_as_one_object(tmp_path):
    # No option goes back through argv: the side gets the run's config objects, and the
    # power cut is drawn from this flash's own page size, not an assumed 4 KiB.
    import io
    import pickle

    from dualmcu.child import send
    from dualmcu.image.signing import generate, load_keys
    from dualmcu.primary.boot import Trust
    from dualmcu.primary.device import PrimaryConfig
    from dualmcu.primary.flash import Geometry
    from dualmcu.link import LinkConfig
    from dualmcu.runner import Run, RunOptions

    (tmp_path / "k.pub").write_bytes(generate()[1])
    trust = Trust(load_keys([str(tmp_path / "k.pub")]), "dualmcu/1")
    o = RunOptions(workdir=str(tmp_path), geometry=Geometry(page_size=8192, slot_size=1 << 20), power_cut_seed=7,
                   primary=PrimaryConfig(trust=trust), link_config=LinkConfig(baud=115200, latency=0.001),
                   disconnects=[("b", 2.0, 1.0)])
    run = Run(o)
    run.t0 = 123.0
    run.prepare()

    class Uart:  # what a VirtualUart gives: a descriptor and a name per end
        fds = {"a": 8, "b": 9}
        names = {"a": "the master side of /dev/pts/9", "b": "/dev/pts/9"}

    run.uart = Uart()
    p = run.options("primary")
    pages, chunks = -(-run.largest // 8192), -(-run.largest // o.primary.ota.chunk_size)
    assert p.power_cut_seed == 7 and p.power_cut_within == pages + chunks + 6  # 1 KiB chunks never cross an 8 KiB page
    assert p.geometry.page_size == 8192 and p.start == 123.0 and p.as_json and p.provision == run.factory
    n = run.options("ncp")
    assert n.config.once and not o.ncp.once and n.start == 123.0 and n.port == "the master side of /dev/pts/9"
    # Each side sends through its own end of the link, with the run's model and plan.
    assert (n.wire.fd, n.wire.side, p.wire.fd, p.wire.side) == (8, "a", 9, "b")
    assert p.wire.link == o.link_config and p.wire.disconnects == (("b", 2.0, 1.0),) and p.wire.start == 123.0
    assert p.wire.tally != n.wire.tally and os.path.dirname(p.wire.tally) == str(tmp_path)

    class Pipe(io.BytesIO):
        def close(self):  # keep the bytes to read back
            self.kept = self.getvalue()

    pipe = Pipe()
    send(p, pipe)
    back = pickle.loads(pipe.kept)
    assert back.config.trust.keys.keys() == trust.keys.keys()  # the key travels as its raw bytes
    assert [k.public_bytes_raw() for k in back.config.trust.keys.values()] == \
        [k.public_bytes_raw() for k in trust.keys.values()]
    assert back.config.ota == p.config.ota and back.power_cut_within == p.power_cut_within


def test_the_run_reads_a_sides_last_lines_while_it_stops():
    """A side ends by writing the lines its pipe had no room for, and waits for the run to
    read them. The run reads while its sides stop: if it only waited (3 s) and then read, a
    side holding more than a pipe's worth would be killed with those lines lost. Here a stand-
    in side prints 3000 lines (about 200 KB) when told to stop."""
    import io

    from dualmcu.runner import Run, RunOptions
    from dualmcu.output import Outlet, json_note

    side = textwrap.dedent("""
        import json, signal, sys
        def stop(*_):
            for i in range(3000):
                line = {"side": "ncp", "event": "ota_progress", "offset": i, "pad": "x" * 40}
                print(json.dumps(line))
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print(json.dumps({"side": "ncp", "event": "state", "state": "idle"}), flush=True)
        signal.pause()
    """)
    run = Run(RunOptions(as_json=True))
    out = io.StringIO()
    run.outlet = Outlet(out, json_note("run"))
    p = subprocess.Popen([sys.executable, "-c", side], stdout=subprocess.PIPE)
    run.procs["ncp"] = p
    run.lines.add("ncp", p)
    assert run.lines.get(30)["event"] == "state"  # the side is up, its handler set
    run.stop_all(drain=True)
    assert p.returncode == 0  # it ended by itself, not killed after the wait
    offsets = [json.loads(line)["offset"] for line in out.getvalue().splitlines()]
    assert offsets == list(range(3000))


def test_a_second_interrupt_while_the_sides_stop_leaves_none_running(monkeypatch):
    """Ctrl-C or SIGTERM twice: the second arrives while the run waits for its sides to stop.
    The run ends then, and kills what has not stopped yet rather than leave it behind."""
    from dualmcu.runner import Run, RunOptions

    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)")
    run = Run(RunOptions())
    p = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"up\n"  # its SIGTERM is ignored from here on
    run.procs["primary"] = p

    def second_interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "drain", second_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.stop_all(drain=True)
    assert p.returncode == -9
    p.stdout.close()


def standalone_pair(tmp_path, relay, new: bytes, *ncp_args, primary_args=()):
    """`dualmcu ncp --once` and `dualmcu primary`, each started by hand on an end of a relay."""
    fw = tmp_path / "fw.bin"
    fw.write_bytes(new)
    factory = tmp_path / "factory.bin"
    factory.write_bytes(build_image(make_info("2.0.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 50_000))
    ncp = subprocess.Popen([sys.executable, "-m", "dualmcu", "ncp", "--port", relay.paths["a"], "--firmware", str(fw),
                            "--once", "--store", str(tmp_path / "store"), *ncp_args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    mcu = subprocess.Popen([sys.executable, "-m", "dualmcu", "primary", "--port", relay.paths["b"], "--flash",
                            str(tmp_path / "dev.flash"), "--provision", str(factory), "--flash-timing", "0,0,0",
                            *primary_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ncp, mcu


def ncp_once(tmp_path, new: bytes, *ncp_args, primary_args=(), spy: str | None = None):
    """`ncp --once` and a standalone primary over a relay, until the NCP ends: its exit code,
    stdout and stderr. ``spy``: the NCP's port is captured to this file through spy://."""
    from dualmcu.relay import Relay

    with Relay("pty") as relay:
        if spy is not None:
            relay.paths["a"] = f"spy://{relay.paths['a']}?file={spy}"
        ncp, mcu = standalone_pair(tmp_path, relay, new, *ncp_args, primary_args=primary_args)
        try:
            out, err = ncp.communicate(timeout=TIMEOUT)
        finally:
            mcu.terminate()
            mcu.wait(timeout=30)
    return ncp.returncode, out, err


def test_ncp_once_ends_on_the_rollback_of_a_build_that_first_reported_in(tmp_path):
    """The new version reports in (the cloud's success), then its commit timer rolls it back:
    `ncp --once` exited 0 on the success; it ends 1 on the rollback, and says so in one line."""
    late = build_image(make_info("2.3.4", "TMPLE2E", build="Mar  3 2026 03:03:03",
                                 **{"dualmcu-test": "slow-confirm:30"}), 60_000)
    code, out, err = ncp_once(tmp_path, late, primary_args=("--commit-timeout", "2"))
    assert code == 1, err.decode()[-2000:]
    assert out.decode().splitlines() == ["FAILED: rolled back to 2.0.0 (commit_timeout)"]
    assert b"ota_outcome" in err and b"outcome=rollback" in err


def test_ncp_once_says_ok_only_once_the_primary_confirmed(tmp_path):
    new = build_image(make_info("2.3.4", "TMPLE2E", build="Mar  3 2026 03:03:03"), 60_000)
    code, out, err = ncp_once(tmp_path, new, "--json")
    assert code == 0, err.decode()[-2000:]
    evs = events(out)
    assert evs[-1] == {"side": "ncp", "event": "exit", "code": 0, "reason": "confirmed"}
    assert [e["telemetry"]["ota_state"] for e in evs if e["event"] == "cloud_record"] == ["confirmed"]


@pytest.mark.parametrize("side", ["ncp", "primary"])
def test_a_side_stopped_by_sigterm_ends_143_with_an_exit_event(tmp_path, side):
    """An interrupted side has no outcome: 0 would read as a pass to a CI job."""
    import signal
    from dualmcu.relay import Relay

    factory = tmp_path / "factory.bin"
    factory.write_bytes(build_image(make_info("2.0.0", "TMPLE2E"), 20_000))
    extra = ["--flash", str(tmp_path / "f.flash"), "--provision", str(factory)] if side == "primary" else []
    with Relay("pty") as relay:
        p = subprocess.Popen([sys.executable, "-m", "dualmcu", side, "-p", relay.paths["a"], "--json", *extra],
                             stdout=subprocess.PIPE)
        assert json.loads(p.stdout.readline())["event"] in ("port_open", "shipment", "provisioned")
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 143
    assert events(out)[-1] == {"side": side, "event": "exit", "code": 143, "reason": "terminated"}


def test_a_side_with_once_and_no_verdict_within_its_timeout_ends_4(tmp_path):
    from dualmcu.relay import Relay

    new = build_image(make_info("2.3.4", "TMPLE2E"), 20_000)
    (tmp_path / "fw.bin").write_bytes(new)
    with Relay("pty") as relay:
        r = dualmcu("ncp", "-p", relay.paths["a"], "--firmware", tmp_path / "fw.bin", "--once", "--timeout", "1",
                    "--store", tmp_path / "store")
    assert r.returncode == 4, r.stderr
    assert r.stdout.decode().splitlines() == ["FAILED: no verdict within 1 s (--timeout)"]
    r = dualmcu("ncp", "-p", "loop://", "--timeout", "1")
    assert r.returncode == 2 and b"--timeout bounds the wait for a verdict: give it with --once" in r.stderr


def test_a_spy_capture_through_the_ncp_holds_the_whole_update_and_decodes_typed(tmp_path):
    """docs/hardware.md's capture: `dualmcu ncp -p 'spy://PORT?file=ncp.log'`. The shell reads
    and writes the port's descriptor, past pyserial's spy, and the log held one line. Now every
    byte is in it, and `decode --spy` types every RESULT, across the primary's reboot."""
    new = build_image(make_info("2.3.4", "TMPLE2E", build="Mar  3 2026 03:03:03"), 30_000)
    log = tmp_path / "ncp.log"
    code, out, err = ncp_once(tmp_path, new, "--framing", "blynk", primary_args=("--framing", "blynk"), spy=log)
    assert code == 0, err.decode()[-2000:]
    r = dualmcu("decode", "--framing", "blynk", "--json", "--spy", log)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.decode().splitlines()]
    writes = [x for x in recs if x["name"] == "client_otaUpdateWrite" and x["kind"] == "invoke"]
    assert sum(len(x["args"]["chunk"]) for x in writes) >= len(new)
    results = [x for x in recs if x["kind"] == "result"]
    assert results and all(x["name"] and x["status"] == "ok" and "reason" not in x for x in results), \
        [x for x in results if not x["name"] or "reason" in x][:3]
    # Both boots of the primary: its firmware reported twice, each call answered as itself.
    reports = [x for x in recs if x["name"] == "blynk_setFirmwareInfo"]
    assert [(x["kind"], x["args"].get("version")) for x in reports if x["kind"] == "invoke"] == [
        ("invoke", "2.0.0"), ("invoke", "2.3.4")]
    assert sum(x["kind"] == "result" for x in reports) == 2


def test_run_reads_the_running_image_from_the_flash_it_was_given(tmp_path):
    """A flash that runs a delta's base needs no --factory: the primary boots its flash, as the
    device does. It was refused ("give the primary that base with --factory")."""
    from dualmcu.image.package import build_package
    from dualmcu.primary.boot import Bootloader
    from dualmcu.primary.flash import Flash, Geometry

    old = build_image(make_info("1.0.0", "TMPLE2E", build="Jan  1 2026 00:00:00"), 60_000, content="code")
    new = build_image(make_info("1.0.1", "TMPLE2E", build="Jan  2 2026 00:00:00"), 60_000, content="code")
    delta = tmp_path / "delta.pkg"
    delta.write_bytes(build_package(new, old, "lzma"))
    flash = tmp_path / "dev.flash"
    f = Flash.open(str(flash), Geometry(4096, 128 * 1024))
    Bootloader(f).provision(old)
    f.close()
    r = dualmcu("run", "--flash", flash, "--firmware", delta, "--workdir", tmp_path / "w", "--json")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    result = events(r.stdout)[-1]
    assert (result["old_version"], result["confirmed"]) == ("1.0.0", "1.0.1")
    # The flash now runs 1.0.1: the same delta no longer applies, and nothing starts.
    r = dualmcu("run", "--flash", flash, "--firmware", delta, "--workdir", tmp_path / "w2")
    assert r.returncode == 2
    assert r.stderr.decode().strip() == (f"Error: the delta packages apply to 1.0.0, and the flash {flash} runs "
                                         "1.0.1: give a release with its image, or a delta from 1.0.1")
