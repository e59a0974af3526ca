#!/usr/bin/env python3
"""Full image, compressed package and delta package: size and update time, from the offer to
the confirmed boot, on the virtual clock and in real time on a paced link.

    .venv/bin/python tools/bench_packages.py [--json] [--size 1M] [--change 1] [--no-real]

The images are two builds of one program (image/synth.py): code-like bytes, the new one edited
at scattered sites touching ``--change`` percent of the bytes and relinked, so functions shift
and addresses change as between real builds.  For each file and baud rate:

* virtual: both cores in one process on the link model (paced at the baud rate, 1 ms of
  latency each way, the primary's default flash timing); time from the NCP's offer to the
  primary's confirmed boot of the new image.  The same on any machine.
* real: ``dualmcu run --pace`` (two processes, a pty pair and a paced relay); time from the
  NCP's offer event to the primary's confirmation event (both stamped with the machine's
  monotonic clock), and the whole command's wall time.

Every run must end in a confirmed new image; one that does not stops the benchmark with an
error instead of a row.  The ratio column is the file's time over the full image's, at the
same baud rate and on the same clock.  The apply rows give the primary's CPU time and peak
Python heap (tracemalloc) for rebuilding the image from the package alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import as_installed, report  # noqa: E402

from dualmcu.image.firmware import build_image, make_info, next_image  # noqa: E402
from dualmcu.image.package import Applier, build_package  # noqa: E402
from dualmcu.link import LinkConfig  # noqa: E402
from dualmcu.ncp.update import Catalog, Shipment  # noqa: E402
from dualmcu.primary.boot import Bootloader  # noqa: E402
from dualmcu.primary.flash import Flash, Geometry  # noqa: E402
from dualmcu.sim import Simulation  # noqa: E402

BAUDS = (115200, 921600)
BUILD = "Nov 21 2026 12:00:00"


class BenchError(RuntimeError):
    pass


def files(size: int, change: float) -> tuple[bytes, bytes, dict[str, bytes]]:
    old = build_image(make_info("1.0.0", "TMPLBENCH", build=BUILD), size, content="code")
    new = next_image(old, make_info("1.0.1", "TMPLBENCH", build=BUILD), change / 100)
    return old, new, {
        "image": new,
        "compressed heatshrink": build_package(new, None, "heatshrink"),
        "compressed lzma": build_package(new, None, "lzma"),
        "delta heatshrink": build_package(new, old, "heatshrink"),
        "delta lzma": build_package(new, old, "lzma"),
    }


def virtual(old: bytes, data: bytes, baud: int) -> float:
    flash = Flash.in_memory(Geometry(4096, 1 << 21))
    Bootloader(flash).provision(old)
    sim = Simulation(flash, Catalog([Shipment.from_bytes(data, "bench.bin")]),
                     link=LinkConfig(baud=baud, latency=0.001))
    outcome = sim.run_update(limit=3600)
    confirmed = [e for e in sim.find("confirmed", "primary") if e["version"] == "1.0.1"]
    if outcome != "success" or not confirmed:
        raise BenchError(f"virtual run at {baud} ended in {outcome!r}, not a confirmed 1.0.1")
    return confirmed[-1]["t"] - sim.find("ota_offer", "ncp")[0]["t"]


def real(old_path: str, path: str, baud: int, work: str) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "dualmcu", "run", "--firmware", path, "--factory", old_path, "--pace",
           "--baud", str(baud), "--slot-size", "2M", "--json", "--timeout", "600"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    wall = time.monotonic() - t0
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    offer = [e["t"] for e in events if e.get("side") == "ncp" and e.get("event") == "ota_offer"]
    done = [e["t"] for e in events if e.get("side") == "primary" and e.get("event") == "confirmed"
            and e.get("version") == "1.0.1"]
    if p.returncode != 0 or not offer or not done:
        tail = (p.stdout.strip().splitlines() or [p.stderr.strip()])[-1][:300]
        raise BenchError(f"real run of {os.path.basename(path)} at {baud} exited {p.returncode}: {tail}")
    return done[-1] - offer[0], wall


def apply_cost(old: bytes, data: bytes, chunk: int = 1024) -> dict:
    tracemalloc.start()
    t0 = time.process_time()
    a = Applier(lambda pos, n: old[pos : pos + n], len(old))
    made = 0
    for at in range(0, len(data), chunk):
        made += sum(len(p) for p in a.feed(data[at : at + chunk]))
    cpu = time.process_time() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if not a.done:
        raise BenchError("the applier did not finish")
    return {"cpu_s": round(cpu, 3), "peak_heap_kib": round(peak / 1024, 1), "image_bytes": made}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size", type=int, default=1 << 20)
    ap.add_argument("--change", type=float, default=1.0, help="percent of the program the edits touch")
    ap.add_argument("--no-real", dest="real", action="store_false", help="virtual clock only")
    a = ap.parse_args()
    as_installed()
    old, new, variants = files(a.size, a.change)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dualmcu-bench-") as work:
        old_path = os.path.join(work, "old.bin")
        with open(old_path, "wb") as f:
            f.write(old)
        for baud in BAUDS:
            full: dict[str, float] = {}
            for name, data in variants.items():
                path = os.path.join(work, name.replace(" ", "-") + ".bin")
                with open(path, "wb") as f:
                    f.write(data)
                row = {"file": name, "baud": baud, "bytes": len(data), "percent_of_image": round(100 * len(data) / len(new), 1),
                       "virtual_s": round(virtual(old, data, baud), 2)}
                if a.real:
                    row["real_s"], row["command_s"] = (round(x, 2) for x in real(old_path, path, baud, work))
                for clock in ("virtual_s", "real_s"):
                    if clock in row:
                        full.setdefault(clock, row[clock])
                        row[clock.replace("_s", "_ratio")] = round(row[clock] / full[clock], 3)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    for name, data in variants.items():
        if name != "image":
            rows.append({"file": name, "apply": apply_cost(old, data)})
    timed = [r for r in rows if "baud" in r]
    report(timed, a.json, f"Update of a {a.size // 1024} KiB image, {a.change} % changed, offer to confirmed boot",
           ["file", "baud", "bytes", "% of image", "virtual s", "ratio", "real s", "ratio", "command s"],
           lambda r: [r["file"], r["baud"], r["bytes"], r["percent_of_image"], r["virtual_s"], r["virtual_ratio"],
                      r.get("real_s", "-"), r.get("real_ratio", "-"), r.get("command_s", "-")])
    if not a.json:
        print()
    report([r for r in rows if "apply" in r], a.json, "Applying on the primary (the whole package, 1 KiB chunks)",
           ["file", "CPU s", "peak heap KiB"], lambda r: [r["file"], r["apply"]["cpu_s"], r["apply"]["peak_heap_kib"]])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
