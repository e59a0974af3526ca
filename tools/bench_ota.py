#!/usr/bin/env python3
"""OTA goodput on the paced link: stop-and-wait and pipelined side by side.

    .venv/bin/python tools/bench_ota.py [--json] [--chunk 4064]

Both real cores run on the link model, paced at the baud rate (10 bit times a byte), with 1 ms
of USB-bridge latency each way and the primary's default flash timing (W25Q128JV typical:
0.4 ms per 256-byte program, 150 ms per 64 KiB block erase; the slot is erased ahead of the
writes in the flash's idle time).  Time runs from the offer to the primary's confirmed boot
of the new image, and is compared with the ideal: the longer of the wire's time for the
image's bytes (size x 10 / baud) and the flash's time to erase and program them.  The phases
are reported too: offer -> first write, the transfer, Finish -> confirmed.  A run that does
not end in success is an error.  The clock is virtual, so the figures are the same on any
machine and a 1 MiB update at 115200 baud takes a second to run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import report  # noqa: E402

from dualmcu.image.firmware import build_image, make_info  # noqa: E402
from dualmcu.link import LinkConfig  # noqa: E402
from dualmcu.sim import Simulation  # noqa: E402
from dualmcu.ncp.core import NcpConfig  # noqa: E402
from dualmcu.ncp.update import Shipment  # noqa: E402
from dualmcu.primary.boot import Bootloader  # noqa: E402
from dualmcu.primary.device import PrimaryConfig  # noqa: E402
from dualmcu.primary.flash import Flash, Geometry  # noqa: E402
from dualmcu.primary.ota import OtaConfig  # noqa: E402
from dualmcu.primary.timing import FlashTiming  # noqa: E402

BAUDS = (115200, 921600, 3_000_000)
SIZES = (256 * 1024, 1024 * 1024)
TARGETS = {115200: 97.0, 921600: 95.0, 3_000_000: 90.0}


def measure(baud: int, size: int, pipeline: bool, chunk: int, framing: str, write_answer: str = "programmed") -> dict:
    flash = Flash.in_memory(Geometry(4096, 4 << 20))
    Bootloader(flash).provision(build_image(make_info("1.0.0", "TMPLBENCH"), 64 * 1024, seed=1))
    ship = Shipment.from_bytes(build_image(make_info("2.0.0", "TMPLBENCH"), size, seed=2), "bench.bin")
    sim = Simulation(flash, ship, framing=framing, link=LinkConfig(baud=baud, latency=0.001),
                     ncp_config=NcpConfig(pipeline=pipeline),
                     primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=chunk, write_answer=write_answer)))
    t0 = time.perf_counter()
    outcome = sim.run_update(limit=3600)
    cpu = time.perf_counter() - t0
    if outcome != "success":
        raise SystemExit(f"bench_ota: {baud} baud, {size} bytes, pipeline={pipeline}: the update ended {outcome!r}")
    offer = sim.find("ota_offer", "ncp")[0]["t"]
    first = sim.find("ota_window", "ncp")[0]["t"]
    finished = sim.find("ota_finished", "ncp")[-1]["t"]
    confirmed = sim.find("confirmed", "primary")[-1]["t"]
    wire = size * 10 / baud
    timing = FlashTiming()
    flash_s = timing.erase(size) + timing.program(size)
    ideal = max(wire, flash_s)
    return {"baud": baud, "size": size, "mode": "pipelined" if pipeline else "stop-and-wait",
            "window": sim.find("ota_window", "ncp")[0]["window"], "chunk": sim.find("ota_start", "ncp")[0]["chunk_size"],
            "outcome": outcome, "seconds": round(confirmed - first, 3), "wire_seconds": round(wire, 3),
            "flash_seconds": round(flash_s, 3), "from_offer_seconds": round(confirmed - offer, 3),
            "phases": {"offer_to_first_write": round(first - offer, 3), "transfer": round(finished - first, 3),
                       "finish_to_confirmed": round(confirmed - finished, 3)},
            "percent_of_wire": round(100 * wire / (confirmed - first), 1),
            "percent_of_ideal_from_offer": round(100 * ideal / (confirmed - offer), 1),
            "retries": sim.ncp.sending.total_retries if sim.ncp.sending else 0, "run_cpu_s": round(cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--chunk", type=int, default=4080, help="Chunk size the primary asks for (4080, the largest a cobs frame carries: 4096 less the write's 16 bytes of header, offset, length and CRC).")
    ap.add_argument("--framing", default="cobs", choices=["cobs", "blynk"])
    ap.add_argument("--recipe", action="store_true",
                    help="What a real MCU can do within the plain protocol: the chunk size and when it answers a write.")
    a = ap.parse_args()
    if a.recipe:
        return recipe(a.json)
    # 4 MiB at 3 Mbaud too: there the flash, not the wire, sets the pace.
    runs = [(b, s) for b in BAUDS for s in SIZES] + [(3_000_000, 4 << 20)]
    rows = [measure(b, s, p, a.chunk, a.framing) for b, s in runs for p in (False, True)]
    if a.json:
        return report(rows, True, "", [], None)
    pairs = [(sw, pl) for sw, pl in zip(rows[0::2], rows[1::2])]  # measured in that order

    def cells(pair):
        sw, pl = pair
        ph = pl["phases"]
        return (sw["baud"], f"{sw['size'] // 1024} KiB",
                f"{sw['percent_of_ideal_from_offer']} % ({sw['from_offer_seconds']} s)",
                f"{pl['percent_of_ideal_from_offer']} % ({pl['from_offer_seconds']} s, w={pl['window']})",
                f"{ph['offer_to_first_write']} / {ph['transfer']} / {ph['finish_to_confirmed']} s",
                f"{pl['retries']}", f"{TARGETS[sw['baud']]} %", f"{pl['wire_seconds']} / {pl['flash_seconds']} s")

    report(pairs, False, f"framing {a.framing}, chunk {rows[0]['chunk']}, latency 1 ms each way, W25Q128JV flash timing; "
           "from the offer to the confirmed boot, as a share of max(wire, flash)",
           ["baud", "image", "stop-and-wait", "pipelined (window)", "pipelined phases: offer>first write / transfer / finish>confirmed",
            "pipelined resends", "target", "wire / flash"], cells)


def recipe(as_json: bool) -> None:
    """Stop-and-wait only (no extension): each chunk size a framing carries, answered once
    programmed or once buffered (double buffering), 1 MiB from the first write."""
    rows = []
    for framing, chunk in (("blynk", 1024), ("blynk", 1520), ("cobs", 1024), ("cobs", 4080)):
        for answer in ("programmed", "buffered"):
            r = {"framing": framing, "chunk": chunk, "write_answer": answer}
            for baud in BAUDS:
                m = measure(baud, 1 << 20, False, chunk, framing, answer)
                r[str(baud)] = m["percent_of_wire"]
            rows.append(r)
    report(rows, as_json, "The plain protocol, 1 MiB, from the first write to the confirmed boot, as a share of "
           "the wire (latency 1 ms each way, W25Q128JV timing)",
           ["framing", "chunk", "write answered", *(f"{b} baud" for b in BAUDS)],
           lambda r: (r["framing"], r["chunk"], r["write_answer"], *(f"{r[str(b)]} %" for b in BAUDS)))


if __name__ == "__main__":
    main()
