#!/usr/bin/env python3
"""Many pairs at once: N NCP/primary pairs in one process over in-memory links.

    .venv/bin/python tools/bench_pairs.py [--json] [--size 65536]

All pairs share one virtual clock; the scheduler always steps the pair whose next event is
earliest, so the pairs' updates overlap as they would on one machine serving a fleet.  Figures:
updates per second of wall time, and CPU per update; the last column is CPU per update
against N = 1 (1.00 means the cost does not grow with the number of pairs).
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import report  # noqa: E402

from dualmcu.image.firmware import build_image, make_info  # noqa: E402
from dualmcu.sim import Simulation  # noqa: E402
from dualmcu.ncp.update import Shipment  # noqa: E402
from dualmcu.primary.boot import Bootloader  # noqa: E402
from dualmcu.primary.flash import Flash, Geometry  # noqa: E402


def next_time(sim: Simulation) -> float | None:
    ds = [d for d in (sim.ncp.next_deadline(), sim.primary.next_deadline(), sim.link.next_deadline()) if d is not None]
    return min(ds) if ds else None


def run(n: int, size: int) -> dict:
    old = build_image(make_info("1.0.0", "TMPLFLEET"), 32 * 1024, seed=1)
    new = build_image(make_info("2.0.0", "TMPLFLEET"), size, seed=2)
    geometry = Geometry(4096, max(64 * 1024, -(-size // 65536) * 65536))
    sims = []
    for _ in range(n):
        flash = Flash.in_memory(geometry)
        Bootloader(flash).provision(old)
        sims.append(Simulation(flash, Shipment.from_bytes(new, "fleet.bin")))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    heap = [(0.0, i) for i in range(n)]
    done = 0
    while heap:
        _, i = heapq.heappop(heap)
        sim = sims[i]
        if sim.ncp.outcome and "confirmed" in sim.kinds("primary"):
            done += 1
            continue
        if not sim.step():
            continue
        t = next_time(sim)
        if t is not None:
            heapq.heappush(heap, (t, i))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    ok = sum(1 for s in sims if s.ncp.outcome == "success")
    return {"pairs": n, "succeeded": ok, "wall_s": round(wall, 2), "updates_per_s": round(n / wall, 1),
            "cpu_ms_per_update": round(1000 * cpu / n, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--max", type=int, default=1000)
    a = ap.parse_args()
    rows = [run(n, a.size) for n in (1, 10, 100, 1000) if n <= a.max]
    for r in rows:
        r["cpu_vs_1"] = round(r["cpu_ms_per_update"] / rows[0]["cpu_ms_per_update"], 2)
    report(rows, a.json, f"image {a.size // 1024} KiB, unpaced in-memory links, W25Q flash timing (virtual clock)",
           ["pairs", "succeeded", "wall s", "updates/s", "CPU ms per update", "CPU per update vs 1 pair"],
           lambda r: (r["pairs"], r["succeeded"], r["wall_s"], r["updates_per_s"], r["cpu_ms_per_update"], r["cpu_vs_1"]))


if __name__ == "__main__":
    main()
