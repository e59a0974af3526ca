#!/usr/bin/env python3
"""Run the two real processes through a matrix of faults and say how every update ended.

    .venv/bin/python tools/fault_matrix.py [--seeds 2] [--framing cobs] [--jobs 2] [--json]

Each cell is one fault kind at one rate; each run is ``dualmcu run`` on a paced link
(921600 baud) with that fault and a seed.  After each run the flash is read back: a run is
*bricked* when the flash has no image the bootloader would boot, and a *corrupt image was
accepted* when any slot recorded as installed holds bytes other than the factory image or the
shipment.  Both must be 0.  Every other run ends installed (confirmed), rolled back, or
cancelled with the NCP's reason.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

from dualmcu.image.firmware import build_image, make_info, next_image  # noqa: E402
from dualmcu.image.package import build_package  # noqa: E402
from dualmcu.primary.boot import BootStore, bootable  # noqa: E402
from dualmcu.primary.flash import Flash  # noqa: E402

# fault kind -> the run options of each rate tried
MATRIX: dict[str, list[tuple[str, list[str]]]] = {
    "bit errors": [("ber 1e-5", ["--ber", "1e-5"]), ("ber 1e-4", ["--ber", "1e-4"])],
    "byte drops": [("1e-5", ["--drop", "1e-5"]), ("1e-4", ["--drop", "1e-4"])],
    "duplicates": [("1e-5", ["--dup", "1e-5"]), ("1e-4", ["--dup", "1e-4"])],
    "garbage": [("1e-5", ["--garbage", "1e-5"]), ("1e-4", ["--garbage", "1e-4"])],
    "stalls": [("1e-4", ["--stall", "1e-4"]), ("1e-3", ["--stall", "1e-3"])],
    "disconnect": [("primary 1 s", ["--disconnect", "b@0.4:1"]), ("ncp 3 s", ["--disconnect", "a@0.4:3"])],
    "power cut": [("random op", ["--power-cut-random"])],
    "kill primary": [("at 30 KB", ["--kill-primary-at", "30000"]), ("at 90 KB", ["--kill-primary-at", "90000"])],
    "kill ncp": [("at 30 KB", ["--kill-ncp-at", "30000"]), ("at 90 KB", ["--kill-ncp-at", "90000"])],
    "all link faults": [("1e-5 each", ["--ber", "1e-5", "--drop", "1e-5", "--dup", "1e-5", "--garbage", "1e-5"])],
    # The device-side checklist: builds that misbehave, and a device that may not install now.
    # "@NAME" ships that build instead of the good one (see SHIPMENTS).
    "hanging build": [("commit timer 3 s", ["@hang", "--commit-timeout", "3"])],
    "slow confirm": [("2 s of 3 s", ["@slow", "--commit-timeout", "3"])],
    "breaking migration": [("schema 2", ["@breaking"])],
    "wrong hardware": [("hw-rev B only", ["@hw-b"])],
    "low battery": [("5 %, 2 s allowed", ["--battery", "5", "--max-defer", "2"])],
    # Packages (docs/packages.md): a delta against the factory image, applied as it arrives.
    "delta package": [("no fault", ["@delta"]), ("power cut, random op", ["@delta", "--power-cut-random"]),
                      ("kill primary mid-package", ["@delta", "--kill-primary-at", "HALF"]),
                      ("ber 1e-5", ["@delta", "--ber", "1e-5"])],
    "delta for another base": [("image behind it", ["@wrong-base"])],
}
PACKAGE_RUNS = {  # name -> the files shipped (the last one's size sets HALF); the factory is factory-code.bin
    "delta": ["delta.pkg"],
    "wrong-base": ["new-code.bin", "delta-other-base.pkg"],
}
SHIPMENTS = {  # name -> extra tag keys of the shipment
    "hang": {"dualmcu-test": "hang"},
    "slow": {"dualmcu-test": "slow-confirm:2"},
    "breaking": {"dualmcu-test": "breaking-migration", "config-schema": "2"},
    "hw-b": {"hw-rev": "B"},
}
INJECTED = ("bit_errors", "dropped", "duplicated", "garbage_bursts", "stalls", "disconnects")  # events, not bytes


def one_run(kind: str, rate: str, opts: list[str], seed: int, framing: str, fw: str, root: str) -> dict:
    work = os.path.join(root, f"{kind}-{rate}-{seed}".replace(" ", "_").replace("%", "pc").replace(",", ""))
    files, factory = [fw], os.path.join(work, "factory.bin")
    if opts and opts[0].startswith("@"):
        name, opts = opts[0][1:], opts[1:]
        if name in PACKAGE_RUNS:
            files, factory = [os.path.join(root, f) for f in PACKAGE_RUNS[name]], os.path.join(root, "factory-code.bin")
            opts = ["--factory", factory] + [str(os.path.getsize(files[-1]) // 2) if o == "HALF" else o for o in opts]
        else:
            files = [os.path.join(root, f"shipment-{name}.bin")]
    flash = os.path.join(work, "dev.flash")
    cmd = [sys.executable, "-m", "dualmcu", "run", *[x for f in files for x in ("--firmware", f)],
           "--flash", flash, "--workdir", work, "--json",
           "--framing", framing, "--pace", "--baud", "921600", "--seed", str(seed), "--write-timeout", "0.5",
           "--heartbeat", "1", "--timeout", "240", *opts]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, timeout=300)
    wall = time.monotonic() - t0
    events = [json.loads(x) for x in r.stdout.decode().splitlines() if x.startswith("{")]
    result = events[-1] if events and events[-1].get("event") == "result" else {}
    link = result.get("link", {})
    injected = sum(link.get(k, 0) for k in INJECTED) + result.get("power_cuts", 0)
    injected += result.get("primary_kills", 0) + result.get("ncp_kills", 0)
    good = {hashlib.sha256(open(factory, "rb").read()).digest(),
            *(hashlib.sha256(open(f, "rb").read()).digest() for f in files if not f.endswith(".pkg"))}
    if any(f.endswith(".pkg") for f in files):
        good.add(hashlib.sha256(open(os.path.join(root, "new-code.bin"), "rb").read()).digest())
    f = Flash.open(flash, create=False)
    try:
        bricked = bootable(f) is None
        state = BootStore(f).load()
        corrupt = sum(1 for rec in (state.slots if state else ()) if rec.installed and rec.sha256 not in good)
    finally:
        f.close()
    outcome = result.get("ncp_outcome")
    if r.returncode == 0:
        ending = "installed"
    elif outcome == "rollback":
        ending = f"rolled back: {result.get('rollback_reason')}"
    elif outcome == "deferred":
        ending = f"cancelled: deferred ({result.get('deferred_reason')})"
    else:
        ending = f"cancelled: {outcome or result.get('reason', 'no result')}"
    return {"kind": kind, "rate": rate, "seed": seed, "exit": r.returncode, "ending": ending, "injected": injected,
            "bricked": bricked, "corrupt_accepted": corrupt, "seconds": round(wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--framing", default="cobs", choices=["cobs", "blynk"])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--size", type=int, default=100 * 1024, help="Shipment size in bytes.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", action="append", metavar="FAULT", help="Run only this fault kind (repeatable).")
    a = ap.parse_args()
    unknown = set(a.only or ()) - set(MATRIX)
    if unknown:
        ap.error(f"no fault kind {', '.join(sorted(unknown))}; the kinds: {', '.join(MATRIX)}")
    matrix = {k: v for k, v in MATRIX.items() if not a.only or k in a.only}
    root = tempfile.mkdtemp(prefix="dualmcu-matrix-")
    fw = os.path.join(root, "shipment.bin")
    with open(fw, "wb") as f:
        f.write(build_image(make_info("2.0.0", "TMPLMATRIX", build="Nov 21 2026 00:00:00"), a.size))
    for name, keys in SHIPMENTS.items():
        with open(os.path.join(root, f"shipment-{name}.bin"), "wb") as f:
            f.write(build_image(make_info("2.0.0", "TMPLMATRIX", build="Nov 21 2026 00:00:00", **keys), a.size))
    factory = build_image(make_info("1.0.0", "TMPLMATRIX", build="Nov 20 2026 00:00:00"), a.size, content="code")
    new = next_image(factory, make_info("2.0.0", "TMPLMATRIX", build="Nov 21 2026 00:00:00"), 0.05)
    other = next_image(factory, make_info("1.0.0", "TMPLMATRIX", build="Nov 19 2026 00:00:00"), 0.05)
    for name, data in (("factory-code.bin", factory), ("new-code.bin", new),
                       ("delta.pkg", build_package(new, factory, "none", segment=16 * 1024)),
                       # Claims base 1.0.0 (the device's version) but was made from other bytes.
                       ("delta-other-base.pkg", build_package(new, other, "lzma"))):
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    jobs = [(k, rate, opts, s) for k, cells in matrix.items() for rate, opts in cells for s in range(1, a.seeds + 1)]
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(a.jobs) as pool:
        runs = list(pool.map(lambda j: one_run(*j, a.framing, fw, root), jobs))
    wall = time.monotonic() - t0
    if a.json:
        for r in runs:
            print(json.dumps(r))
    rows = []
    for kind, cells in matrix.items():
        for rate, _ in cells:
            rs = [r for r in runs if r["kind"] == kind and r["rate"] == rate]
            cancelled = sorted({r["ending"][11:] for r in rs if r["ending"].startswith("cancelled")})
            rolled = sorted({r["ending"][13:] for r in rs if r["ending"].startswith("rolled back")})
            n_rolled = sum(r["ending"].startswith("rolled back") for r in rs)
            rows.append((kind, rate, len(rs), sum(r["injected"] for r in rs),
                         sum(r["ending"] == "installed" for r in rs),
                         f"{n_rolled} ({', '.join(rolled)})" if n_rolled else "0",
                         ", ".join(cancelled) or "-", sum(r["bricked"] for r in rs),
                         sum(r["corrupt_accepted"] for r in rs), round(sum(r["seconds"] for r in rs), 1)))
    head = ("fault", "rate", "runs", "faults injected", "installed", "rolled back (reason)", "cancelled (reason)", "bricked",
            "corrupt accepted", "wall s")
    print(f"framing {a.framing}, link 921600 baud paced, {a.size // 1024} KiB image, {a.seeds} seeds, "
          f"{len(runs)} runs in {wall:.0f} s with {a.jobs} jobs")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    total = (len(runs), sum(r["injected"] for r in runs), sum(r["ending"] == "installed" for r in runs),
             sum(r["ending"].startswith("rolled back") for r in runs), sum(r["ending"].startswith("cancelled") for r in runs),
             sum(r["bricked"] for r in runs), sum(r["corrupt_accepted"] for r in runs))
    print(f"| all | | {total[0]} | {total[1]} | {total[2]} | {total[3]} | {total[4]} | {total[5]} | {total[6]} | {wall:.0f} |")
    return 1 if total[5] or total[6] else 0


if __name__ == "__main__":
    sys.exit(main())
