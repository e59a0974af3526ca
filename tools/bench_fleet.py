#!/usr/bin/env python3
"""`dualmcu fleet` at scale: device-updates per second per core, the speed-up from one worker to
two, a fleet of 100,000 devices on this machine, and memory per device.

    .venv/bin/python tools/bench_fleet.py [--json] [--big 100000] [--no-big]

* per core: one process runs devices one after another (the good demo build, rev A, 921600
  baud), 64 KiB and 1 MiB images; updates per CPU second of that process.
* speed-up: the same rollout (good demo build, ``--speedup-devices``) on a local Dask cluster
  of one worker and of two, timed from the rollout's start to its summary (the cluster is
  started before); both summaries must agree apart from timing and the worker count.
* the big fleet: the whole command, ``dualmcu fleet --demo good --devices N --json``, timed
  from its start to its exit, with the peak resident memory of its process tree (the command
  and its Dask workers, sampled every 0.2 s with psutil).  The ideal time is N over the
  per-core rate times the cores.
* memory per device: the controller's share (a device's spec and its result, by tracemalloc
  over 100,000 devices), and a device in flight on a worker (peak heap of one update, 64 KiB
  and 1 MiB images: the flash of two slots dominates).

A run that does not end as it must (an update not confirmed, a rollout not completed) is an
error, not a row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import as_installed, report  # noqa: E402

from dualmcu import fleet as F  # noqa: E402
from dualmcu.image.firmware import make_info, next_image  # noqa: E402
from dualmcu.ncp.update import Shipment  # noqa: E402

UNIFORM = {"group": [{"hw_rev": "A", "version": "1.0.0", "baud": 921600}]}
TIMING = ("wall_seconds", "workers")


class BenchError(RuntimeError):
    pass


def build(size: int) -> bytes:
    old = F.factory_image("1.0.0", size)
    return next_image(old, make_info("1.1.0", F.FW_TYPE, build=F.BUILD), 0.02)


def specs(n: int, seed: int = 1) -> list[F.DeviceSpec]:
    groups, _, _ = F.parse_population(UNIFORM)
    return F.draw_fleet(groups, n, seed)


def per_core(size: int, n: int) -> dict:
    new = build(size)
    fleet = specs(n)
    F.run_shard(fleet[:1], new, size, None)  # warm: the factory image is built once per process
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = F.run_shard(fleet, new, size, None)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    bad = [r for r in results if r["outcome"] != "success"]
    if bad:
        raise BenchError(f"{len(bad)} of {n} updates of {size} bytes did not succeed: {bad[0]}")
    return {"row": f"per core, {size // 1024} KiB", "devices": n, "cpu_seconds": round(cpu, 2),
            "wall_seconds": round(wall, 2), "updates_per_cpu_second": round(n / cpu, 1)}


def speedup(n: int) -> list[dict]:
    groups, _, seed = F.parse_population(F.DEMO_POPULATION)
    fleet = F.draw_fleet(groups, n, seed)
    new = F.demo_build("good")
    rows, summaries = [], []
    for workers in (1, 2):
        ex = F.Executor(None, workers)
        try:
            t0 = time.perf_counter()
            s = F.Rollout(fleet, F.parse_plan(F.DEMO_PLAN), new, F.DEMO_IMAGE_SIZE, ex).run()
            wall = time.perf_counter() - t0
        finally:
            ex.close()
        if s["state"] != "completed" or s["confirmed"] != s["eligible"]:
            raise BenchError(f"the rollout on {workers} worker(s) ended {s['state']}, {s['confirmed']} confirmed")
        summaries.append({k: v for k, v in s.items() if k not in TIMING})
        rows.append({"row": f"rollout, {workers} worker{'s' * (workers > 1)}", "devices": n,
                     "wall_seconds": round(wall, 2), "updates_per_second": round(n / wall, 1)})
    if summaries[0] != summaries[1]:
        raise BenchError("one worker and two gave different summaries")
    rows[1]["speedup"] = round(rows[0]["wall_seconds"] / rows[1]["wall_seconds"], 2)
    return rows


def tree_rss(proc) -> int:
    import psutil

    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def big(n: int, rate: float) -> dict:
    import psutil

    cmd = [sys.executable, "-m", "dualmcu", "fleet", "--demo", "good", "--devices", str(n), "--json"]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak, done = psutil.Process(child.pid), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.2):
            peak = max(peak, tree_rss(watched))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    s = lines[-1] if lines else {}
    if child.returncode != 0 or s.get("state") != "completed" or s.get("confirmed") != s.get("eligible"):
        raise BenchError(f"the {n}-device rollout failed (exit {child.returncode}): {err.strip()[-300:]}")
    cores = s["workers"]
    ideal = n / (rate * cores)
    return {"row": f"{n:,} devices, whole command", "devices": n, "workers": cores,
            "wall_seconds": round(wall, 1), "rollout_wall_seconds": s["wall_seconds"],
            "ideal_seconds": round(ideal, 1), "ideal_over_wall": round(ideal / wall, 2),
            "peak_rss_mib": round(peak / 2**20, 1), "rollout_days": round(s["rollout_seconds"] / 86400, 2)}


def memory(n: int = 100_000) -> list[dict]:
    groups, _, seed = F.parse_population(F.DEMO_POPULATION)
    tracemalloc.start()
    fleet = F.draw_fleet(groups, n, seed)
    # A result as a worker returns it, one per device, held by the controller.
    results = {d.id: {"id": d.id, "hw_rev": d.hw_rev, "from_version": d.version, "outcome": "success",
                      "offered": True, "running": "1.1.0", "confirmed": True, "rollback_reason": None,
                      "update_seconds": 1.234 + d.id / 1e6, "wave": 4} for d in fleet}
    controller, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del fleet, results
    rows = [{"row": "controller, per device", "bytes": round(controller / n)}]
    for size in (64 * 1024, 1024 * 1024):
        new = build(size)
        spec = specs(1)[0]
        F.run_shard([spec], new, size, None)  # warm the factory image's cache
        shipment = Shipment.from_bytes(new, "fleet.bin")
        tracemalloc.start()
        r = F.run_device(spec, shipment, size, None)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if r["outcome"] != "success":
            raise BenchError(f"the {size}-byte update did not succeed: {r}")
        rows.append({"row": f"device in flight, {size // 1024} KiB", "bytes": peak})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--big", type=int, default=100_000, help="devices of the big fleet (default 100000)")
    ap.add_argument("--no-big", action="store_true", help="skip the big fleet")
    ap.add_argument("--speedup-devices", type=int, default=1000)
    a = ap.parse_args()
    as_installed()
    try:
        rates = [per_core(64 * 1024, 300), per_core(1024 * 1024, 20)]
        report(rates, a.json, "Device-updates per CPU second, one process", ["image", "devices", "CPU s", "updates/CPU s"],
               lambda r: [r["row"], r["devices"], r["cpu_seconds"], r["updates_per_cpu_second"]])
        report(speedup(a.speedup_devices), a.json, "The demo rollout (64 KiB) on a local cluster of 1 and 2 workers",
               ["run", "devices", "wall s", "updates/s", "speed-up"],
               lambda r: [r["row"], r["devices"], r["wall_seconds"], r["updates_per_second"], r.get("speedup", "")])
        report(memory(), a.json, "Memory per device", ["where", "bytes"], lambda r: [r["row"], r["bytes"]])
        if not a.no_big:
            r = big(a.big, rates[0]["updates_per_cpu_second"])
            report([r], a.json, "A big fleet (64 KiB), the whole command",
                   ["run", "workers", "wall s", "ideal s", "ideal/wall", "peak RSS MiB", "rollout days"],
                   lambda r: [r["row"], r["workers"], r["wall_seconds"], r["ideal_seconds"], r["ideal_over_wall"],
                              r["peak_rss_mib"], r["rollout_days"]])
    except BenchError as e:
        print(f"bench_fleet: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
