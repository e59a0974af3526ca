"""Test images that behave like real builds of one program, for delta and compression work.

Random filler (``build_image``'s default) neither compresses nor diffs: two versions share no
bytes.  Real firmware does both, and the way two builds of one program differ is what decides
how well a delta works: a function grows or shrinks, which shifts every function linked after
it and so changes every absolute address that points past it; a constant changes here and
there.  This module makes bytes with that structure:

* ``code_body`` writes "functions": instruction idioms drawn with a skewed (Zipf-like)
  frequency, as compiled code repeats a few patterns, each function followed by a literal pool
  of 32-bit words that are absolute addresses into the image (``LOAD_ADDRESS`` + offset, Thumb
  bit set) or constants.  Every word of a pool is 4-byte aligned.
* ``next_build`` turns one body into the next build: edits at scattered sites (code replaced,
  inserted or removed, always in whole 4-byte units, so alignment holds), then a relink: every
  aligned word that is an address into the image and points past an edit moves with it.

``change`` is the fraction of the body's bytes the edits themselves touch; the relink changes
more bytes than that, as a linker does.
"""

from __future__ import annotations

import bisect
import random
import struct

LOAD_ADDRESS = 0x0800_0000  # where Cortex-M parts map their internal flash
IDIOMS = 256  # distinct instruction patterns in a program
SITE = 48  # average bytes an edit touches


def _idioms(rng: random.Random) -> tuple[list[bytes], list[float]]:
    idioms = [rng.randbytes(rng.choice((2, 2, 2, 4))) for _ in range(IDIOMS)]
    weights = [1.0 / (i + 1) for i in range(IDIOMS)]
    return idioms, weights


def _code(rng: random.Random, idioms: list[bytes], weights: list[float], nbytes: int) -> bytes:
    """About ``nbytes`` of instructions, padded to a multiple of 4."""
    out = b"".join(idioms[i] for i in rng.choices(range(IDIOMS), weights, k=max(1, nbytes // 3)))
    return out + bytes(-len(out) % 4)


def code_body(size: int, seed: int) -> bytes:
    """``size`` bytes of code-like content (deterministic for ``seed``)."""
    rng = random.Random(seed)
    idioms, weights = _idioms(rng)
    constants = [rng.getrandbits(32) for _ in range(64)]
    out = bytearray()
    while len(out) < size:
        out += _code(rng, idioms, weights, rng.randint(48, 1024))
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.6:
                word = (LOAD_ADDRESS + rng.randrange(0, max(4, size), 4)) | 1
            else:
                word = rng.choice(constants)
            out += struct.pack("<I", word)
    return bytes(out[:size])


def next_build(old: bytes, change: float, seed: int) -> bytes:
    """The next build of the program in ``old``: edits at scattered sites touching about
    ``change`` of its bytes, then every address into the image relinked."""
    if not 0 < change <= 1:
        raise ValueError(f"change must be above 0 and at most 1, not {change}")
    rng = random.Random(seed)
    idioms, weights = _idioms(random.Random(seed ^ 0x5EED))
    n = len(old) - len(old) % 4
    sites = sorted({rng.randrange(0, n, 4) for _ in range(max(1, round(change * n / SITE)))})
    new = bytearray()
    moved: list[tuple[int, int]] = []  # (old offset, shift of everything from there on)
    shift, prev = 0, 0
    for at in sites:
        if at < prev:
            continue
        new += old[prev:at]
        span = 4 * rng.randint(2, 2 * SITE // 4 - 2)
        kind = rng.random()
        if kind < 0.5:  # code or a constant changed in place
            new += _code(rng, idioms, weights, span)[:span].ljust(span, b"\x00")
            prev = min(n, at + span)
        elif kind < 0.75:  # code added: what follows moves up
            new += _code(rng, idioms, weights, span)
            shift += len(new) - (at + shift)
            prev = at
        else:  # code removed: what follows moves down
            prev = min(n, at + span)
            shift -= prev - at
        moved.append((prev, shift))
    new += old[prev:]
    # Relink: an aligned word that points into the old image, past an edit, moves with it.
    keys = [m[0] for m in moved]
    end = LOAD_ADDRESS + len(old)
    for pos in range(0, len(new) - 3, 4):
        (word,) = struct.unpack_from("<I", new, pos)
        if LOAD_ADDRESS <= word < end:
            i = bisect.bisect_right(keys, word - LOAD_ADDRESS) - 1
            if i >= 0 and moved[i][1]:
                struct.pack_into("<I", new, pos, (word + moved[i][1]) & 0xFFFF_FFFF)
    return bytes(new)
