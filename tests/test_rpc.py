"""The RPC layer: the table's codec for every function, the message vectors, and the endpoint
on a virtual clock."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualmcu.framing import get_profile
from dualmcu.rpc import DEFER, INTERFACE, NCP, PRIMARY, ArgsError, Endpoint, Status
from dualmcu.rpc import message as M
from dualmcu.rpc import strategies as S
from dualmcu.rpc import types as T

H = bytes.fromhex
FUNCTIONS = list(INTERFACE)


@pytest.mark.parametrize("framing", ["cobs", "blynk"])
@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.name)
@settings(max_examples=15)
@given(data=st.data())
def test_every_function_round_trips_args_through_message_and_frame(framing, fn, data):
    args = data.draw(S.args_for(fn))
    msg_id = data.draw(st.integers(0, 0xFFFF))
    encoded = fn.encode_args(args)
    wire = M.Invoke(fn.uid, msg_id, encoded).encode() if fn.kind == "invoke" else M.Oneway(fn.uid, encoded).encode()
    p = get_profile(framing, max_message=8192)
    (frame,) = p.decoder().feed(p.encode(wire))
    parsed = M.parse(frame.message)
    assert parsed.uid == fn.uid
    assert fn.decode_args(parsed.args) == args


@given(S.functions(), st.data())
def test_every_function_round_trips_results(fn, data):
    values = data.draw(S.results_for(fn))
    assert fn.decode_result(fn.encode_result(values)) == values


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.name)
def test_leftover_or_missing_bytes_are_refused(fn):
    good = fn.encode_args({p.name: _zero(p.type) for p in fn.args})
    with pytest.raises(ArgsError):
        fn.decode_args(good + b"\x00")
    if good:
        with pytest.raises(ArgsError):
            fn.decode_args(good[:-1])


def _zero(t):
    return {bool: False, int: 0, float: 0.0, str: "", bytes: b""}[t.py]


def test_message_vectors_from_the_real_driver():
    ping = INTERFACE["ncp_ping"]
    assert M.Invoke(ping.uid, 1).encode() == H("bc 67 01 01 01 00")
    start = INTERFACE["blynk_otaUpdateStart"]
    assert M.Invoke(start.uid, 2, start.encode_args({"chunk_size": 1024})).encode() == H("bc 67 41 03 02 00 00 04")
    baud = INTERFACE["hw_setUartBaudRate"]
    assert M.Invoke(baud.uid, 3, baud.encode_args([115200])).encode() == H("bc 67 01 02 03 00 00 c2 01 00")
    write = INTERFACE["client_otaUpdateWrite"]
    args = write.encode_args({"offset": 0, "chunk": H("00 aa 11 20"), "crc32": 0x9D1C0472})
    assert M.Invoke(write.uid, 7, args).encode() == H("bc 67 42 04 07 00 00 00 00 00 04 00 00 aa 11 20 72 04 1c 9d")
    assert M.Result(7, 0, write.encode_result(True)).encode() == H("12 a5 07 00 00 01")
    ev = INTERFACE["client_processEvent"]
    assert M.Oneway(ev.uid, ev.encode_args([1])).encode() == H("f3 1c 21 04 01")
    assert M.Result(6, Status.ARGS_READ).encode() == H("12 a5 06 00 15")


def test_parse_rejects_short_and_unknown():
    assert isinstance(M.parse(b"\xbc"), M.Malformed)
    assert isinstance(M.parse(H("bc 67 01 01 01")), M.Malformed)
    assert M.parse(H("74 d6 00 00")).reason == "reserved_opcode"
    assert M.parse(H("00 00 00 00")).reason == "unknown_opcode"


def test_type_checks_give_clear_errors():
    with pytest.raises(ArgsError, match="outside UInt8"):
        T.UInt8.check(256)
    with pytest.raises(ArgsError, match="NUL"):
        T.String.check("a\x00b")
    with pytest.raises(ArgsError, match="needs"):
        INTERFACE["client_otaUpdateWrite"].encode_args({"offset": 0})
    assert T.String.decode(b"\xff\xfe\x00", 0) == ("\udcff\udcfe", 3)
    assert T.String.encode("\udcff\udcfe") == b"\xff\xfe\x00"


def test_extension_uids_do_not_collide_with_the_real_interface():
    from dualmcu.rpc.interface import BLYNK_FUNCTIONS, EXTENSION_UIDS

    assert not any(f.uid in EXTENSION_UIDS for f in BLYNK_FUNCTIONS)
    assert all(f.extension for f in INTERFACE if f not in BLYNK_FUNCTIONS)


# -- endpoint ------------------------------------------------------------------------------------


class Pair:
    """Two endpoints joined by an exact in-memory link on a virtual clock."""

    def __init__(self, framing="cobs", **kw):
        p = get_profile(framing)
        self.ncp = Endpoint(NCP, p, **kw)
        self.mcu = Endpoint(PRIMARY, p, **kw)
        self.now = 0.0

    def pump(self, drop_to_ncp=False, drop_to_mcu=False):
        for _ in range(100):
            a, b = self.mcu.data_to_send(), self.ncp.data_to_send()
            if not a and not b:
                return
            if a and not drop_to_ncp:
                self.ncp.receive(a, self.now)
            if b and not drop_to_mcu:
                self.mcu.receive(b, self.now)

    def advance(self, dt):
        self.now += dt
        self.ncp.tick(self.now)
        self.mcu.tick(self.now)


def test_call_and_result():
    pair = Pair()
    pair.ncp.handle("blynk_getNcpVersion", lambda inc: {"version": "0.7.0", "return": True})
    c = pair.mcu.call("blynk_getNcpVersion")
    assert not c.done
    pair.pump()
    assert c.ok and c.values == {"version": "0.7.0", "return": True}


def test_timeout_comes_from_the_table_and_a_late_result_is_stale():
    pair = Pair()
    pair.ncp.handle("ncp_ping", lambda inc: None)
    c = pair.mcu.call("ncp_ping")
    assert pair.mcu.next_deadline() == pytest.approx(0.1)
    wire = pair.mcu.data_to_send()
    pair.advance(0.099)
    assert not c.done
    pair.advance(0.002)
    assert c.status == Status.TIMEOUT and pair.mcu.next_deadline() is None
    pair.ncp.receive(wire, pair.now)  # the request arrives late; its answer is stale
    pair.pump()
    assert pair.mcu.stats["stale_results"] == 1 and c.status == Status.TIMEOUT


def test_sixty_second_timeout_runs_in_no_time():
    pair = Pair()
    pair.ncp.handle("blynk_otaUpdatePrefetch", lambda inc: DEFER)
    done = []
    pair.mcu.call("blynk_otaUpdatePrefetch", timeout=60, on_done=done.append)
    pair.pump()
    pair.advance(59.9)
    assert not done
    pair.advance(0.2)
    assert done[0].status == Status.TIMEOUT


def test_nested_invocation_while_a_call_is_pending():
    """The primary asks the NCP for the image CRC from inside its Finish handler."""
    pair = Pair()
    pair.ncp.handle("blynk_otaUpdateGetCRC32", lambda inc: {"crc32": 0x1234, "return": True})

    def finish(inc):
        pair.mcu.call("blynk_otaUpdateGetCRC32", on_done=lambda c: pair.mcu.reply(inc, c.values["crc32"] == 0x1234))
        return DEFER

    pair.mcu.handle("client_otaUpdateFinish", finish)
    fin = pair.ncp.call("client_otaUpdateFinish")
    pair.pump()
    assert fin.ok and fin.result is True
    assert not pair.mcu.deferred


def test_msg_id_wraps_at_16_bits_and_skips_pending_ids():
    pair = Pair()
    pair.ncp.handle("ncp_ping", lambda inc: None)
    held = pair.mcu.call("ncp_ping", timeout=0)  # id 1, never completes
    pair.mcu.data_to_send()
    pair.mcu._next_id = 0xFFFF
    a = pair.mcu.call("ncp_ping")
    b = pair.mcu.call("ncp_ping")
    assert (held.msg_id, a.msg_id, b.msg_id) == (1, 0xFFFF, 2)
    pair.pump()
    assert a.ok and b.ok and not held.done


def test_a_frame_made_ahead_is_the_frame_the_call_would_make_and_is_not_used_for_another_id():
    """The NCP frames its next write while the one before is answered (frame_ahead); the
    call then only queues it.  The bytes must be those the call would have made, and a
    call that got another msg_id (something called in between) must frame its own."""
    write = INTERFACE["client_otaUpdateWrite"]
    encoded = write.encode_args({"offset": 0, "chunk": bytes(range(256)) * 8, "crc32": 1})

    def sent(**kw):
        pair = Pair()
        pair.ncp._next_id = 0xFFFF  # the id wraps and skips a pending one (test above)
        framed = pair.ncp.frame_ahead("client_otaUpdateWrite", encoded)
        if kw.pop("call_between", False):
            pair.ncp.call("mcu_hasUID", {"uid": 1})
        c = pair.ncp.call("client_otaUpdateWrite", encoded=encoded, framed=framed, **kw)
        frames = get_profile("cobs").decoder().feed(pair.ncp.data_to_send())
        return framed, c, M.parse(frames[-1].message)

    framed, c, msg = sent()
    assert framed.msg_id == c.msg_id == 0xFFFF
    assert (msg.msg_id, msg.uid, msg.args) == (0xFFFF, write.uid, encoded)
    framed, c, msg = sent(call_between=True)
    assert framed.msg_id == 0xFFFF and c.msg_id == 1
    assert (msg.msg_id, msg.uid, msg.args) == (1, write.uid, encoded)
    # Frames beyond what the framing carries are not made ahead: the call says so itself.
    big = write.encode_args({"offset": 0, "chunk": bytes(1600), "crc32": 1})
    assert Pair("blynk").ncp.frame_ahead("client_otaUpdateWrite", big) is None


def test_bad_and_leftover_args_answer_0x15():
    pair = Pair()
    pair.mcu.handle("client_otaUpdateWrite", lambda inc: True)
    write = INTERFACE["client_otaUpdateWrite"]
    pair.ncp._send(M.Invoke(write.uid, 9, H("00 00 00 00 05 00 01")).encode())
    pair.ncp._send(M.Invoke(INTERFACE["mcu_ping"].uid, 10, b"\x00").encode())
    pair.mcu.handle("mcu_ping", lambda inc: None)
    got = []
    orig = pair.ncp._on_result
    pair.ncp._on_result = lambda r: got.append(r) or orig(r)
    pair.pump()
    assert [(r.msg_id, r.status) for r in got] == [(9, 0x15), (10, 0x15)]
    assert pair.mcu.stats["bad_args"] == 2


@pytest.mark.parametrize("answer_unknown,expected", [(False, None), (True, Status.UNKNOWN_UID)])
def test_unknown_uid(answer_unknown, expected):
    pair = Pair(answer_unknown=answer_unknown)
    got = []
    pair.ncp._on_result = got.append
    pair.ncp.invoke_raw(0x7777, 5)
    pair.ncp.invoke_raw(INTERFACE["mcu_reboot"].uid, 6)  # known, but no handler here
    pair.pump()
    assert pair.mcu.stats["unknown_uids"] == 2
    assert [r.status for r in got] == ([] if expected is None else [expected, expected])


def test_a_side_that_hears_its_own_calls_says_the_port_echoes_once_and_still_times_out():
    """TX wired to RX, or an adapter's local echo: the side's own INVOKEs come back. They are
    not calls from a peer (a peer never calls what it serves itself) nor a sign of one."""
    events = []
    ep = Endpoint(PRIMARY, get_profile("cobs"), on_event=lambda kind, **f: events.append((kind, f)))
    calls = [ep.call("ncp_ping"), ep.call("blynk_getState")]
    ep.receive(ep.data_to_send(), 0.01)
    ep.call("ncp_ping")
    ep.receive(ep.data_to_send(), 0.02)
    kinds = [k for k, _ in events]
    assert kinds == ["rpc_echo"] and events[0][1]["name"] == "ncp_ping"
    assert "echoes" in events[0][1]["hint"]
    assert ep.stats["echoes"] == 3 and ep.stats["unknown_uids"] == 0 and ep.last_heard is None
    ep.tick(2.0)
    assert [c.status for c in calls] == [Status.TIMEOUT, Status.TIMEOUT]
    # A peer's call that shares a waiting call's msg_id is still served: only the same uid is
    # an echo.
    ep.handle("mcu_ping", lambda inc: None)
    c = ep.call("ncp_ping")
    peer = Endpoint(NCP, get_profile("cobs"))
    peer.invoke_raw(INTERFACE["mcu_ping"].uid, c.msg_id)
    ep.receive(peer.data_to_send(), 2.1)
    assert ep.stats["invokes_in"] == 1 and ep.stats["echoes"] == 3 and ep.last_heard == 2.1


def test_on_a_port_that_echoes_with_a_peer_on_it_this_sides_answers_and_oneways_are_not_the_peers():
    """An adapter's local echo, or an RS-485 transceiver, with a peer on the line: everything
    this side sends comes back too. Its own RESULT for a peer's call must not answer its own
    call waiting with the same msg_id (both sides number from 1), and its own ONEWAYs are not
    calls it does not serve."""
    events = []
    ep = Endpoint(PRIMARY, get_profile("cobs"), on_event=lambda kind, **f: events.append((kind, f)))
    peer = Endpoint(NCP, get_profile("cobs"))
    ep.handle("mcu_ping", lambda inc: None)
    ep.handle("mcu_hasUID", lambda inc: True)
    waiting = ep.call("blynk_getState")  # msg_id 1, as the peer's first call below
    ep.receive(ep.data_to_send(), 0.01)  # the echo of the call: the port is known to echo now
    peer.invoke_raw(INTERFACE["mcu_hasUID"].uid, waiting.msg_id, (0x1234).to_bytes(2, "little"))
    ep.receive(peer.data_to_send(), 0.02)
    answer = ep.data_to_send()
    ep.receive(answer, 0.03)  # this side's own answer, come back
    assert waiting.status is None and waiting.msg_id in ep.pending
    ep.notify("blynk_virtualWrite", {"vpin": 1, "value": b"1"})
    ep.receive(ep.data_to_send(), 0.04)
    assert ep.stats["unknown_uids"] == 0 and ep.stats["stale_results"] == 0
    assert ep.stats["echoes"] == 3 and [k for k, _ in events] == ["rpc_echo"]
    # The peer's own answer, alike or not, still answers the call.
    peer._send(M.Result(waiting.msg_id, Status.OK, bytes([3])).encode())
    ep.receive(peer.data_to_send(), 0.05)
    assert waiting.status == Status.OK and ep.last_heard == 0.05


def test_before_a_port_is_known_to_echo_a_result_alike_to_ones_own_is_the_peers():
    """Both sides ping first with msg_id 1, and a ping's answer is five bytes alike both ways:
    on a port not known to echo, the peer's RESULT answers this side's ping."""
    ep = Endpoint(PRIMARY, get_profile("cobs"))
    peer = Endpoint(NCP, get_profile("cobs"))
    ep.handle("mcu_ping", lambda inc: None)
    peer.handle("ncp_ping", lambda inc: None)
    mine = ep.call("ncp_ping")
    theirs = peer.call("mcu_ping")
    ep.receive(peer.data_to_send(), 0.01)
    peer.receive(ep.data_to_send(), 0.01)
    assert ep.data_to_send() == b"" and mine.status is None
    ep.receive(peer.data_to_send(), 0.02)
    assert mine.status == Status.OK and theirs.status == Status.OK and ep.stats["echoes"] == 0


def test_a_raising_handler_answers_0x10_and_the_endpoint_goes_on():
    pair = Pair()

    def boom(inc):
        raise RuntimeError("handler bug")

    pair.ncp.handle("ncp_reboot", boom)
    pair.ncp.handle("ncp_ping", lambda inc: None)
    a = pair.mcu.call("ncp_reboot")
    b = pair.mcu.call("ncp_ping")
    pair.pump()
    assert a.status == Status.GENERIC and b.ok
    assert pair.ncp.stats["handler_errors"] == 1


def test_result_that_does_not_decode_is_0x17():
    pair = Pair()
    c = pair.mcu.call("blynk_getState")
    pair.mcu.data_to_send()
    pair.ncp._send(M.Result(c.msg_id, 0, b"\x01\x02").encode())
    pair.pump()
    assert c.status == Status.RESULTS_READ


def test_oneways_are_dispatched_and_never_answered():
    pair = Pair()
    seen = []
    pair.ncp.handle("blynk_virtualWrite", lambda inc: seen.append(inc.args))
    pair.mcu.notify("blynk_virtualWrite", {"vpin": 3, "value": b"42"})
    pair.pump()
    assert seen == [{"vpin": 3, "value": b"42"}]
    assert pair.mcu.stats["results_in"] == 0


def test_then_runs_after_the_answer_is_queued():
    pair = Pair()
    order = []

    def set_baud(inc):
        inc.then = lambda: order.append(("switch", len(pair.ncp._out)))
        return True

    pair.ncp.handle("hw_setUartBaudRate", set_baud)
    pair.mcu.call("hw_setUartBaudRate", {"baud": 115200})
    pair.ncp.receive(pair.mcu.data_to_send(), 0)
    assert order and order[0][1] > 0  # the RESULT was already in the output buffer


def test_wrong_side_is_refused_early():
    pair = Pair()
    with pytest.raises(ValueError):
        pair.mcu.call("mcu_ping")
    with pytest.raises(ValueError):
        pair.mcu.handle("ncp_ping", lambda inc: None)
    with pytest.raises(ValueError):
        pair.mcu.call("blynk_virtualWrite", {"vpin": 1, "value": b""})


@given(st.sampled_from(["cobs", "blynk"]), st.binary(max_size=2000))
def test_endpoint_survives_any_bytes(framing, junk):
    pair = Pair(framing)
    pair.ncp.handle("ncp_ping", lambda inc: None)
    pair.ncp.receive(junk, 0)
    c = pair.mcu.call("ncp_ping")
    pair.pump()
    assert c.ok


def test_a_reply_at_a_time_goes_out_then_in_the_order_given_and_runs_its_follow_up_then():
    # The primary answers a write when the flash is done: the RESULT is encoded at once and
    # sent when the clock reaches it, with whatever must follow the answer (a reboot) after it.
    pair = Pair()
    held = []
    pair.mcu.handle("client_otaUpdateWrite", lambda inc: held.append(inc) or DEFER)
    calls = [pair.ncp.call("client_otaUpdateWrite", {"offset": o, "chunk": b"x", "crc32": 0}) for o in (0, 1, 2)]
    pair.pump()
    followed = []
    held[1].then = lambda: followed.append(pair.mcu.now)
    pair.mcu.reply(held[1], True, at=0.5)
    pair.mcu.reply(held[0], True, at=0.5)  # the same time: after the one given first
    pair.mcu.reply(held[2], False, at=0.2)
    assert pair.mcu.next_deadline() == 0.2 and not pair.mcu.data_to_send() and not followed
    pair.advance(0.2)
    pair.pump()
    assert calls[2].done and calls[2].result is False and not calls[0].done
    pair.advance(0.3)
    sent = pair.mcu.data_to_send()
    order = [M.parse(f.message).msg_id for f in get_profile("cobs").decoder().feed(sent)]
    assert order == [calls[1].msg_id, calls[0].msg_id]
    assert followed == [0.5] and pair.mcu.next_deadline() is None
    pair.ncp.receive(sent, pair.now)
    assert calls[0].ok and calls[1].ok and calls[0].result is True
    assert pair.mcu.reply(held[1], False, at=1.0) is None and not pair.mcu._timed  # answered once only


def test_a_scalar_answer_is_encoded_once_and_a_bad_one_is_refused_every_time():
    # A write's True is encoded once per function; what does not encode is never kept, so a
    # handler that returns a bad value is told so on every call.
    from dualmcu.rpc.interface import INTERFACE, ArgsError, encode_fields

    fn = INTERFACE["client_otaUpdateWrite"]
    assert fn.encode_result(True) is fn.encode_result(True)
    assert fn.encode_result(True) == encode_fields(fn.results, [True], fn.name) == b"\x01"
    assert fn.encode_result(False) == b"\x00" and fn.encode_result(1) == encode_fields(fn.results, [1], fn.name)
    for _ in range(2):
        with pytest.raises(ArgsError):
            INTERFACE["hw_getWiFiMAC"].encode_result(7)  # (out mac, return): one scalar is not it
