"""The events table: every kind a side emits is listed once, and every listed kind is emitted.

The JSON stream is what tools read, so its kinds must not drift: a core cannot emit a kind the
table lacks, and a row no code emits is a stale promise in docs/events.md.
"""

from __future__ import annotations

import io
import json
import os
import re

import pytest

from dualmcu.rpc.events import Event, oneway_event
from dualmcu.rpc.interface import INTERFACE, NCP, ONEWAY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["ncp", "primary", "rpc", "dualmcu"]


def source_text() -> str:
    parts = []
    for top in SOURCES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            parts += [open(os.path.join(dirpath, f)).read() for f in files if f.endswith(".py")]
    return "\n".join(parts)


def test_every_kind_has_a_side_and_a_meaning_and_is_unique():
    values = [k.value for k in Event]
    assert len(values) == len(set(values))
    for kind in Event:
        assert kind.side in ("ncp", "primary", "both", "shell"), kind
        assert kind.doc and kind.section, kind
        assert kind == kind.value and str(kind) == kind.value and f"{kind}" == kind.value


def test_every_listed_kind_is_emitted_somewhere():
    text = source_text()
    used = set(re.findall(r"Event\.([A-Z_]+)\b", text))
    generated = {oneway_event(fn.name).name for fn in INTERFACE if fn.server == NCP and fn.kind == ONEWAY}
    stale = [k.value for k in Event if k.name not in used and k.name not in generated]
    assert not stale, f"listed in rpc/events.py but emitted nowhere: {stale}"


def test_no_core_emits_a_kind_as_a_plain_string():
    # emit("…") would bypass the table; the cores and shells name members only.
    text = source_text()
    assert not re.findall(r"\bemit\(\s*[\"']", text)


def test_a_device_refuses_a_kind_the_table_lacks():
    from dualmcu.framing import get_profile
    from dualmcu.rpc.device import Device

    got = []
    dev = Device("ncp", get_profile("cobs"), 0.0, lambda kind, **f: got.append(kind))
    dev.emit(Event.STATE, state="idle")
    with pytest.raises(TypeError, match="not an Event"):
        dev.emit("state", state="idle")
    assert got == [Event.STATE]


def test_json_lines_count_time_from_the_start_they_are_given():
    from dualmcu.output import EventPrinter

    out = io.StringIO()
    p = EventPrinter("ncp", as_json=True, out=out, start=1000.0)
    p(Event.STATE, t=1012.5, state="connected")
    p(Event.SHIPMENT, file="a.bin")  # before the port opens: no time
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == {"side": "ncp", "event": "state", "t": 12.5, "state": "connected"}
    assert "t" not in second
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", p.origin_utc())


def reading(r: int):
    """A thread that reads the pipe ``r`` to its end into the bytearray returned with it."""
    import threading

    got = bytearray()

    def read_all():
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    return got, reader


@pytest.mark.parametrize("as_json", [True, False])
def test_event_lines_to_a_pipe_never_block_the_side_and_all_arrive_at_its_end(as_json):
    """A reader that stops reading (a pager on its first screen) must not stall the side:
    lines wait in memory while the pipe is full, and the side's end writes the rest. The same
    for --json on stdout and for the readable lines (-v) on stderr."""
    from dualmcu.output import EventPrinter

    r, w = os.pipe()
    out = os.fdopen(w, "w")
    p = EventPrinter("ncp", as_json=as_json, verbose=True, out=out, start=0.0)
    for i in range(3000):  # about 150 KB: more than a pipe holds; nobody reads yet
        p(Event.OTA_PROGRESS, t=1.0, offset=i, size=3000)
    assert p.outlet.held and os.get_blocking(w)  # the pipe's own mode, shared with others, is kept
    got, reader = reading(r)
    p.close()
    out.close()
    reader.join(10)
    if as_json:
        offsets = [json.loads(line)["offset"] for line in got.decode().splitlines()]
    else:
        offsets = [int(re.search(r"offset=(\d+)", line)[1]) for line in got.decode().splitlines()]
    assert offsets == list(range(3000))
    os.close(r)


def test_event_lines_to_a_socket_wait_for_its_reader_as_on_a_pipe():
    """stdout may be a socket (a service manager's log socket, socat): the same outlet, the
    same order, nothing lost while the reader is away."""
    import socket

    from dualmcu.output import EventPrinter

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # full long before 3000 lines
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    out = os.fdopen(a.detach(), "w")
    p = EventPrinter("ncp", as_json=True, out=out, start=0.0)
    for i in range(3000):
        p(Event.OTA_PROGRESS, t=1.0, offset=i, size=3000)
    assert p.outlet.held  # the socket is full and nobody reads: the lines wait
    got, reader = reading(b.fileno())
    p.close()
    out.close()
    reader.join(10)
    assert [json.loads(line)["offset"] for line in got.decode().splitlines()] == list(range(3000))
    b.close()


def test_json_lines_past_the_limit_are_left_out_and_counted_once_the_reader_catches_up():
    from dualmcu.output import Outlet, json_note

    r, w = os.pipe()
    out = os.fdopen(w, "w")
    outlet = Outlet(out, json_note("primary"), limit=100_000)
    line = json.dumps({"side": "primary", "event": "ota_progress", "pad": "x" * 80}) + "\n"
    for _ in range(3000):  # 300 KB: the pipe takes 64 KiB, 100 KB wait, the rest is left out
        outlet.write(line)
    got, reader = reading(r)
    outlet.close()
    out.close()
    reader.join(10)
    lines = got.decode().splitlines()
    kept = len(lines) - 1
    assert 1000 < kept < 3000 and lines[:-1] == [line.rstrip("\n")] * kept
    said = json.loads(lines[-1])
    assert said == {"side": "primary", "event": "events_dropped", "lines": 3000 - kept, "held": 100_000}
    os.close(r)


def test_a_stream_that_cannot_be_written_fails_the_outlet_not_the_core_that_emitted():
    """A full disk under --json > file: the error is kept for the shell to end the side with
    one line, never raised into the core whose event it was (where a handler's error would
    become an RPC error status)."""
    from dualmcu.output import EventPrinter

    import contextlib

    full = open("/dev/full", "w")
    p = EventPrinter("ncp", as_json=True, out=full, start=0.0)
    p(Event.STATE, t=1.0, state="connected")
    p(Event.STATE, t=2.0, state="connected")  # after the failure: nowhere, no error
    assert isinstance(p.failed, OSError)
    assert p.outlet.broken() == "cannot write the event lines to the output: No space left on device"
    p.close()
    with contextlib.suppress(OSError):
        full.close()  # the file's own buffer still holds the line it could not write


def test_a_closed_stream_takes_lines_and_fails_nothing():
    from dualmcu.output import Outlet, json_note

    outlet = Outlet(None, json_note("ncp"))  # what Python makes of a closed stdout (>&-)
    outlet.write("{}\n")
    outlet.close()
    assert outlet.failed is None and outlet.broken() is None


def test_readable_lines_show_values_for_people_not_python_reprs():
    """`telemetry={'version': ...}`, `dropped={'bad_encoding': 16}`, `files=['new2.bin']` and
    `build=None` leaked into the readable lines."""
    import io

    from dualmcu.rpc.events import Event
    from dualmcu.output import EventPrinter

    err = io.StringIO()
    emit = EventPrinter("ncp", False, out=err, start=0.0)
    emit(Event.OTA_OUTCOME, outcome="success", telemetry={"version": "1.1.0", "ota_state": "trial"}, build=None)
    emit(Event.NO_PEER, bytes=40, dropped={"bad_encoding": 16}, files=["new2.bin", "new3.bin"], ok=True)
    emit.close()
    lines = err.getvalue().splitlines()
    assert lines[0].endswith("ota_outcome          outcome=success telemetry=version:1.1.0,ota_state:trial")
    assert lines[1].endswith("no_peer              bytes=40 dropped=bad_encoding:16 files=new2.bin,new3.bin ok=yes")
    assert not any(c in err.getvalue() for c in "{}[]'")


def test_the_progress_rate_counts_only_what_crossed_while_it_watched(monkeypatch):
    """At 115200 (11.25 KiB/s of payload at most) the line showed 11.3-11.4 KiB/s: the first
    step's chunk, which crossed before the clock started, was counted over the time after."""
    import io

    from dualmcu import output

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    p = output.Progress(out)
    now = [100.0]
    monkeypatch.setattr(output.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(p, "width", lambda: 200)
    line_rate = 11520  # bytes a second at 115200 baud, 10 bits a byte
    for k in range(1, 41):  # a 1 KiB chunk acknowledged each time it has crossed
        now[0] = 100.0 + k * 1024 / line_rate
        p.update(k * 1024, 40 * 1024)
    shown_rate = float(out.getvalue().rsplit("\r", 1)[1].split("KiB/s")[0].split()[-1])
    assert shown_rate == round(line_rate / 1024, 1)  # 11.2: never above the line
