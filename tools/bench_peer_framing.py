#!/usr/bin/env python3
"""Our framing codecs against the framings of peer tools, in one run.

    .venv/bin/python tools/bench_peer_framing.py [--json]

The peers (the SMP serial framing of smpclient, EZSP ASH of bellows, SLIP of esptool) are
installed in their own virtual environment, .venv-bench, made on first use from
tools/peers/requirements.txt: smp requires the old crcmod 1.7, which must never share an
environment with crcmod-plus.  Both sides are measured the same way (tools/bench_framing.py's
method: decode over a stream of many frames fed in 4 KiB reads), one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)

from bench_framing import bench  # noqa: E402
from benchutil import report  # noqa: E402

VENV = os.path.join(ROOT, ".venv-bench")


def peers(seconds: float) -> list[dict]:
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "-r", os.path.join(HERE, "peers", "requirements.txt")], check=True)
    out = subprocess.run([py, os.path.join(HERE, "peers", "worker.py"), str(seconds)], check=True,
                         capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=0.5)
    a = ap.parse_args()
    ours = [bench("cobs", size, a.seconds) for size in (64, 1024, 4096)]
    ours += [bench("blynk", size, a.seconds) for size in (64, 1024)]
    rows = [{"framing": f"dualmcu {r['profile']}", "size": r["size"], "encode_MBps": r["encode_MBps"],
             "decode_MBps": r["decode_MBps"]} for r in ours] + peers(a.seconds)
    cobs = {r["size"]: r for r in rows if r["framing"] == "dualmcu cobs"}
    for r in rows:
        r["cobs_decode_vs_this"] = round(cobs[r["size"]]["decode_MBps"] / r["decode_MBps"], 1)
    report(sorted(rows, key=lambda r: (r["size"], r["framing"])) if not a.json else rows, a.json, "",
           ["framing", "size", "encode MB/s", "decode MB/s", "dualmcu cobs decode ÷ this"],
           lambda r: (r["framing"], r["size"], r["encode_MBps"], r["decode_MBps"], r["cobs_decode_vs_this"]))


if __name__ == "__main__":
    main()
