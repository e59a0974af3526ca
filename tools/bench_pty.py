#!/usr/bin/env python3
"""Unpaced goodput over ptys between the two processes, against a plain copy of the same bytes
through the same relay.

    .venv/bin/python tools/bench_pty.py [--json] [--size 4194304]

The OTA time runs from the NCP's first write to the primary's install (both processes stamp
events with the system-wide monotonic clock); the primary's flash takes no time here, so what
is measured is framing, RPC, the two event loops and the relay.  The plain copy writes the
same number of bytes into one pty and reads them from the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serial  # noqa: E402
from benchutil import report  # noqa: E402

from dualmcu.image.firmware import build_image, make_info  # noqa: E402
from dualmcu.relay import Relay  # noqa: E402


def plain_copy(size: int) -> float:
    data = os.urandom(size)
    with Relay("pty") as relay:
        a = serial.Serial(relay.paths["a"], 115200, timeout=1)
        b = serial.Serial(relay.paths["b"], 115200, timeout=1)
        got = [0]

        def reader():
            while got[0] < size:
                chunk = b.read(max(1, b.in_waiting))
                if not chunk:
                    break
                got[0] += len(chunk)

        t = threading.Thread(target=reader)
        t0 = time.monotonic()
        t.start()
        for i in range(0, size, 4096):
            a.write(data[i : i + 4096])
        t.join()
        elapsed = time.monotonic() - t0
        a.close()
        b.close()
    assert got[0] == size, got[0]
    return elapsed


def ota(size: int, pipeline: bool, root: str) -> float:
    fw = os.path.join(root, f"fw-{size}.bin")
    with open(fw, "wb") as f:
        f.write(build_image(make_info("2.0.0", "TMPLPTY"), size))
    cmd = [sys.executable, "-m", "dualmcu", "run", "--firmware", fw, "--slot-size", str(-(-size // 65536) * 65536),
           "--workdir", os.path.join(root, f"w{pipeline}"), "--json", "--flash-timing", "0,0,0", "--chunk-size", "4064"]
    if not pipeline:
        cmd.append("--no-pipeline")
    r = subprocess.run(cmd, capture_output=True, timeout=600)
    evs = [json.loads(x) for x in r.stdout.decode().splitlines() if x.startswith("{")]
    assert evs[-1]["exit_code"] == 0, evs[-1]
    first = next(e["t"] for e in evs if e["event"] == "ota_window")
    installed = next(e["t"] for e in evs if e["event"] == "ota_installed")
    return installed - first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size", type=int, default=4 << 20)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dualmcu-pty-") as root:
        copy = plain_copy(a.size)
        timed = [("plain copy", copy)] + [("OTA pipelined" if p else "OTA stop-and-wait", ota(a.size, p, root))
                                          for p in (False, True)]
    rows = [{"mode": m, "seconds": round(t, 3), "MB_per_s": round(a.size / t / 1e6, 2),
             "vs_plain_copy": round(copy / t, 3)} for m, t in timed]
    report(rows, a.json, f"{a.size // 1024} KiB through the pty relay, unpaced",
           ["mode", "seconds", "MB/s", "goodput vs plain copy"],
           lambda r: (r["mode"], r["seconds"], r["MB_per_s"], r["vs_plain_copy"]))


if __name__ == "__main__":
    main()
