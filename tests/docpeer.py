"""A peer written from docs/wire.md and docs/interface.md alone, for either side of the link.

It imports nothing of dualmcu on purpose: it is what a firmware engineer would write from the
docs, so a change that makes the code disagree with them fails here even when both of dualmcu's
own sides still agree with each other. It speaks the plain protocol only (it answers no to every
``hasUID``), as real firmware does, and it keeps to what the docs promise: uids, argument
layouts, framing, the order of the OTA exchange and its digests.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import struct
import time
import zlib

from cobs import cobs

INVOKE, RESULT, ONEWAY = 0x67BC, 0xA512, 0x1CF3
# wire.md section 1: the CRC-32 of a good frame, its CRC included.
CRC_RESIDUE = 0x2144DF1C
BLYNK_ESCAPED = {0x11, 0x13, 0xAA, 0xBB, 0xCC}
BLYNK_MAX = 1536  # the most message bytes a blynk frame carries
WRITE_OVERHEAD = 16  # wire.md section 6: header 6, offset 4, Binary length 2, CRC 4


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS, bit by bit as the docs define it (poly 0x07, init 0, no reflection)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class CobsFraming:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.bad = 0

    @staticmethod
    def encode(message: bytes) -> bytes:
        return b"\0" + cobs.encode(message + struct.pack("<I", zlib.crc32(message))) + b"\0"

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while 0 in self.buf:
            end = self.buf.index(0)
            frame = bytes(self.buf[:end])
            del self.buf[:end + 1]
            if not frame:
                continue
            try:
                decoded = cobs.decode(frame)
            except cobs.DecodeError:
                self.bad += 1
                continue
            if len(decoded) < 4 or zlib.crc32(decoded) != CRC_RESIDUE:
                self.bad += 1
            elif len(decoded) > 4:
                out.append(decoded[:-4])
        return out


class BlynkFraming:
    def __init__(self) -> None:
        self.frame: bytearray | None = None
        self.bad = 0

    @staticmethod
    def encode(message: bytes) -> bytes:
        assert 0 < len(message) <= BLYNK_MAX
        body = bytearray()
        for byte in message + bytes([crc8(message)]):
            body += bytes([0xCC, byte ^ 0xFF]) if byte in BLYNK_ESCAPED else bytes([byte])
        return b"\xaa" + bytes(body) + b"\xbb"

    def feed(self, data: bytes) -> list[bytes]:
        out = []
        for byte in data:
            if byte == 0xAA:
                self.frame = bytearray()
            elif self.frame is None:
                continue  # outside a frame: dropped until the next 0xAA
            elif byte == 0xBB:
                raw, escaped = bytearray(), False
                for b in self.frame:
                    if escaped:
                        raw.append(b ^ 0xFF)
                        escaped = False
                    elif b == 0xCC:
                        escaped = True
                    else:
                        raw.append(b)
                self.frame = None
                if len(raw) >= 2 and not escaped and crc8(raw[:-1]) == raw[-1]:
                    out.append(bytes(raw[:-1]))
                else:
                    self.bad += 1
            else:
                self.frame.append(byte)
        return out


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def binary(data: bytes) -> bytes:
    return struct.pack("<H", len(data)) + data


def take_str(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(0, at)
    return data[at:end].decode(), end + 1


class Peer:
    """One side of the link on a file descriptor: frames, msg_ids, calls that wait for their
    RESULT while serving what arrives (nesting, as the docs say both sides do)."""

    def __init__(self, fd: int, framing: str, serve):
        self.fd = fd
        self.framing = CobsFraming() if framing == "cobs" else BlynkFraming()
        self.serve = serve  # serve(peer, uid, msg_id, args): answers or not
        self.msg_id = 0
        self.results: dict[int, tuple[int, bytes]] = {}
        self.then: dict = {}  # msg_id: what to do with its RESULT, the moment it arrives
        self.oneways: list[int] = []

    def send(self, message: bytes) -> None:
        data = self.framing.encode(message)
        while data:
            select.select([], [self.fd], [], 5)
            data = data[os.write(self.fd, data):]

    def answer(self, msg_id: int, values: bytes = b"", status: int = 0) -> None:
        self.send(struct.pack("<HHB", RESULT, msg_id, status) + values)

    def pump(self, timeout: float) -> None:
        readable, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not readable:
            return
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the other side closed its end of the pty
            time.sleep(min(timeout, 0.05))
            return
        for message in self.framing.feed(data):
            kind = struct.unpack_from("<H", message)[0]
            if kind == RESULT:
                msg_id, status = struct.unpack_from("<HB", message, 2)
                if msg_id in self.then:
                    self.then.pop(msg_id)(self, (status, message[5:]))
                else:
                    self.results[msg_id] = (status, message[5:])
            elif kind == INVOKE:
                uid, msg_id = struct.unpack_from("<HH", message, 2)
                self.serve(self, uid, msg_id, message[6:])
            elif kind == ONEWAY:
                self.oneways.append(struct.unpack_from("<H", message, 2)[0])

    def invoke(self, uid: int, args: bytes = b"") -> int:
        self.msg_id = self.msg_id % 0xFFFF + 1
        self.send(struct.pack("<HHH", INVOKE, uid, self.msg_id) + args)
        return self.msg_id

    def call(self, uid: int, args: bytes = b"", timeout: float = 1.0) -> tuple[int, bytes] | None:
        msg_id = self.invoke(uid, args)
        end = time.monotonic() + timeout
        while msg_id not in self.results and time.monotonic() < end:
            self.pump(end - time.monotonic())
        return self.results.pop(msg_id, None)


def true(result) -> bool:
    """A RESULT with status OK whose last value is Bool true."""
    return result is not None and result[0] == 0 and result[1][-1:] == b"\1"


def read_tag(image: bytes) -> dict[str, str]:
    """The firmware tag, found with blynk_tag.py's pattern (wire.md section 7)."""
    found = re.search(rb"blnkinf\0[\w\s.,:\-()\0]*?\0\0", image)
    assert found, "no tag"
    parts = found.group(0).split(b"\0")[1:-2]
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2)}


def run_ncp(fd: int, framing: str, image: bytes, filename: str, deadline: float,
            done=lambda: False) -> dict:
    """Serve a primary as an NCP and offer ``image`` once it reports another version; go on
    serving (its new image's health check) until ``done()`` or the deadline.

    Returns what happened: the versions the primary reported, the chunk size asked for, the
    writes sent, the offer's and Finish's answers, and the uids that got no answer.
    """
    tag = read_tag(image)
    seen: dict = {"reported": [], "unserved": [], "writes": 0, "offer": None, "finish": None}
    state = {"phase": "idle", "chunk": 0, "pos": 0}

    def write_next(peer: Peer) -> None:
        pos, size = state["pos"], state["chunk"]
        chunk = image[pos:pos + size]
        msg_id = peer.invoke(0x0442, struct.pack("<I", pos) + binary(chunk)
                             + struct.pack("<I", zlib.crc32(chunk)))
        peer.then[msg_id] = written
        seen["writes"] += 1

    def offered(peer: Peer, result) -> None:
        seen["offer"] = true(result)
        state["phase"] = "offered" if seen["offer"] else "refused"

    def written(peer: Peer, result) -> None:
        if not true(result):
            seen["refused_at"] = state["pos"]
            state["phase"] = "refused"
            return
        state["pos"] += state["chunk"]
        if state["pos"] < len(image):
            write_next(peer)
        else:  # one write at a time, then Finish: the primary asks for the digests inside it
            state["phase"] = "finishing"
            peer.then[peer.invoke(0x0443)] = finished

    def finished(peer: Peer, result) -> None:
        seen["finish"] = true(result)
        state["phase"] = "done"

    def serve(peer: Peer, uid: int, msg_id: int, args: bytes) -> None:
        if uid == 0x0101:  # ncp_ping: status only
            peer.answer(msg_id)
        elif uid == 0x0305:  # blynk_getNcpVersion
            peer.answer(msg_id, cstr("0.7.0") + b"\1")
        elif uid == 0x0304:  # blynk_setFirmwareInfo(type, version, build, blynk)
            fw_type, at = take_str(args, 0)
            version, at = take_str(args, at)
            seen["reported"].append((fw_type, version))
            peer.answer(msg_id, b"\1")
            if state["phase"] == "idle" and fw_type == tag["fw-type"] and version != tag["mcu"]:
                state["phase"] = "offering"
                peer.then[peer.invoke(0x0441, cstr(filename) + struct.pack("<I", len(image))
                                      + cstr(tag["fw-type"]) + cstr(tag["mcu"])
                                      + cstr(tag.get("build", "")))] = offered
        elif uid in (0x0301, 0x0302, 0x0303):  # initialize, vendor prefix and server
            peer.answer(msg_id, b"\1")
        elif uid == 0x0306:  # blynk_getState: 5, connected
            peer.answer(msg_id, b"\5")
        elif uid == 0x0103:  # ncp_hasUID: this peer has no extension
            peer.answer(msg_id, b"\0")
        elif uid == 0x0352:  # blynk_getTime: no time known
            peer.answer(msg_id, cstr("") + struct.pack("<qh", 0, 0) + cstr("") + b"\0\0")
        elif uid == 0x0341:  # blynk_otaUpdateStart(chunk_size)
            limit = (BLYNK_MAX if framing == "blynk" else 65535 + WRITE_OVERHEAD) - WRITE_OVERHEAD
            seen["chunk_size"] = struct.unpack_from("<H", args)[0]
            state["chunk"] = min(seen["chunk_size"], limit)
            peer.answer(msg_id, b"\1")
            state["phase"], state["pos"] = "writing", 0
            write_next(peer)
        elif uid == 0x0342:  # blynk_otaUpdateGetCRC32
            peer.answer(msg_id, struct.pack("<I", zlib.crc32(image)) + b"\1")
        elif uid == 0x0344:  # blynk_otaUpdateGetSHA256
            peer.answer(msg_id, binary(hashlib.sha256(image).digest()) + b"\1")
        elif uid == 0x0343:  # blynk_otaUpdateGetMD5
            peer.answer(msg_id, binary(hashlib.md5(image).digest()) + b"\1")
        else:
            seen["unserved"].append(uid)  # the real driver stays silent too

    peer = Peer(fd, framing, serve)
    while time.monotonic() < deadline and not done():
        peer.pump(min(0.2, deadline - time.monotonic()))
    seen["phase"] = state["phase"]
    return seen


def run_primary(fd: int, framing: str, fw_type: str, version: str, chunk_size: int,
                deadline: float) -> dict:
    """Start as a primary running ``version``, take the NCP's offer, check the image by its
    CRC-32 and SHA-256 asked inside Finish, then report the new version as after a reboot."""
    seen: dict = {"offer": None, "image": bytearray(), "writes": 0, "unserved": [], "good": None}
    finish: list[int] = []

    def serve(peer: Peer, uid: int, msg_id: int, args: bytes) -> None:
        image = seen["image"]
        if uid == 0x0181:  # mcu_ping
            peer.answer(msg_id)
        elif uid == 0x0183:  # mcu_hasUID: no extension here
            peer.answer(msg_id, b"\0")
        elif uid == 0x0441:  # client_otaUpdateAvailable(filename, size, type, version, build)
            name, at = take_str(args, 0)
            size = struct.unpack_from("<I", args, at)[0]
            fw, at = take_str(args, at + 4)
            ver, at = take_str(args, at)
            build, at = take_str(args, at)
            assert at == len(args), "bytes left over in otaUpdateAvailable"
            seen["offer"] = {"filename": name, "size": size, "fw_type": fw, "version": ver,
                             "build": build}
            peer.answer(msg_id, b"\1")
        elif uid == 0x0442:  # client_otaUpdateWrite(offset, chunk, crc32)
            offset, length = struct.unpack_from("<IH", args)
            chunk = args[6:6 + length]
            (crc,) = struct.unpack_from("<I", args, 6 + length)
            assert 6 + length + 4 == len(args), "bytes left over in otaUpdateWrite"
            seen["writes"] += 1
            good = (zlib.crc32(chunk) == crc and offset == len(image)
                    and 0 < length <= chunk_size)
            if good:
                image.extend(chunk)
            peer.answer(msg_id, b"\1" if good else b"\0")
        elif uid == 0x0443:  # client_otaUpdateFinish: answered once the digests are checked
            finish.append(msg_id)
        elif uid == 0x0444:  # client_otaUpdateCancel: status only
            seen["cancelled"] = True
            peer.answer(msg_id)
        else:
            seen["unserved"].append(uid)

    peer = Peer(fd, framing, serve)

    def report(ver: str) -> None:
        # The driver's start: ping until the NCP answers, then its version, our firmware,
        # initialize.
        while peer.call(0x0101, timeout=0.5) != (0, b""):
            assert time.monotonic() < deadline, "the NCP never answered a ping"
        seen["ncp_version"] = take_str(peer.call(0x0305)[1], 0)[0]
        info = cstr(fw_type) + cstr(ver) + cstr("Jan  1 2026 00:00:00") + cstr("0.6.4")
        assert true(peer.call(0x0304, info)), "setFirmwareInfo"
        assert true(peer.call(0x0301, cstr(fw_type) + cstr("Doc peer"), timeout=5.0))

    report(version)
    while seen["offer"] is None and time.monotonic() < deadline:
        state = peer.call(0x0306)  # blynk_getState, as the driver polls it
        seen["state"] = state[1][0] if state and state[0] == 0 and state[1] else None
        peer.pump(0.2)
    assert seen["offer"] is not None, "no offer"
    assert true(peer.call(0x0341, struct.pack("<H", chunk_size))), "otaUpdateStart"
    while not finish and time.monotonic() < deadline:
        peer.pump(deadline - time.monotonic())
    assert finish, "no Finish"
    crc = struct.unpack_from("<I", peer.call(0x0342)[1])[0]
    sha_result = peer.call(0x0344)[1]
    sha = sha_result[2:2 + struct.unpack_from("<H", sha_result)[0]]
    image = bytes(seen["image"])
    seen["good"] = (len(image) == seen["offer"]["size"] and crc == zlib.crc32(image)
                    and sha == hashlib.sha256(image).digest())
    peer.answer(finish[0], b"\1" if seen["good"] else b"\0")
    if seen["good"]:
        report(seen["offer"]["version"])  # the new image, after its reboot
        end = min(deadline, time.monotonic() + 1.0)
        while time.monotonic() < end:
            peer.call(0x0306)
            peer.pump(0.2)
    return seen
