#!/usr/bin/env python3
"""Real time, as a user clocks it: `dualmcu run` in real processes, next to the virtual clock.

    .venv/bin/python tools/bench_realtime.py [--json] [--runs 3] [--only paced|unpaced]
                                             [--chunk N]

Each row runs the command a user runs, `dualmcu run --pace --baud B --latency 0.001 --json`,
from a start of its own, and reads the processes' events (both sides count their time from the
run's start, one origin).  It reports, per run:

* from the offer to the confirmed boot, and its phases: offer -> first write, the transfer,
  Finish -> confirmed;
* the whole command, from its start to its exit, and what a 4 KiB run of the same command
  costs (start-up, provisioning, reboots): the fixed part a user waits for whatever the size;
* the same update on the virtual clock (tools/bench_ota.py's model: the same cores, link and
  flash timing), side by side, and the gap in points of the wire (or of max(wire, flash));
* one write at a time, what real time adds to each round trip, next to the floor: two bare
  processes that only echo a write's bytes and its answer's through the same virtual UART,
  each pacing what it sends with the shell's own port.

A run that does not end with the new image confirmed stops the benchmark with an error: it is
never a row.  `unpaced` moves 16 MiB through the pty pair with nothing paced and an instant
flash, against a plain copy through a pty pair (writer and reader in processes of their own,
from the first write to the last read).  Peak memory per image size is tools/bench_memory.py's.
A run that fails stops the benchmark with its reason on stderr and exit 1.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchutil import as_installed, report  # noqa: E402
from bench_ota import measure  # noqa: E402

from dualmcu.image.firmware import build_image, make_info  # noqa: E402
from dualmcu.primary.timing import FlashTiming  # noqa: E402

DUALMCU = [sys.executable, "-m", "dualmcu"]
FW_TYPE = "TMPLBENCH"
MiB = 1 << 20


def images(tmp: str, sizes: list[int]) -> tuple[str, dict[int, str]]:
    factory = os.path.join(tmp, "factory.bin")
    with open(factory, "wb") as f:
        f.write(build_image(make_info("1.0.0", FW_TYPE), 64 * 1024, seed=1))
    out = {}
    for size in sizes:
        out[size] = os.path.join(tmp, f"new-{size}.bin")
        with open(out[size], "wb") as f:
            f.write(build_image(make_info("2.0.0", FW_TYPE), size, seed=2))
    return factory, out


def run(factory: str, firmware: str, size: int, *args: str) -> dict:
    """One `dualmcu run`; its figures, or an error when it did not confirm the new image."""
    slot = max(2 * MiB, -(-size // MiB) * MiB + MiB)
    cmd = DUALMCU + ["run", "--factory", factory, "--firmware", firmware, "--slot-size", str(slot),
                     "--json", "--timeout", "900", *args]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    whole = time.monotonic() - t0
    events = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    result = events[-1] if events else {}
    if p.returncode != 0 or result.get("ncp_outcome") != "success":
        raise SystemExit(f"bench_realtime: {' '.join(args)} with {size} bytes ended "
                     f"{result.get('reason') or p.stderr.strip()[-200:]!r} (exit {p.returncode})")

    def at(side: str, kind: str, last: bool = False) -> float:
        ts = [e["t"] for e in events if e.get("side") == side and e.get("event") == kind and "t" in e]
        return ts[-1] if last else ts[0]

    offer, first = at("ncp", "ota_offer"), at("ncp", "ota_window")
    window = next(e["window"] for e in events if e.get("side") == "ncp" and e.get("event") == "ota_window")
    finished, confirmed = at("ncp", "ota_finished", True), at("primary", "confirmed", True)
    return {"whole_seconds": round(whole, 3), "from_offer_seconds": round(confirmed - offer, 3),
            "first_write_seconds": round(confirmed - first, 3),
            "phases": {"offer_to_first_write": round(first - offer, 3), "transfer": round(finished - first, 3),
                       "finish_to_confirmed": round(confirmed - finished, 3)},
            "resends": result.get("retries", 0), "peak_rss_kib": result.get("peak_rss_kib", {}), "window": window}


def median_run(runs: int, *a) -> dict:
    """The run with the median time from the offer, of ``runs`` runs."""
    got = sorted((run(*a) for _ in range(runs)), key=lambda r: r["from_offer_seconds"])
    pick = dict(got[len(got) // 2])
    pick["from_offer_range"] = [got[0]["from_offer_seconds"], got[-1]["from_offer_seconds"]]
    return pick


# -- paced: the real protocol and the pipelined one, real next to virtual --------------------------

PACED = [
    # (what, baud, size, pipeline, chunk, write answer)
    ("real protocol", 921600, MiB, False, 1024, "programmed"),
    ("real protocol", 3_000_000, MiB, False, 1024, "programmed"),
    ("real protocol, buffered answer", 921600, MiB, False, 1024, "buffered"),
    ("real protocol, buffered answer, chunk 4080", 921600, MiB, False, 4080, "buffered"),
    ("pipelined", 921600, MiB, True, 4080, "programmed"),
    ("pipelined", 3_000_000, 4 * MiB, True, 1024, "programmed"),
    ("pipelined", 3_000_000, 4 * MiB, True, 4080, "programmed"),
]


def paced(runs: int, factory: str, files: dict[int, str], small: str) -> list[dict]:
    fixed = {}
    rows = []
    timing = FlashTiming()
    for what, baud, size, pipeline, chunk, answer in PACED:
        args = ["--pace", "--baud", str(baud), "--latency", "0.001", "--chunk-size", str(chunk),
                "--write-answer", answer] + ([] if pipeline else ["--no-pipeline"])
        steal = -stolen()
        real = median_run(runs, factory, files[size], size, *args)
        steal += stolen()
        if (baud, pipeline, chunk, answer) not in fixed:
            fixed[(baud, pipeline, chunk, answer)] = median_run(runs, factory, small, 4096, *args)["whole_seconds"]
        virt = measure(baud, size, pipeline, chunk, "cobs", answer)
        wire = size * 10 / baud
        ideal = max(wire, timing.erase(size) + timing.program(size))
        # The real protocol is compared on the wire from the first write (the model's own
        # figure); the pipelined one from the offer against max(wire, flash), the goal.
        if pipeline:
            r_pct, v_pct = 100 * ideal / real["from_offer_seconds"], 100 * ideal / virt["from_offer_seconds"]
        else:
            r_pct, v_pct = 100 * wire / real["first_write_seconds"], 100 * wire / virt["seconds"]
        trips = -(-size // chunk)
        added = (real["phases"]["transfer"] - virt["phases"]["transfer"]) / trips  # per round trip
        floor = echo_floor(baud, chunk) if not pipeline else None
        rows.append({"what": what, "baud": baud, "size": size, "chunk": chunk, "write_answer": answer,
                     "added_us_per_round_trip": None if pipeline else round(added * 1e6),
                     "echo_floor_us": None if floor is None else round(floor * 1e6),
                     "measure": "% of max(wire, flash) from the offer" if pipeline else "% of the wire from the first write",
                     "real_percent": round(r_pct, 1), "virtual_percent": round(v_pct, 1),
                     "gap_points": round(v_pct - r_pct, 1), "real": real,
                     "virtual_from_offer_seconds": virt["from_offer_seconds"], "virtual_resends": virt["retries"],
                     "fixed_whole_seconds_4k": fixed[(baud, pipeline, chunk, answer)],
                     "wire_seconds": round(wire, 3), "ideal_seconds": round(ideal, 3),
                     "host_stole_seconds": round(steal, 2)})
    return rows


# -- the floor: what two bare processes on the same virtual UART cost a round trip ---------------

ECHO = r"""
import pickle, statistics, sys, time
from dualmcu.ports import Port
from dualmcu.shell import wait_for
wire, role, size, answer = pickle.loads(bytes.fromhex(sys.argv[1])), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
port = Port.of(wire)

def until(got_enough):
    # The shell's own wait: the next byte or the end's next deadline, the last stretch polled.
    got = 0
    while not got_enough(got):
        data = port.wait_read(wait_for(port.next_deadline(), time.monotonic(), 0.5))
        now = time.monotonic()
        port.pump(now)
        got += len(data)
    return now

if role == "answer":
    while True:
        now = until(lambda got: got >= size)
        port.write(b"a" * answer, now)
time.sleep(0.3)
ts = []
for _ in range(300):
    t = time.monotonic()
    port.write(b"w" * size, t)
    ts.append(until(lambda got: got >= answer) - t)
print(statistics.median(ts))
"""


def frame_sizes(chunk: int) -> tuple[int, int]:
    """Bytes on the wire of one write of ``chunk`` bytes and of its answer (cobs)."""
    from dualmcu.framing import get_profile
    from dualmcu.rpc.interface import INTERFACE
    from dualmcu.rpc.message import Invoke, Result

    p, fn = get_profile("cobs"), INTERFACE["client_otaUpdateWrite"]
    write = Invoke(fn.uid, 0x1234, fn.encode_args({"offset": 1 << 20, "chunk": bytes(chunk), "crc32": 0})).encode()
    return len(p.encode(write)), len(p.encode(Result(0x1234, 0, fn.encode_result(True)).encode()))


def echo_floor(baud: int, chunk: int) -> float:
    """Seconds a round trip costs above the wire and the two latencies, for two processes that
    only read and write (a write's bytes one way, its answer's back) through the same virtual
    UART as `dualmcu run`'s, each pacing what it sends with the shell's own port: what no
    emulated side can go below on this machine."""
    import pickle

    from dualmcu.link import LinkConfig
    from dualmcu.runner import VirtualUart
    from dualmcu.ports import Wire

    size, answer = frame_sizes(chunk)
    uart = VirtualUart("pty")
    link = LinkConfig(baud=baud, latency=0.001)

    def side(end: str, role: str, **kw):
        wire = pickle.dumps(Wire(uart.fds[end], end, baud, uart.names[end], link)).hex()
        return subprocess.Popen([sys.executable, "-c", ECHO, wire, role, str(size), str(answer)],
                                pass_fds=(uart.fds[end],), **kw)

    try:
        peer = side("b", "answer")
        asker = side("a", "ask", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = asker.communicate(timeout=120)
        peer.kill()
        peer.wait()
    finally:
        uart.close()
    if asker.returncode != 0:
        raise SystemExit(f"bench_realtime: the bare echo failed: {err.strip()[-200:]}")
    return float(out) - (size + answer) * 10 / baud - 0.002


# -- unpaced: a pty OTA against a plain pty copy ----------------------------------------------------

COPY = r"""
import os, sys, time
fd, n = int(sys.argv[1]), int(sys.argv[2])
os.set_blocking(fd, True)
if sys.argv[3] == "write":
    block = bytes(range(256)) * 256
    sent = 0
    print(time.monotonic(), flush=True)  # the copy starts with its first write
    while sent < n:  # a pty holds back a writer whose reader lags: nothing is lost
        sent += os.write(fd, block[:min(len(block), n - sent)])
    time.sleep(1)
else:
    got = 0
    while got < n:
        got += len(os.read(fd, 65536))
    print(time.monotonic())
"""


def plain_copy(size: int) -> float:
    """Seconds for ``size`` bytes through the same virtual UART as `dualmcu run`'s (a pty
    pair), from a writer process to a reader process, 64 KiB a write."""
    from dualmcu.runner import VirtualUart

    uart = VirtualUart("pty")
    try:
        reader = subprocess.Popen([sys.executable, "-c", COPY, str(uart.fds["b"]), str(size), "read"],
                                  stdout=subprocess.PIPE, text=True, pass_fds=(uart.fds["b"],))
        time.sleep(0.5)  # the reader is waiting before the first byte
        writer = subprocess.Popen([sys.executable, "-c", COPY, str(uart.fds["a"]), str(size), "write"],
                                  stdout=subprocess.PIPE, text=True, pass_fds=(uart.fds["a"],))
        out, _ = reader.communicate(timeout=300)
        started, _ = writer.communicate(timeout=60)
    finally:
        uart.close()
    if reader.returncode != 0 or writer.returncode != 0:
        raise SystemExit("bench_realtime: the plain copy failed")
    # From the first write to the last read: the writer's start-up is no part of the copy,
    # as the OTA's transfer is timed from its first write.
    return float(out.strip()) - float(started.strip())


def stolen() -> float:
    """Seconds of CPU the hypervisor has given other guests so far (Linux /proc/stat, all
    CPUs): a run that lost much of it was slowed by the host, not by itself."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# A pair (a copy and a run, about 2.5 s) the host took at most this much CPU from is quiet.
QUIET = 0.05

UNPACED = [
    # (pipelined, chunk, the primary's --buffer): 32K is its default; with 64K it holds one
    # chunk of 64 KiB ahead, so those go two at a time.
    (False, 4080, "32K"), (True, 1024, "32K"), (True, 4080, "32K"), (True, 16384, "32K"),
    (True, 65535, "32K"), (True, 65535, "64K"),
]


def unpaced(runs: int, factory: str, files: dict[int, str], chunks: list[int]) -> list[dict]:
    """Each row's runs alternate with plain copies, and the ratio is the median of each run's
    against the copy just before it: the machine's speed drifts by half between minutes on a
    shared host, a copy measured once at the start would not be fair to either.  The window
    is the one the two sides agreed on: the NCP asks to pipeline, and the primary's buffer
    decides how many chunks may be held ahead of a missing one (none of 65535 bytes in its
    default 32 KiB)."""
    size = 16 * MiB
    rows = []
    for pipeline, chunk, buffer in UNPACED:
        if chunks and chunk not in chunks:
            continue
        for every in ("0", "0.1"):  # every chunk (--json), or what a person's progress line needs
            args = ["--flash-timing", "0,0,0", "--progress-interval", every, "--buffer", buffer] + \
                ([] if pipeline else ["--no-pipeline"])
            copies, got, stole = [], [], []
            for _ in range(runs):
                before = stolen()
                copies.append(plain_copy(size))
                got.append(run(factory, files[size], size, "--chunk-size", str(chunk), *args))
                stole.append(stolen() - before)
            steal = sum(stole)
            transfer = statistics.median(r["phases"]["transfer"] for r in got)
            copy = statistics.median(copies)
            # Each run against the copy made just before it: the host's speed drifts between
            # minutes, and a pair shares its minute.
            pairs = [(c / r["phases"]["transfer"], t) for c, r, t in zip(copies, got, stole)]
            paired = sorted(ratio for ratio, _ in pairs)
            # The pairs the host took (next to) nothing from: the CPU it gives other guests
            # slows the copy and the run unevenly, so a busy minute says little either way.
            quiet = sorted(ratio for ratio, t in pairs if t <= QUIET)
            windows = sorted({r["window"] for r in got})
            rows.append({"mode": "pipelined" if pipeline else "stop-and-wait (--no-pipeline)",
                         "buffer": buffer,
                         "window": windows[0] if len(windows) == 1 else windows, "chunk": chunk, "size": size,
                         "progress": "every chunk" if every == "0" else "every 0.1 s",
                         "transfer_seconds": round(transfer, 3), "copy_seconds": round(copy, 3),
                         "ratio_to_copy": round(statistics.median(paired), 2),
                         "pair_ratios": [round(x, 2) for x in paired],
                         "quiet_pair_ratios": [round(x, 2) for x in quiet],
                         "pairs": [{"copy": round(c, 3),
                                    "transfer": round(r["phases"]["transfer"], 3),
                                    "host_stole": round(t, 2)}
                                   for c, r, t in zip(copies, got, stole)],
                         "mb_per_s": round(size / transfer / 1e6, 1),
                         "whole_seconds": round(statistics.median(r["whole_seconds"] for r in got),
                                                3),
                         "host_stole_seconds": round(steal, 2)})
    return rows


def quiet_cell(ratios: list[float]) -> str:
    """The quiet pairs' median ratio and how many there were."""
    return f"{round(statistics.median(ratios), 2)} ({len(ratios)})" if ratios else "- (0)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=3, help="Runs of each row; the median is reported.")
    ap.add_argument("--only", choices=["paced", "unpaced"], action="append")
    ap.add_argument("--chunk", type=int, action="append", default=[],
                    help="Only the unpaced rows of this chunk size (repeatable).")
    a = ap.parse_args()
    as_installed()
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    sizes = sorted({chunk for _, chunk, _ in UNPACED})
    if not set(a.chunk) <= set(sizes):
        ap.error(f"--chunk: the unpaced rows have chunks of {', '.join(map(str, sizes))} bytes")
    only = set(a.only or ["paced", "unpaced"])
    if a.chunk and "unpaced" not in only:
        ap.error("--chunk selects unpaced rows: with --only paced it has nothing to select")
    with tempfile.TemporaryDirectory() as tmp:
        factory, files = images(tmp, [4096, MiB, 4 * MiB, 16 * MiB])
        if "paced" in only:
            rows = paced(a.runs, factory, files, files[4096])
            report(rows, a.json, f"Paced, 1 ms latency each way, W25Q128JV timing, median of {a.runs} runs "
                   "(the range is of the time from the offer)",
                   ["what", "baud", "image", "chunk", "measure", "real", "virtual", "gap (points)",
                    "real phases: offer>first write / transfer / finish>confirmed", "real from offer (range)",
                    "whole command (a 4 KiB run)", "resends real / virtual",
                    "added a round trip: real / bare echo", "CPU the host took meanwhile"],
                   lambda r: (r["what"], r["baud"], f"{r['size'] // 1024} KiB", r["chunk"], r["measure"],
                              f"{r['real_percent']} %", f"{r['virtual_percent']} %", r["gap_points"],
                              " / ".join(f"{v} s" for v in r["real"]["phases"].values()),
                              f"{r['real']['from_offer_seconds']} s ({r['real']['from_offer_range'][0]}-"
                              f"{r['real']['from_offer_range'][1]})",
                              f"{r['real']['whole_seconds']} s ({r['fixed_whole_seconds_4k']} s)",
                              f"{r['real']['resends']} / {r['virtual_resends']}",
                              "-" if r["echo_floor_us"] is None
                              else f"{r['added_us_per_round_trip']} / {r['echo_floor_us']} us",
                              f"{r['host_stole_seconds']} s"))
        if "unpaced" in only:
            rows = unpaced(a.runs, factory, files, a.chunk)
            report(rows, a.json, f"\nUnpaced, instant flash, 16 MiB, median of {a.runs} runs",
                   ["asked", "buffer", "window", "chunk", "progress events", "transfer", "MB/s",
                    "plain copy", "ratio to the copy (pairs: median, range)",
                    "quiet pairs: median (how many)", "whole command",
                    "CPU the host took meanwhile"],
                   lambda r: (r["mode"], r["buffer"], r["window"], r["chunk"], r["progress"],
                              f"{r['transfer_seconds']} s", r["mb_per_s"], f"{r['copy_seconds']} s",
                              f"{r['ratio_to_copy']} "
                              f"({r['pair_ratios'][0]}-{r['pair_ratios'][-1]})",
                              quiet_cell(r["quiet_pair_ratios"]),
                              f"{r['whole_seconds']} s", f"{r['host_stole_seconds']} s"))


if __name__ == "__main__":
    main()
