#!/usr/bin/env python3
"""Peak memory of each process for 256 KiB, 4 MiB and 16 MiB images: it must not grow.

    .venv/bin/python tools/bench_memory.py [--json]

Each row is one ``dualmcu run`` (two processes over ptys, unpaced, W25Q flash timing) with 16 MiB
slots; the peak resident set (VmHWM) of each process is read from /proc while it runs.  The
NCP streams the shipment from its file; the primary streams each chunk into its flash file
with positioned writes, and reads images back in 64 KiB blocks to check them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


from dualmcu.image.firmware import build_image, make_info  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import as_installed, report  # noqa: E402

SIZES = (256 * 1024, 4 << 20, 16 << 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    as_installed()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dualmcu-mem-") as root:
        for size in SIZES:
            fw = os.path.join(root, f"fw-{size}.bin")
            with open(fw, "wb") as f:
                f.write(build_image(make_info("2.0.0", "TMPLMEM"), size))
            work = os.path.join(root, f"w{size}")
            r = subprocess.run([sys.executable, "-m", "dualmcu", "run", "--firmware", fw, "--slot-size", "16M",
                                "--workdir", work, "--json", "--timeout", "600"], capture_output=True, timeout=900)
            lines = [json.loads(x) for x in r.stdout.decode().splitlines() if x.startswith("{")]
            result = lines[-1] if lines else {}
            if r.returncode != 0 or result.get("exit_code") != 0:
                # A run that did not confirm the new image measured something else: not a row.
                raise SystemExit(f"bench_memory: {size} bytes ended {result.get('reason', r.stderr.decode()[-200:])!r}")
            rows.append({"size": size, "exit": result["exit_code"], "seconds": result["seconds"],
                         "ncp_peak_kib": result["peak_rss_kib"]["ncp"], "primary_peak_kib": result["peak_rss_kib"]["primary"]})
    base = rows[0]
    report(rows, a.json, "", ["image", "exit", "seconds", "NCP peak RSS", "primary peak RSS", "NCP vs 256 KiB",
                              "primary vs 256 KiB"],
           lambda r: (f"{r['size'] // 1024} KiB", r["exit"], r["seconds"], f"{r['ncp_peak_kib'] / 1024:.1f} MiB",
                      f"{r['primary_peak_kib'] / 1024:.1f} MiB", f"{r['ncp_peak_kib'] / base['ncp_peak_kib']:.2f}",
                      f"{r['primary_peak_kib'] / base['primary_peak_kib']:.2f}"))

if __name__ == "__main__":
    main()
