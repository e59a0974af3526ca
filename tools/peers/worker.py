"""Encode and decode throughput of peer tools' framings; runs inside .venv-bench.

Prints one JSON object per framing and size: MB/s of message bytes, measured the same way as
tools/bench_framing.py (decode over a stream of many frames, fed in 4 KiB reads).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchutil import rate  # noqa: E402


class FakePort:
    """What esptool's slip_reader reads from: a stream handed over 4 KiB at a time."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def inWaiting(self) -> int:
        return min(4096, len(self.data) - self.pos)

    def read(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


class SlipWriter:
    """esptool's own SLIP encoder is ESPLoader.write; this stands in for its port."""

    def __init__(self):
        self.out = b""
        self._port = self

    def write(self, buf: bytes) -> None:
        self.out = buf

    def trace(self, message: str) -> None:
        pass


def smp(size: int, seconds: float) -> dict:
    from smp.packet import decode, encode

    msg = os.urandom(size)
    count = max(1, (1 << 20) // size)
    frames = [b"".join(encode(os.urandom(size))) for _ in range(count)]

    def dec():
        for fr in frames:
            d = decode()
            next(d)
            lines = fr.split(b"\n")
            try:
                for line in lines[:-1]:
                    d.send(line + b"\n")
            except StopIteration:
                pass

    return {"framing": "SMP serial (smpclient)", "size": size, "encode_MBps": rate(lambda: b"".join(encode(msg)), size, seconds),
            "decode_MBps": rate(dec, size * count, seconds)}


def ash(size: int, seconds: float) -> dict:
    import bellows.ash as A

    stuff, unstuff = A.AshProtocol._stuff_bytes, A.AshProtocol._unstuff_bytes
    msg = os.urandom(size)
    count = max(1, (1 << 20) // size)
    stream = b"".join(bytes(stuff(A.DataFrame(1, False, 2, os.urandom(size)).to_bytes())) + b"\x7e" for _ in range(count))
    reads = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]

    def dec():
        buf = b""
        for r in reads:
            buf += r
            *frames, buf = buf.split(b"\x7e")
            for fr in frames:
                A.parse_frame(bytes(unstuff(fr)))

    return {"framing": "EZSP ASH (bellows)", "size": size,
            "encode_MBps": rate(lambda: bytes(stuff(A.DataFrame(1, False, 2, msg).to_bytes())) + b"\x7e", size, seconds),
            "decode_MBps": rate(dec, size * count, seconds)}


def slip(size: int, seconds: float) -> dict:
    from esptool.loader import ESPLoader, slip_reader

    w = SlipWriter()
    msg = os.urandom(size)
    count = max(1, (1 << 20) // size)
    frames = []
    for _ in range(count):
        ESPLoader.write(w, os.urandom(size))
        frames.append(w.out)
    stream = b"".join(frames)

    def dec():
        reader = slip_reader(FakePort(stream), lambda m: None)
        for _ in range(count):
            next(reader)

    return {"framing": "SLIP (esptool)", "size": size, "encode_MBps": rate(lambda: ESPLoader.write(w, msg), size, seconds),
            "decode_MBps": rate(dec, size * count, seconds)}


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    for size in (64, 1024, 4096):
        for fn in (smp, ash, slip):
            if fn is ash and size > 256:
                continue  # an ASH frame carries at most 256 bytes
            r = fn(size, seconds)
            r["encode_MBps"], r["decode_MBps"] = round(r["encode_MBps"], 2), round(r["decode_MBps"], 2)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
