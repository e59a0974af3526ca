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
    from dualmcu.shell import EventPrinter

    out = io.StringIO()
    p = EventPrinter("ncp", as_json=True, out=out, start=1000.0)
    p(Event.STATE, t=1012.5, state="connected")
    p(Event.SHIPMENT, file="a.bin")  # before the port opens: no time
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == {"side": "ncp", "event": "state", "t": 12.5, "state": "connected"}
    assert "t" not in second
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", p.origin_utc())
