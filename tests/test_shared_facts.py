"""The shared wire facts (../shared/BLYNK_NCP_WIRE.md, checked against the real C driver and its
interface definition) read as tests: every uid, name, kind and client timeout it lists is the
interface table's.  The framing vectors of its section 6 are in test_framing.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from dualmcu.rpc.interface import DEFAULT_TIMEOUT, INTERFACE, INVOKE, ONEWAY

FACTS = Path(__file__).resolve().parents[2] / "shared" / "BLYNK_NCP_WIRE.md"


@pytest.fixture(scope="module")
def facts() -> str:
    if not FACTS.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FACTS} is missing: CI lays shared/ beside the clone")
        pytest.skip("the shared wire facts are not beside this clone")
    return FACTS.read_text()


def client_timeouts(text: str) -> tuple[float, dict[str, float]]:
    """The paragraph 'Client timeouts (ms) ...': the default, and each named function's."""
    para = text[text.index("Client timeouts (ms)"):]
    para = para[:para.index("\n\n")].replace("\n", " ")
    default = float(re.search(r"default (\d+)", para)[1]) / 1000
    named: dict[str, float] = {}
    # "`a`, `b` 5000;" names each function listed before a number.
    for names, ms in re.findall(r"((?:`\w+`(?:,\s*)?)+)\s+(\d+)", para):
        for name in re.findall(r"`(\w+)`", names):
            named[name] = int(ms) / 1000
    pings = float(re.search(r"pings (\d+)", para)[1]) / 1000
    named.update({"ncp_ping": pings, "mcu_ping": pings})
    return default, named


def test_every_client_timeout_is_the_real_drivers(facts):
    default, named = client_timeouts(facts)
    assert default == DEFAULT_TIMEOUT
    assert named["blynk_factoryTestWiFiAP"] == 5.0  # the function an earlier edition left out
    for fn in INTERFACE.functions:
        if fn.uid >= 0xE000 or fn.kind != INVOKE:
            continue  # the project's extensions, and ONEWAYs nobody waits for
        assert fn.timeout == named.get(fn.name, default), fn.name


def test_every_uid_name_and_kind_is_the_real_interfaces(facts):
    rows = re.findall(r"^\| (0x[0-9A-F]{4}) \| (\w+) \| ([IO])\b", facts, re.M)
    assert len(rows) == 57  # every row of section 3: a change of its format fails here
    for uid, name, kind in rows:
        fn = INTERFACE.by_uid[int(uid, 16)]
        assert (fn.name, fn.kind) == (name, INVOKE if kind == "I" else ONEWAY)
