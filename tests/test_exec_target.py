"""exec: targets: the firmware under test on a fresh pty, restarted when it ends, and a UART
that keeps each end's rate; tried with the C reference firmware (examples/firmware)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.link import misread
from dualmcu.target import ExecTarget, TargetError, parse_exec


def frame8n1(data: bytes) -> list[int]:
    return [bit for b in data for bit in (0, *((b >> i) & 1 for i in range(8)), 1)]


def test_a_uart_at_the_same_rate_hears_every_byte_and_at_another_hears_garbage():
    data = bytes(range(256))
    assert misread(data, 115200, 115200) == data
    assert misread(data, 115200, 117000) == data  # within a UART's tolerance
    fast = misread(data, 38400, 230400)  # each slow bit spans six of the receiver's
    slow = misread(data, 230400, 38400)
    assert len(slow) < len(data) // 4 and len(fast) > len(data)
    assert sum(a == b for a, b in zip(fast, data)) < 8 and sum(a == b for a, b in zip(slow, data)) < 8
    assert misread(data, 38400, 230400) == fast  # no randomness: the same bytes, the same garbage


def test_exec_urls_name_their_pty():
    assert parse_exec("exec:./app --port {pty} -v") == ["./app", "--port", "{pty}", "-v"]
    with pytest.raises(TargetError, match=r"has no \{pty\}"):
        parse_exec("exec:./app --port /dev/ttyUSB0")
    with pytest.raises(TargetError, match="needs a command"):
        parse_exec("exec:")


@pytest.mark.slow
def test_a_target_that_ends_is_started_again_and_one_that_cannot_start_says_why(tmp_path):
    script = tmp_path / "fw.py"
    script.write_text("import sys, time\nprint('up on', sys.argv[1], flush=True)\ntime.sleep(0.2)\n")
    t = ExecTarget(f"exec:{sys.executable} {script} {{pty}}", log=str(tmp_path / "fw.log")).start()
    try:
        deadline = time.monotonic() + 20
        while t.starts < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert t.starts >= 3 and t.exits[:2] == [0, 0] and t.failure is None
    finally:
        t.close()
    log = (tmp_path / "fw.log").read_text()
    assert log.count(f"up on {t.path}") >= 2  # the last start may be ended by close() before it prints
    crash = ExecTarget(f"exec:{sys.executable} -c 'import sys; sys.exit(\"no flash\")' {{pty}}",
                       log=str(tmp_path / "crash.log")).start()
    try:
        deadline = time.monotonic() + 30
        while crash.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert crash.failure is not None and "ended at once 5 times, last with code 1: no flash" in crash.failure
    finally:
        crash.close()
    with pytest.raises(TargetError, match="cannot run /nonexistent/app"):
        ExecTarget("exec:/nonexistent/app {pty}", log=str(tmp_path / "x.log")).start()


# -- the C reference firmware (built by conftest.refmcu) -------------------------------------------

def dualmcu(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dualmcu", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def images(tmp_path):
    factory, new = tmp_path / "factory.bin", tmp_path / "new.bin"
    factory.write_bytes(build_image(make_info("1.0.0", "TMPLREF", build="Jan  1 2026 00:00:00"), 40_000))
    new.write_bytes(build_image(make_info("1.1.0", "TMPLREF", build="Jan  2 2026 00:00:00"), 64 * 1024))
    return factory, new


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--baud-switch", "230400"]], ids=["38400", "switched"])
def test_ncp_updates_the_reference_firmware_started_on_a_pty(tmp_path, refmcu, images, extra):
    factory, new = images
    flash = tmp_path / "dev.flash"
    cmd = " ".join([refmcu, "--port", "{pty}", "--flash", str(flash), "--provision", str(factory), *extra])
    r = dualmcu("ncp", "-p", f"exec:{cmd}", "--framing", "blynk", "--firmware", new, "--once", "--timeout", 60,
                "--store", tmp_path / "store", "--firmware-log", tmp_path / "fw.log")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["OK: updated 1.0.0 -> 1.1.0, confirmed by the primary"]
    assert "target_exited        code=0" in r.stderr  # it rebooted into the new image
    log = [line for line in r.stderr.splitlines() if "port_open" in line][0].split("firmware_log=")[1]
    text = open(log).read()
    assert "installed 1.1.0 in slot B" in text and "confirmed 1.1.0 in slot B" in text


@pytest.mark.slow
def test_an_ncp_at_another_rate_than_the_firmware_fails_as_on_the_bench(tmp_path, refmcu, images):
    """A pty ignores line speed: a wrong -b updated fine. The pty's two ends keep their rates."""
    factory, new = images
    cmd = f"{refmcu} --port {{pty}} --flash {tmp_path / 'dev.flash'} --provision {factory}"
    r = dualmcu("ncp", "-p", f"exec:{cmd}", "-b", 115200, "--framing", "blynk", "--firmware", new, "--once",
                "--timeout", 6, "--store", tmp_path / "store", "--firmware-log", tmp_path / "fw.log")
    assert r.returncode == 4, r.stderr[-3000:]
    assert "baud_mismatch        firmware_baud=38400 baud=115200" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum,said", [("SIGUSR1", "rebooted"), ("SIGUSR2", "target_exited")],
                         ids=["ncp-reboot", "power-cut"])
def test_a_running_ncp_reboots_or_cuts_the_firmwares_power_when_asked(tmp_path, refmcu, images, signum, said):
    """SIGUSR1 reboots the NCP now (its state gone, its UART back at 38400); SIGUSR2 cuts the
    power of its exec: target. Mid-transfer, the firmware must notice, keep its old image, and
    take the update when it is offered again."""
    import json
    import signal

    factory, new = images
    cmd = (f"{refmcu} --port {{pty}} --flash {tmp_path / 'dev.flash'} --provision {factory} "
           "--flash-ms-per-kib 20 --baud-switch 230400")
    p = subprocess.Popen([sys.executable, "-m", "dualmcu", "ncp", "-p", f"exec:{cmd}", "--framing", "blynk",
                          "--firmware", str(new), "--once", "--timeout", "90", "--json", "--store",
                          str(tmp_path / "store"), "--firmware-log", str(tmp_path / "fw.log")],
                         stdout=subprocess.PIPE, text=True)
    events = []
    for line in p.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "ota_progress" and events[-1]["offset"] >= 16384:
            p.send_signal(getattr(signal, signum))
            break
    events += [json.loads(line) for line in p.stdout]
    assert p.wait(timeout=90) == 0, events[-5:]
    kinds = [e["event"] for e in events]
    assert said in kinds and kinds.count("ota_offer") == 2 and events[-1]["reason"] == "confirmed"


def test_an_exec_port_without_its_pty_is_a_usage_error_before_anything_starts(tmp_path):
    r = dualmcu("ncp", "-p", "exec:./app --port", "--store", tmp_path / "store")
    assert r.returncode == 2 and "has no {pty}" in r.stderr and not (tmp_path / "store").exists()
    r = dualmcu("ncp", "-p", "exec:/nonexistent/app {pty}", "--store", tmp_path / "store")
    assert r.returncode == 3 and r.stderr.splitlines()[-1] == "Error: cannot run /nonexistent/app: No such file or directory"
