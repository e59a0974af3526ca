"""A UART between two sides, as a sans-IO model: bytes and times in, bytes and times out.

The same model runs in the tests (on a virtual clock), inside the relay of ``dualmcu link``,
and at each end of ``dualmcu run``'s virtual UART, where each side paces what it sends
(:class:`End`), on the monotonic clock.  Each direction is a :class:`Lane`:

* pacing: a byte takes 10 bit times (8N1) on the wire; a lane sends one byte at a time, so a
  burst of N bytes written at once arrives over N × 10 / baud seconds, at the baud's limit;
* latency: a fixed delay added to every byte, as a USB-serial bridge adds;
* the receiver's buffer: at most ``rx_buffer`` bytes wait unread; when the receiving side
  reads only every ``rx_poll`` seconds, what arrives past a full buffer is lost, as in an MCU
  whose UART FIFO overflows;
* faults, all drawn from one seeded generator so that a run can be replayed exactly: bit
  errors (``ber`` per bit), byte drops, byte duplicates, garbage bursts, stalls of the line,
  and the disconnection of one side for a while.

Counters of everything injected are kept in ``stats``.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, replace

from dualmcu.rpc.endpoint import earliest


@dataclass
class Faults:
    ber: float = 0.0  # probability that a bit is flipped
    drop: float = 0.0  # probability that a byte is lost
    dup: float = 0.0  # probability that a byte is received twice
    garbage: float = 0.0  # probability, per byte, that a burst of noise follows it
    garbage_len: int = 16  # longest burst
    stall: float = 0.0  # probability, per byte, that the line stalls after it
    stall_time: float = 0.05  # seconds of a stall

    @property
    def any(self) -> bool:
        return any((self.ber, self.drop, self.dup, self.garbage, self.stall))


@dataclass
class LinkConfig:
    baud: int | None = None  # None: unpaced (bytes arrive after the latency alone)
    latency: float = 0.0
    rx_buffer: int | None = None  # None: unbounded
    rx_poll: float = 0.0  # how often the receiver reads its buffer; 0: at once
    faults: Faults = field(default_factory=Faults)
    seed: int = 0


def new_stats() -> dict[str, int]:
    return {"bytes": 0, "delivered": 0, "bit_errors": 0, "dropped": 0, "duplicated": 0, "garbage_bursts": 0,
            "garbage_bytes": 0, "stalls": 0, "overflow_lost": 0, "disconnects": 0, "disconnect_lost": 0}


# The counters of what the link injected or lost, as a run's summary lists them: every counter
# but the traffic itself (bytes, delivered) and garbage_bytes (said by garbage_bursts).
INJECTED = tuple(k for k in new_stats() if k not in ("bytes", "delivered", "garbage_bytes"))


class Lane:
    """One direction of the UART."""

    def __init__(self, cfg: LinkConfig, rng: random.Random):
        self.cfg = cfg
        self.rng = rng
        self.free_at = 0.0  # when the transmitter has sent everything queued so far
        self.queue: deque[tuple[float, bytes]] = deque()  # (arrival time, bytes), in order
        self.next_poll = 0.0
        self.cut_until = -1.0
        self.stats = new_stats()

    def byte_time(self) -> float:
        return 10.0 / self.cfg.baud if self.cfg.baud else 0.0

    def send(self, data: bytes, now: float) -> None:
        if not data:
            return
        self.stats["bytes"] += len(data)
        if now < self.cut_until:
            self.stats["disconnect_lost"] += len(data)
            return
        f = self.cfg.faults
        if f.any:
            data = self._damage(data)
        start = max(now, self.free_at)
        t = self.byte_time()
        done = start + t * len(data)
        if f.stall and data:
            stalls = sum(1 for _ in range(len(data)) if self.rng.random() < f.stall)
            if stalls:
                self.stats["stalls"] += stalls
                done += stalls * f.stall_time
        self.free_at = done
        if data:
            self.queue.append((done + self.cfg.latency, data))

    def _damage(self, data: bytes) -> bytes:
        f, rng, st = self.cfg.faults, self.rng, self.stats
        p_bit = 1 - (1 - f.ber) ** 8 if f.ber else 0.0
        out = bytearray()
        rand = rng.random
        for b in data:
            r = rand()
            if r < f.drop:
                st["dropped"] += 1
                continue
            if p_bit and rand() < p_bit:
                b ^= 1 << rng.randrange(8)
                st["bit_errors"] += 1
            out.append(b)
            if f.dup and rand() < f.dup:
                out.append(b)
                st["duplicated"] += 1
            if f.garbage and rand() < f.garbage:
                n = rng.randint(1, f.garbage_len)
                out += rng.randbytes(n)
                st["garbage_bursts"] += 1
                st["garbage_bytes"] += n
        return bytes(out)

    def cut(self, until: float) -> None:
        """Nothing gets through until ``until``; what is on the wire now is lost."""
        self.cut_until = max(self.cut_until, until)
        self.stats["disconnect_lost"] += sum(len(d) for _, d in self.queue)
        self.queue.clear()

    def next_deadline(self) -> float | None:
        if not self.queue:
            return None
        at, data = self.queue[0]
        if not self.cfg.rx_poll:
            return at
        # A receiver that polls reads what has come so far: its next read is due once the
        # first byte is in.
        return max(at - (len(data) - 1) * self.byte_time(), self.next_poll)

    def receive(self, now: float) -> bytes:
        """The bytes the receiver reads at ``now``.

        A receiver that reads at once gets a burst when its last byte is in (as a USB-serial
        bridge hands over a packet).  One that polls (``rx_poll``) gets every byte that has
        arrived by ``now``, a burst's first part too: a UART fills its buffer a byte at a time,
        and a frame longer than the buffer overflows only when the receiver is slower than the
        wire."""
        if self.cfg.rx_poll:
            if now < self.next_poll:
                return b""
            self.next_poll = now + self.cfg.rx_poll  # a read of an empty buffer is a read too
        if not self.queue:
            return b""
        out = bytearray()
        cap = self.cfg.rx_buffer
        t = self.byte_time()
        while self.queue:
            at, data = self.queue[0]
            if at <= now:
                self.queue.popleft()
            elif self.cfg.rx_poll and t:
                # Byte i of n arrives at at - (n - 1 - i) * t: those in by now are read.
                n = len(data)
                k = min(n, int((now - (at - n * t)) / t + 1e-9))
                if k <= 0:
                    break
                data, self.queue[0] = data[:k], (at, data[k:])
            else:
                break
            if cap is not None and self.cfg.rx_poll:
                # What arrived while the receiver was not reading piles up; past the
                # buffer's size it is lost.
                room = cap - len(out)
                if len(data) > room:
                    self.stats["overflow_lost"] += len(data) - max(room, 0)
                    data = data[: max(room, 0)]
            out += data
        self.stats["delivered"] += len(out)
        return bytes(out)


class Link:
    """Both directions: ``a`` is the NCP's end and ``b`` the primary's, by convention."""

    def __init__(self, cfg: LinkConfig | None = None):
        self.cfg = cfg or LinkConfig()
        root = random.Random(self.cfg.seed)
        self.lanes = {"a_to_b": Lane(self.cfg, random.Random(root.getrandbits(64))),
                      "b_to_a": Lane(self.cfg, random.Random(root.getrandbits(64)))}

    def send(self, side: str, data: bytes, now: float) -> None:
        self.lanes["a_to_b" if side == "a" else "b_to_a"].send(data, now)

    def receive(self, side: str, now: float) -> bytes:
        return self.lanes["b_to_a" if side == "a" else "a_to_b"].receive(now)

    def next_deadline(self) -> float | None:
        return earliest(*(lane.next_deadline() for lane in self.lanes.values()))

    def set_baud(self, baud: int, now: float) -> None:
        """Both ends switch; what is already on the wire keeps the timing it was sent with."""
        self.cfg.baud = baud

    def disconnect(self, side: str, now: float, duration: float) -> None:
        """Cut one side off for ``duration`` seconds: nothing to or from it gets through."""
        for lane in self.lanes.values():
            lane.cut(now + duration)
        self.lanes["a_to_b"].stats["disconnects"] += 1  # one event, counted once

    @property
    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for lane in self.lanes.values():
            for k, v in lane.stats.items():
                total[k] = total.get(k, 0) + v
        return total


LANE_OF = {"a": "a_to_b", "b": "b_to_a"}  # the lane a side sends on


class End:
    """One side's transmitter, when the two sides of a link run in two processes.

    Each side paces what it sends itself, and writes it to the other side's descriptor when
    it has arrived: a round trip crosses two processes instead of four hops through a relay
    process.  Its lane is the one a :class:`Link` with the same config gives that side, drawn
    from the same seed, so the faults are those the relay or the simulation would inject.
    Every disconnection of the plan cuts both directions, as :meth:`Link.disconnect` does, so
    each end applies all of them to its own lane.
    """

    def __init__(self, cfg: LinkConfig, side: str, disconnects: list[tuple[str, float, float]] | None = None,
                 start: float = 0.0):
        self.cfg = replace(cfg)  # its own: a baud switch of this end is not the other's
        self.side = side
        self.lane = Link(self.cfg).lanes[LANE_OF[side]]
        self.cuts = sorted((start + at, seconds) for _, at, seconds in disconnects or [])

    @property
    def transparent(self) -> bool:
        """Nothing to model: bytes may go straight out, at once and unchanged."""
        c = self.cfg
        return not (c.baud or c.latency or c.rx_poll or c.faults.any or self.cuts)

    def send(self, data: bytes, now: float) -> None:
        self._disconnect(now)
        self.lane.send(data, now)

    def due(self, now: float) -> bytes:
        """What has arrived at the other side by ``now``."""
        self._disconnect(now)
        return self.lane.receive(now)

    def arriving(self) -> float | None:
        """When the next bytes on the wire arrive (None: none are on it)."""
        return self.lane.next_deadline()

    def next_deadline(self) -> float | None:
        """When this end has something to do: bytes arrive, or a disconnection begins."""
        return earliest(self.lane.next_deadline(), self.cuts[0][0] if self.cuts else None)

    def set_baud(self, baud: int) -> None:
        """This side's UART switched: what it sends from now on goes at ``baud`` (when paced)."""
        if self.cfg.baud:
            self.cfg.baud = baud

    def _disconnect(self, now: float) -> None:
        while self.cuts and self.cuts[0][0] <= now:
            at, seconds = self.cuts.pop(0)
            self.lane.cut(at + seconds)
            if self.side == "a":
                self.lane.stats["disconnects"] += 1  # one event, counted at one end

    @property
    def stats(self) -> dict[str, int]:
        return self.lane.stats


# Within this the two ends' rates agree as a UART's would (its sampling at mid-bit absorbs a
# few per cent over one 10-bit frame).
RATE_TOLERANCE = 0.03


def rates_agree(sent_at: int, read_at: int) -> bool:
    return abs(read_at - sent_at) <= RATE_TOLERANCE * sent_at


def misread(data: bytes, sent_at: int, read_at: int) -> bytes:
    """What a UART receiving at ``read_at`` baud makes of ``data`` sent back to back at
    ``sent_at`` baud (8N1), bit by bit: it waits for a falling edge, samples the start bit, the
    eight data bits and the stop bit at the middle of its own bit times, and keeps a byte only
    when its stop bit reads high (a framing error loses it).  So a firmware that talks at the
    wrong rate gets what it would get on the bench: fewer bytes, none of them right."""
    if rates_agree(sent_at, read_at):
        return data
    bits = bytearray()
    for b in data:
        bits.append(0)
        bits.extend((b >> i) & 1 for i in range(8))
        bits.append(1)
    n, step = len(bits), sent_at / read_at  # the receiver's bit time, in the sender's
    level = lambda t: bits[int(t)] if t < n else 1  # noqa: E731  (idle high after the burst)
    out = bytearray()
    i = 0
    while i < n:
        if bits[i] != 0 or (i and bits[i - 1] != 1):
            i += 1
            continue  # not a falling edge
        if level(i + 0.5 * step) != 0:
            i += 1
            continue  # a glitch, not a start bit
        value = sum(level(i + (1.5 + k) * step) << k for k in range(8))
        stop = i + 9.5 * step
        if level(stop) == 1:
            out.append(value)
        i = max(i + 1, int(stop))  # the next edge is looked for from the stop bit on
    return bytes(out)
