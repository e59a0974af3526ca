"""Framing profiles: the interoperability vectors, and properties that must hold for any input."""

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualmcu.framing import (
    BAD_CRC,
    BAD_ENCODING,
    EMPTY,
    OVERSIZE,
    TRUNCATED,
    Dropped,
    Frame,
    FramingError,
    get_profile,
)
from dualmcu.framing.blynk import crc8, escape, unescape

H = bytes.fromhex

# Section 6 of the shared wire facts, checked against the real C driver.
BLYNK_VECTORS = [
    ("bc 67 01 01 01 00", "aa bc 67 01 01 01 00 4f bb"),
    ("bc 67 41 03 02 00 00 04", "aa bc 67 41 03 02 00 00 04 0c bb"),
    ("bc 67 01 02 03 00 00 c2 01 00", "aa bc 67 01 02 03 00 00 c2 01 00 33 bb"),
    (
        "bc 67 42 04 07 00 00 00 00 00 04 00 00 aa 11 20 72 04 1c 9d",
        "aa bc 67 42 04 07 00 00 00 00 00 04 00 00 cc 55 cc ee 20 72 04 1c 9d 5d bb",
    ),
    ("12 a5 07 00 00 01", "aa 12 a5 07 00 00 01 b7 bb"),
    ("f3 1c 21 04 01", "aa f3 1c 21 04 01 5b bb"),
    ("12 a5 06 00 15", "aa 12 a5 06 00 15 51 bb"),
    ("bc 67 02 01 04 00", "aa bc 67 02 01 04 00 34 bb"),
    (
        "bc 67 01 03 06 00 54 4d 50 4c 30 76 46 6b 46 6d 4a 4d 37 00 51 50 6f 77 65 72 00",
        "aa bc 67 01 03 06 00 54 4d 50 4c 30 76 46 6b 46 6d 4a 4d 37 00 51 50 6f 77 65 72 00 68 bb",
    ),
    ("12 a5 06 00 00 01", "aa 12 a5 06 00 00 01 a1 bb"),
]


def messages(profile, data: bytes):
    d = profile.decoder()
    return [x.message for x in d.feed(data) + d.close() if isinstance(x, Frame)]


@pytest.mark.parametrize("message,wire", BLYNK_VECTORS)
def test_blynk_vectors_encode_and_decode(message, wire):
    p = get_profile("blynk")
    assert p.encode(H(message)) == H(wire)
    assert messages(p, H(wire)) == [H(message)]


def test_crc8_vectors():
    assert crc8(b"123456789") == 0xF4
    assert crc8(H("bc 67 01 01 02 00")) == 0x70
    assert crc8(H("12 a5 02 00 00")) == 0x91


def test_escape_every_special_byte():
    assert escape(H("11 13 aa bb cc 00")) == H("cc ee cc ec cc 55 cc 44 cc 33 00")
    assert unescape(H("cc ee cc ec cc 55 cc 44 cc 33 00")) == H("11 13 aa bb cc 00")
    assert unescape(H("01 cc")) is None
    assert unescape(H("cc cc cc")) is None
    assert unescape(H("cc cc")) == H("33")


def test_cobs_known_frame():
    p = get_profile("cobs")
    msg = H("bc 67 01 01 01 00")
    crc = zlib.crc32(msg).to_bytes(4, "little")
    frame = p.encode(msg)
    assert frame[0] == 0 and frame[-1] == 0 and 0 not in frame[1:-1]
    # Hand-made COBS of msg ‖ crc: the only zero is the last byte of msg.
    body = msg[:-1] + b"\x00" + crc
    assert frame == b"\x00" + bytes([6]) + body[:5] + bytes([5]) + crc + b"\x00"
    assert messages(p, frame) == [msg]


@pytest.mark.parametrize("name", ["cobs", "blynk"])
def test_encoder_refuses_empty_and_oversize(name):
    p = get_profile(name)
    with pytest.raises(FramingError):
        p.encode(b"")
    with pytest.raises(FramingError):
        p.encode(bytes(p.max_message + 1))
    assert messages(p, p.encode(bytes(p.max_message))) == [bytes(p.max_message)]


def test_blynk_never_sends_more_than_1536_even_with_a_larger_receive_limit():
    p = get_profile("blynk", max_message=4000)
    with pytest.raises(FramingError):
        p.encode(bytes(1537))
    p.encode(bytes(1536))


def test_cobs_flush_delimiter_is_not_an_error():
    from dualmcu.framing.native import CobsProfile

    p = CobsProfile()
    frame = p.encode(b"abc")
    assert frame[0] == 0
    assert CobsProfile(flush_before=False).encode(b"abc") == frame[1:]
    d = p.decoder()
    out = d.feed(b"\x12\x34" + frame)  # noise, then a flushed frame
    assert [type(x) for x in out] == [Dropped, Frame]
    assert out[1].message == b"abc"
    assert d.stats["frames"] == 1


def reasons(profile, data):
    d = profile.decoder()
    return [x.reason for x in d.feed(data) + d.close() if isinstance(x, Dropped)]


def test_cobs_drop_reasons():
    p = get_profile("cobs")
    good = p.encode(b"hello")
    bad_crc = bytearray(good)
    bad_crc[2] ^= 0x01
    assert reasons(p, bytes(bad_crc)) == [BAD_CRC]
    assert reasons(p, b"\x05\x01\x00") == [BAD_ENCODING]
    assert reasons(p, b"\x03\x01\x02\x00") == [TRUNCATED]
    assert reasons(p, get_profile("cobs", max_message=70000).encode(bytes(0xFFFF + 17))) == [OVERSIZE]
    assert reasons(p, p.encode(bytes(0xFFFF + 16))) == []  # the write of the largest chunk fits
    from cobs import cobs

    assert reasons(p, cobs.encode(zlib.crc32(b"").to_bytes(4, "little")) + b"\x00") == [EMPTY]
    assert reasons(p, good[:-1]) == [TRUNCATED]  # cut off by the end of the stream


def test_blynk_drop_reasons():
    p = get_profile("blynk")
    good = p.encode(b"hello")
    assert reasons(p, good[:-2] + bytes([good[-2] ^ 1]) + good[-1:]) == [BAD_CRC]
    assert reasons(p, H("aa 01 02 cc bb")) == [BAD_ENCODING]
    assert reasons(p, H("aa bb")) == [TRUNCATED]
    assert reasons(p, H("aa 00 bb")) == [EMPTY]  # CRC-8 of nothing is 0
    assert reasons(p, b"\xaa" + bytes(4000) + b"\xbb") == [OVERSIZE]
    # A frame that lost its end byte is dropped at the next begin byte, and the next frame,
    # which the real driver would lose too, is delivered.
    assert reasons(p, good[:-1] + good) == [TRUNCATED]
    assert messages(p, good[:-1] + good) == [b"hello"]


@pytest.mark.parametrize("name", ["cobs", "blynk"])
def test_garbage_keeps_memory_bounded(name):
    p = get_profile(name, max_message=256)
    d = p.decoder()
    blob = bytes(range(1, 256)).replace(b"\xaa", b"").replace(b"\xbb", b"") * 400
    start = b"\xaa" if name == "blynk" else b""
    for _ in range(20):
        d.feed(start + blob)
        assert len(d._buf) <= 2 * (256 + 8)
    assert d.stats[OVERSIZE] >= 1
    # and it recovers
    assert [x.message for x in d.feed(b"\x00" + p.encode(b"ok") if name == "cobs" else p.encode(b"ok")) if isinstance(x, Frame)] == [b"ok"]


PROFILES = st.sampled_from(["cobs", "blynk"])
MESSAGES = st.binary(min_size=1, max_size=300)


@given(PROFILES, st.lists(MESSAGES, min_size=1, max_size=8), st.data())
def test_any_split_gives_the_same_messages(name, msgs, data):
    p = get_profile(name)
    stream = b"".join(p.encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    d = p.decoder()
    out = []
    prev = 0
    for c in cuts + [len(stream)]:
        out += d.feed(stream[prev:c])
        prev = c
    assert [x.message for x in out] == msgs
    assert d.close() == []


def corrupt(frame: bytes, kind: str, i: int, bit: int) -> bytes:
    i %= len(frame)
    if kind == "flip":
        return frame[:i] + bytes([frame[i] ^ (1 << bit)]) + frame[i + 1 :]
    if kind == "drop":
        return frame[:i] + frame[i + 1 :]
    if kind == "insert":
        return frame[:i] + bytes([(frame[i] + 1 + bit) & 0xFF]) + frame[i:]
    return frame[:i]  # truncate


def _survives(name, msg, nxt, kind, i, bit):
    p = get_profile(name)
    damaged = corrupt(p.encode(msg), kind, i, bit)
    got = messages(p, damaged + p.encode(nxt))
    # The damaged frame either still yields its own message (damage in a byte the receiver
    # ignores) or nothing; the next frame always arrives.
    return got in ([nxt], [msg, nxt])


@given(PROFILES, MESSAGES, MESSAGES, st.sampled_from(["flip", "truncate"]), st.integers(0, 10_000), st.integers(0, 7))
def test_a_flipped_bit_or_a_truncation_is_never_a_different_message(name, msg, nxt, kind, i, bit):
    assert _survives(name, msg, nxt, kind, i, bit)


@given(MESSAGES, MESSAGES, st.sampled_from(["drop", "insert"]), st.integers(0, 10_000), st.integers(0, 7))
def test_cobs_a_lost_or_extra_byte_is_never_a_different_message(msg, nxt, kind, i, bit):
    assert _survives("cobs", msg, nxt, kind, i, bit)


def test_blynk_a_lost_or_extra_byte_slips_through_crc8_at_most_at_its_rate():
    """The real protocol's CRC-8 cannot catch every lost or extra byte: about 1 in 256 pass.

    This is the blynk framing's limit, not the decoder's; the native framing's CRC-32 exists
    for that reason.  The test pins the rate so that a decoder bug cannot hide behind it.
    """
    import random

    rng = random.Random(1)
    trials = slipped = 0
    for _ in range(6000):
        # Real messages start with an opcode, never with 0x00 (which CRC-8/SMBUS cannot see).
        msg = bytes([rng.choice([0xBC, 0x12, 0xF3])]) + rng.randbytes(rng.randint(5, 60))
        kind = rng.choice(["drop", "insert"])
        trials += 1
        slipped += not _survives("blynk", msg, b"next", kind, rng.randint(1, 200), rng.randint(0, 7))
    assert slipped / trials < 2 / 256, (slipped, trials)


@given(PROFILES, st.binary(max_size=3000))
def test_random_garbage_never_raises(name, junk):
    p = get_profile(name, max_message=512)
    d = p.decoder()
    for x in d.feed(junk) + d.close():
        if isinstance(x, Frame):
            assert 0 < len(x.message) <= 512


@given(PROFILES, st.binary(max_size=200), MESSAGES)
def test_a_good_frame_after_garbage_is_delivered(name, junk, msg):
    p = get_profile(name)
    sep = b"\x00" if name == "cobs" else b""
    got = messages(p, junk + sep + p.encode(msg))
    assert got[-1] == msg


# docs/wire.md, section 1: the native framing's worked examples.
NATIVE_VECTORS = [
    ("bc 67 01 01 01 00", "00 06 bc 67 01 01 01 05 e3 e5 bd 57 00"),
    ("bc 67 41 03 02 00 00 04", "00 06 bc 67 41 03 02 01 06 04 61 c1 aa 84 00"),
    ("12 a5 07 00 00 01", "00 04 12 a5 07 01 06 01 fa 1a cb ad 00"),
]


@pytest.mark.parametrize("message,wire", NATIVE_VECTORS)
def test_native_vectors_of_the_docs(message, wire):
    p = get_profile("cobs")
    assert p.encode(H(message)) == H(wire)
    assert messages(p, H(wire)) == [H(message)]
