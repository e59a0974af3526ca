#!/usr/bin/env python3
"""The C reference firmware updated through `dualmcu ncp -p exec:...` (native, and its Cortex-M
build under QEMU), and the pytest plugin's cost per test.

    .venv/bin/python tools/bench_firmware.py [--runs 5] [--size 256K] [--tests 10] [--json]

* update: an unpaced update of the native reference firmware (examples/firmware, built here
  with the system compiler), the real protocol (blynk framing): from the NCP's offer to the
  firmware's report that it confirmed the new version (its telemetry), on the NCP's clock; and
  the whole command, from the moment the user starts waiting.  Goal: offer to report <= 1 s
  for 256 KiB.
* plugin: a user's test file of N tests, each `dualmcu_ncp(dualmcu_image(...)).outcome()` on a
  16 KiB image, run by pytest in its own process.  A test's overhead is its time in pytest (from
  the JUnit report) less the update's own, from the NCP's port opening to its verdict (the
  outcome's ``seconds``, a JUnit property): making the images, starting the NCP's process
  (its interpreter and imports), reading its events, ending it.  Goal: <= 0.3 s.

Each row is a median of the runs, with the fastest and slowest; a run that did not end in a
confirmed update is an error, not a row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchutil import as_installed, report  # noqa: E402

FIRMWARE = os.path.join(HERE, "..", "examples", "firmware")


class BenchError(RuntimeError):
    pass


def build(work: str, target: str = "") -> str:
    r = subprocess.run(["make", "-s", "-C", FIRMWARE, f"BUILD={work}/build", *([target] if target else [])],
                       capture_output=True, text=True)
    if r.returncode:
        raise BenchError(f"the reference firmware did not build: {r.stderr.strip()}")
    return f"{work}/build/refmcu" + ("-mps2.elf" if target == "mps2" else "")


def qemu(elf: str) -> str:
    """The command that runs the Cortex-M build, with {args} for its own command line."""
    return ("qemu-system-arm -M mps2-an385 -display none -monitor none -no-reboot "
            f"-semihosting-config enable=on,target=native -serial {{pty}} -kernel {elf} -append '{{args}}'")


def one_update(refmcu: str, work: str, size: int, n: int) -> dict:
    from dualmcu import make_image

    factory = make_image("1.0.0", "TMPLBENCH", f"{work}/factory.bin", 40 * 1024)
    new = make_image("1.1.0", "TMPLBENCH", f"{work}/new.bin", size)
    flash = f"{work}/dev-{n}-{size}.flash"
    if os.path.exists(flash):
        os.remove(flash)
    args = f"--flash {flash} --provision {factory} --slot-size {max(size, 64 * 1024) + 4096}"
    cmd = refmcu.replace("{args}", args) if "{args}" in refmcu else f"{refmcu} --port {{pty}} {args}"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "dualmcu", "ncp", "-p", f"exec:{cmd}", "--framing", "blynk",
                        "--firmware", str(new), "--once", "--timeout", "120", "--json", "--store", f"{work}/store",
                        "--firmware-log", f"{work}/fw-{n}.log"], capture_output=True, text=True)
    wall = time.monotonic() - t0
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    offer = [e["t"] for e in events if e["event"] == "ota_offer"]
    report_ = [e["t"] for e in events if e["event"] == "telemetry" and e.get("ota_state") == "confirmed"
               and e.get("version") == "1.1.0"]
    if r.returncode != 0 or not offer or not report_:
        raise BenchError(f"run {n}: not a confirmed update (exit {r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
    return {"offer_to_report": report_[-1] - offer[0], "wall": wall}


USER_TESTS = '''
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_update(dualmcu_ncp, dualmcu_image, n):
    outcome = dualmcu_ncp(dualmcu_image("1.1.0", size=16 * 1024)).outcome()
    assert outcome.verdict == "confirmed", outcome
'''


def plugin_overhead(refmcu: str, work: str, tests: int) -> list[float]:
    suite = os.path.join(work, "suite")
    os.makedirs(suite, exist_ok=True)
    with open(os.path.join(suite, "pytest.ini"), "w") as f:
        f.write(f"[pytest]\ndualmcu_firmware = {refmcu} --port {{pty}} --flash {{flash}} --provision {{factory}}\n"
                "dualmcu_fw_type = TMPLBENCH\n")
    with open(os.path.join(suite, "test_user.py"), "w") as f:
        f.write(USER_TESTS.replace("{tests}", str(tests)))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml=report.xml",
                        "-o", "junit_logging=no", "--basetemp", os.path.join(work, "tmp")], cwd=suite,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"the user's suite failed: {r.stdout[-1500:]}")
    over = []
    for case in ET.parse(os.path.join(suite, "report.xml")).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if props.get("dualmcu_verdict") != "confirmed":
            raise BenchError(f"{case.get('name')}: not a confirmed update ({props.get('dualmcu_verdict')})")
        over.append(float(case.get("time")) - float(props["dualmcu_seconds"]))
    return over


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--size", default="256K")
    p.add_argument("--tests", type=int, default=10)
    p.add_argument("--qemu-size", default="64K", help="the image for the native and the QEMU builds side by side")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    kib = lambda text: int(text.rstrip("Kk")) * 1024 if text[-1] in "Kk" else int(text)  # noqa: E731
    size, qsize = kib(a.size), kib(a.qemu_size)
    as_installed()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        refmcu = build(work)
        runs = [one_update(refmcu, work, size, n) for n in range(a.runs)]
        qemu_elf = qemu(build(work, "mps2"))
        sets = [(f"native, {size // 1024} KiB", runs),
                (f"native, {qsize // 1024} KiB", [one_update(refmcu, work, qsize, n) for n in range(a.runs)]),
                (f"QEMU Cortex-M3, {qsize // 1024} KiB", [one_update(qemu_elf, work, qsize, n) for n in range(a.runs)])]
        for name, done in sets:
            for key, what in (("offer_to_report", "offer to confirmed report"), ("wall", "whole command")):
                xs = [r[key] for r in done]
                rows.append({"row": f"{name}: {what}", "median_s": round(statistics.median(xs), 3),
                             "min_s": round(min(xs), 3), "max_s": round(max(xs), 3), "runs": len(xs)})
        over = plugin_overhead(refmcu, work, a.tests)
        rows.append({"row": "plugin: overhead per test", "median_s": round(statistics.median(over), 3),
                     "min_s": round(min(over), 3), "max_s": round(max(over), 3), "runs": len(over)})
    report(rows, a.json, "", ["what", "median (s)", "fastest (s)", "slowest (s)", "runs"],
           lambda r: (r["row"], r["median_s"], r["min_s"], r["max_s"], r["runs"]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"error: {e}")
