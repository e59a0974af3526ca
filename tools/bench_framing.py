#!/usr/bin/env python3
"""Throughput of both framing profiles, encode and decode, at several message sizes.

    .venv/bin/python tools/bench_framing.py [--json] [--seconds 0.5]

Decode is measured on a stream of many frames fed in 4 KiB reads, as a port delivers them.
Figures are MB/s of message bytes; the ratio column compares each to the cobs row of the same
size class (blynk frames stop at 1536 bytes), and
the last column to the 3 Mbaud wire (300 kB/s), which the framing must never limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


from cobs import cobs  # noqa: E402

from dualmcu.framing import get_profile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import rate  # noqa: E402

SIZES = (64, 1024, 4096)
WIRE_3M = 3_000_000 / 10


def bench(name: str, size: int, seconds: float) -> dict:
    p = get_profile(name, max_message=max(size, 64))
    msg = os.urandom(size)
    count = max(1, (1 << 20) // size)
    stream = b"".join(p.encode(os.urandom(size)) for _ in range(count))
    reads = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]

    def decode_all():
        d = p.decoder()
        for r in reads:
            d.feed(r)

    enc = rate(lambda: p.encode(msg), size, seconds)
    dec = rate(decode_all, size * count, seconds)
    return {"profile": name, "size": size, "encode_MBps": round(enc, 1), "decode_MBps": round(dec, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=0.5)
    a = ap.parse_args()
    # The blynk framing never carries more than 1536 bytes, so its largest row is 1536.
    rows = [
        bench(name, min(size, 1536) if name == "blynk" else size, a.seconds)
        for size in SIZES
        for name in ("cobs", "blynk")
    ]
    base = [r for r in rows if r["profile"] == "cobs"]
    for i, r in enumerate(rows):
        r["decode_vs_cobs"] = round(r["decode_MBps"] / base[i // 2]["decode_MBps"], 3)
        r["decode_vs_3Mbaud"] = round(r["decode_MBps"] * 1e6 / WIRE_3M, 1)
    meta = {"cobs_c_extension": bool(cobs._using_extension)}
    if a.json:
        for r in rows:
            print(json.dumps({**r, **meta}))
        return
    print(f"cobs C extension in use: {meta['cobs_c_extension']}")
    print(f"{'profile':<8}{'size':>6}{'encode MB/s':>13}{'decode MB/s':>13}{'dec/cobs':>10}{'dec/3Mbaud':>12}")
    for r in rows:
        print(
            f"{r['profile']:<8}{r['size']:>6}{r['encode_MBps']:>13}{r['decode_MBps']:>13}"
            f"{r['decode_vs_cobs']:>10}{r['decode_vs_3Mbaud']:>11}x"
        )


if __name__ == "__main__":
    main()
