"""Firmware images and their Blynk info tag.

A tag is ``blnkinf\\0`` then NUL-separated key/value pairs, ended by an empty key:

    blnkinf␀mcu␀1.2.3␀fw-type␀TMPL123␀build␀Jan  1 2024 00:00:00␀blynk␀0.6.4␀␀

It is found in an image with the same pattern as the public ``blynk_tag.py`` tool, so values
that tool cannot find (empty, or with characters outside ``[\\w\\s.,:\\-()]``) are refused here
when a tag is made, not discovered later when an update is offered.

Keys the emulated primary reads besides Blynk's own (docs/device.md):

    hw-rev          hardware revisions the image runs on, separated by spaces or commas
    min-bootloader  the oldest bootloader version it needs (dotted numbers)
    config-schema   the configuration schema it reads and writes (1 when absent)
    dualmcu-test-hw-rev  the hardware revisions that show the test behaviour (default: all)
    dualmcu-test    a test behaviour, honoured by the emulated primary only:
                    fail-health         boots, fails its health check (never confirms)
                    crash               faults right after boot, at every boot
                    hang                never confirms and never crashes: the commit timer
                                        rolls it back
                    slow-confirm:S      confirms S seconds after its health check starts
                    breaking-migration  migrates the configuration to a schema the old image
                                        cannot read, then fails its health check
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
import zlib
from dataclasses import dataclass

TAG_MAGIC = b"blnkinf\x00"
TAG_PATTERN = re.compile(rb"blnkinf\x00[\w\s\.,:\-\(\)\x00]*?\x00\x00")
_VALUE_OK = re.compile(r"[\w\s.,:\-()]+", re.ASCII)
TEST_KEY = "dualmcu-test"
TEST_BEHAVIOURS = ("fail-health", "crash", "hang", "slow-confirm", "breaking-migration")
COMPAT_KEYS = ("hw-rev", "min-bootloader", "config-schema")


class TagError(ValueError):
    pass


def build_time(t: float | None = None) -> str:
    """A build time as C's __DATE__ " " __TIME__ writes it: 'Jan  1 2024 00:00:00'."""
    tm = time.gmtime(t)
    return time.strftime("%b ", tm) + f"{tm.tm_mday:>2}" + time.strftime(" %Y %H:%M:%S", tm)


def create_tag(info: dict[str, str]) -> bytes:
    """The tag bytes for ``info``, in blynk_tag.py's layout; refuses what its search misses."""
    for key, value in info.items():
        for what, text in (("key", key), ("value", value)):
            if not _VALUE_OK.fullmatch(text):
                raise TagError(
                    f"tag {what} {text!r} (of {key!r}) would not be found by the tag search: "
                    "use letters, digits, spaces and . , : - ( ) only, and no empty values"
                )
    fields = ["blnkinf"] + [x for kv in info.items() for x in kv]
    tag = b"\x00".join(f.encode("utf-8") for f in fields) + b"\x00\x00"
    if find_tag(tag) != tag:
        raise TagError("the tag would not be found intact by the tag search")
    return tag


def find_tag(data: bytes) -> bytes | None:
    m = TAG_PATTERN.search(data)
    return m[0] if m else None


def parse_tag(tag: bytes) -> dict[str, str]:
    fields = tag.split(b"\x00")[1:-2]
    return {k.decode("utf-8"): v.decode("utf-8") for k, v in zip(fields[::2], fields[1::2])}


def read_info(data: bytes) -> dict[str, str] | None:
    tag = find_tag(data)
    return parse_tag(tag) if tag is not None else None


def make_info(mcu: str, fw_type: str, build: str | None = None, blynk: str = "0.6.4", **extra: str) -> dict[str, str]:
    info = {"mcu": mcu, "fw-type": fw_type, "build": build or build_time(), "blynk": blynk}
    info.update(extra)
    return info


def version_key(v: str) -> tuple:
    """Order firmware versions: dotted numbers compare numerically, anything else as text."""
    parts = re.split(r"[.\-+]", v.strip())
    # isascii: "²".isdigit() is True, but int() refuses it.
    return tuple((0, int(p), "") if p.isascii() and p.isdigit() else (1, 0, p) for p in parts)


def is_newer(candidate: str, current: str) -> bool:
    return version_key(candidate) > version_key(current)


HEAD = b"\x00\x20\x00\x20" + bytes(252)  # stack pointer + zeroed vectors, like a Cortex-M
CONTENTS = ("random", "code")


def build_image(info: dict[str, str], size: int = 300 * 1024, seed: int | None = None,
                content: str = "random") -> bytes:
    """A test firmware image: a vector-table-like header, the tag, then seeded filler.

    The filler is deterministic for a given seed (by default derived from the tag), so the
    same command builds the same bytes and digests can be quoted in docs and tests.
    ``content="code"`` fills with code-like bytes (image/synth.py) seeded by the fw-type
    instead, so that two versions of one product share a program and a delta between them
    behaves as it does between real builds.
    """
    from .synth import code_body

    tag = create_tag(info)
    if size < len(HEAD) + len(tag):
        raise ValueError(f"an image needs at least {len(HEAD) + len(tag)} bytes for its header and tag")
    if content not in CONTENTS:
        raise ValueError(f"content is one of {', '.join(CONTENTS)}, not {content!r}")
    n = size - len(HEAD) - len(tag)
    if content == "code":
        body = code_body(n, zlib.crc32(info.get("fw-type", "").encode()) if seed is None else seed)
    else:
        body = random.Random(zlib.crc32(tag) if seed is None else seed).randbytes(n)
    # Filler must not accidentally contain a tag of its own ahead of the real one.
    return HEAD + tag + body.replace(TAG_MAGIC, b"blnkinF\x00")


def next_image(old: bytes, info: dict[str, str], change: float, seed: int | None = None) -> bytes:
    """The next build of ``old`` under the tag ``info``: what follows the old tag, edited at
    scattered sites (about ``change`` of its bytes) and relinked (image/synth.py)."""
    from .synth import next_build

    old_tag = find_tag(old)
    if old_tag is None:
        raise ValueError("the base image has no firmware tag (blnkinf)")
    at = old.index(old_tag)
    tag = create_tag(info)
    body = next_build(old[at + len(old_tag):], change, zlib.crc32(tag) if seed is None else seed)
    return old[:at] + tag + body.replace(TAG_MAGIC, b"blnkinF\x00")


@dataclass(frozen=True)
class ImageDigests:
    size: int
    crc32: int
    md5: bytes
    sha256: bytes


def digests_of_file(path: str | os.PathLike, block: int = 1 << 16) -> ImageDigests:
    crc, md5, sha, n = 0, hashlib.md5(), hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            crc = zlib.crc32(chunk, crc)
            md5.update(chunk)
            sha.update(chunk)
            n += len(chunk)
    return ImageDigests(n, crc, md5.digest(), sha.digest())


def read_info_streamed(read, length: int, block: int = 1 << 16) -> dict[str, str] | None:
    """The tag among ``length`` bytes got by ``read(offset, n)``, searched in overlapping
    blocks so that a large image is never held whole."""
    overlap = 4096
    prev = b""
    for pos in range(0, length, block):
        window = prev + read(pos, min(block, length - pos))
        tag = find_tag(window)
        if tag is not None:
            return parse_tag(tag)
        prev = window[-overlap:]
    return None


def read_info_from_file(path: str | os.PathLike, block: int = 1 << 16) -> dict[str, str] | None:
    with open(path, "rb") as f:
        return read_info_streamed(lambda pos, n: os.pread(f.fileno(), n, pos), os.fstat(f.fileno()).st_size, block)
