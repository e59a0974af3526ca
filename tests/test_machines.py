"""The two state machines, cell by cell: every (state, event) pair either moves where the table
says or raises, every event is made somewhere, and the refusals each state owes are given."""

from __future__ import annotations

import ast
import inspect
import zlib

import pytest

from dualmcu.framing import get_profile
from dualmcu.ncp import core as ncp_core
from dualmcu.ncp.core import SENDER, Tx, TxEvent
from dualmcu.rpc.events import Event
from dualmcu.primary import ota as ota_mod
from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
from dualmcu.primary.ota import RECEIVER, Ota, OtaEvent
from dualmcu.rpc import Incoming
from dualmcu.rpc.interface import INTERFACE
from dualmcu.rpc.machine import IllegalMove, Machine
from dualmcu.rpc.message import Invoke
from support import provisioned, tagged

MACHINES = [("sender", SENDER, Tx, TxEvent, ncp_core), ("receiver", RECEIVER, Ota, OtaEvent, ota_mod)]
CELLS = [(name, table, s, e) for name, table, S, E, _ in MACHINES for s in S for e in E]


@pytest.mark.parametrize("name,table,state,event", CELLS,
                         ids=[f"{n}-{s.name}-{e.name}" for n, _, s, e in CELLS])
def test_each_cell_moves_as_the_table_says_or_raises(name, table, state, event):
    m = Machine(name, table, state)
    if event in table.get(state, {}):
        assert m.fire(event) is table[state][event] and m.state is table[state][event]
    else:
        with pytest.raises(IllegalMove, match=event.name):
            m.fire(event)
        assert m.state is state  # an illegal move changes nothing


@pytest.mark.parametrize("name,table,S,E,module", MACHINES, ids=[m[0] for m in MACHINES])
def test_every_state_is_reachable_and_every_event_is_made(name, table, S, E, module):
    initial = next(iter(S))
    seen, todo = {initial}, [initial]
    while todo:
        for nxt in table.get(todo.pop(), {}).values():
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S), f"unreachable: {set(S) - seen}"
    used = {e for row in table.values() for e in row}
    assert used == set(E), f"events in no cell: {set(E) - used}"
    # Each event is fired by the code, not only listed: an event nobody makes is a dead cell.
    fired = {node.attr for node in ast.walk(ast.parse(inspect.getsource(module)))
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == E.__name__}
    assert fired == {e.name for e in E}


# -- the receiver's refusals for the state it is in ---------------------------------------------

OLD = tagged("1.0.0", "TMPLM", 20_000)


def receiver():
    dev = PrimaryDevice(provisioned(OLD, 256 * 1024), get_profile("cobs"), PrimaryConfig(), 0.0)
    events = []
    dev.ota.emit = lambda kind, **f: events.append((kind, f))
    return dev.ota, events


def invoke(name, args=None, msg_id=1):
    return Incoming(INTERFACE[name], msg_id, args or {}, 0.0)


OFFER = {"filename": "f.bin", "size": 4096, "fw_type": "TMPLM", "fw_version": "1.1.0", "fw_build": "b"}


def refusals(events):
    return [(f["call"], f["reason"]) for kind, f in events if kind == "ota_refused"]


def test_idle_refuses_write_and_finish_as_not_receiving():
    ota, events = receiver()
    assert ota.on_write(invoke("client_otaUpdateWrite", {"offset": 0, "chunk": b"x", "crc32": 0x8CDC1683})) is False
    assert ota.on_finish(invoke("client_otaUpdateFinish")) is False
    assert refusals(events) == [("write", "not_receiving"), ("finish", "not_receiving")]
    assert ota.state is Ota.IDLE


def test_finishing_refuses_offers_writes_and_finish_as_busy():
    ota, events = receiver()
    ota.ep.now = 0.0
    ota.on_available(invoke("client_otaUpdateAvailable", OFFER))
    data = bytes(4096)
    assert ota.on_write(invoke("client_otaUpdateWrite", {"offset": 0, "chunk": data[:1024], "crc32": zlib.crc32(data[:1024])}))
    ota.t.offset = ota.t.size  # as if every chunk were in: Finish may now start
    ota.on_finish(invoke("client_otaUpdateFinish", msg_id=2))
    assert ota.state is Ota.FINISHING
    events.clear()
    assert ota.on_available(invoke("client_otaUpdateAvailable", OFFER, msg_id=3)) is False
    assert ota.on_write(invoke("client_otaUpdateWrite", {"offset": 0, "chunk": b"x", "crc32": 0x8CDC1683}, 4)) is False
    assert ota.on_finish(invoke("client_otaUpdateFinish", msg_id=5)) is False
    assert refusals(events) == [("available", "busy"), ("write", "not_receiving"), ("finish", "busy")]
    assert ota.state is Ota.FINISHING


def test_an_illegal_move_in_a_handler_is_answered_as_an_error_not_lost():
    """A bug that fires an illegal move inside a handler surfaces as status 0x10 and an event."""
    ota, _ = receiver()
    ota.machine = Machine("OTA receiver", {Ota.IDLE: {}}, Ota.IDLE)  # a table that allows nothing
    dev_events = []
    ota.ep.on_event = lambda kind, **f: dev_events.append(kind)
    fn = INTERFACE["client_otaUpdateAvailable"]
    ota.ep._on_invoke(Invoke(fn.uid, 9, fn.encode_args(OFFER)))
    assert Event.RPC_HANDLER_ERROR in dev_events
    assert ota.ep.data_to_send()  # an answer went out (status 0x10), the endpoint lives on


def test_every_timer_armed_in_the_code_is_in_its_devices_table():
    """Timers are dispatched from one table per device: a name armed anywhere in the source
    must be in it, and arming any other name fails at once, not when it would fire."""
    import re
    from pathlib import Path

    from dualmcu.framing import get_profile
    from dualmcu.ncp.core import NcpDevice
    from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
    from support import provisioned, tagged

    root = Path(__file__).resolve().parent.parent
    primary = PrimaryDevice(provisioned(tagged("1.0.0", "T", 10_000)), get_profile("cobs"), PrimaryConfig(), 0.0)
    ncp = NcpDevice(get_profile("cobs"), now=0.0)
    for dev, source in ((primary, root / "primary" / "device.py"), (ncp, root / "ncp" / "core.py")):
        armed = set(re.findall(r'_after\("([a-z_]+)"', source.read_text()))
        assert armed and armed <= set(dev._on_timer), (source.name, armed - set(dev._on_timer))
        with pytest.raises(ValueError, match="no timer"):
            dev._after("no_such_timer", 1.0)
