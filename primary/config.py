"""The application's configuration store: one per slot, so a rollback brings back the old one.

A common update mistake is configuration that stays new after the firmware rolled back: the
new image migrated it to a layout the old image cannot read.  The emulated primary keeps
configuration the way Mongoose OS keeps its file system: each slot has its own store, and the
image in a slot owns it.  A new image, on its first boot, reads the store of the image it
replaces (the confirmed one), migrates a copy to its own schema, and writes it to its own
slot's store.  The old store is never written by the new image, so a rollback finds it as it
was.

Each store is two flash pages, kept as records.py describes (a power cut loses at most the
copy being written).  A record:

    offset size  field
    0      4     magic "CONF"
    4      1     record version (1)
    5      4     sequence number, u32 LE
    9      2     schema, u16 LE: the layout of the values, as the image that wrote it knows it
    11     8     owner: the first 8 bytes of the SHA-256 of the image that wrote it
    19     2     length of the values, u16 LE
    21     n     the values: UTF-8 JSON object of strings
    21+n   4     CRC-32 of bytes 0..20+n, LE

A record whose owner is not the image in its slot is stale (left by an image that slot held
before) and is ignored.  An image reads a record of its own schema; one of an older schema it
migrates forward (each step adds what that schema added); one of a newer schema it cannot
read.  The schema of an image is its tag's ``config-schema`` (1 when absent).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

from .flash import Flash
from .records import Redundant

MAGIC = b"CONF"
RECORD_VERSION = 1
_HEAD = struct.Struct("<4sBIH8sH")
SCHEMA_KEY = "config-schema"
DEFAULTS = {"device_name": "dualmcu", "report_interval_s": "60"}


@dataclass(frozen=True)
class ConfigRecord:
    schema: int
    owner: bytes
    values: dict = field(default_factory=dict)
    seq: int = 0

    def encode(self) -> bytes:
        payload = json.dumps(self.values, sort_keys=True, separators=(",", ":")).encode()
        body = _HEAD.pack(MAGIC, RECORD_VERSION, self.seq, self.schema, self.owner[:8], len(payload)) + payload
        return body + zlib.crc32(body).to_bytes(4, "little")

    @classmethod
    def decode(cls, data: bytes) -> ConfigRecord | None:
        if len(data) < _HEAD.size + 4 or data[:4] != MAGIC:
            return None
        _, version, seq, schema, owner, n = _HEAD.unpack_from(data)
        end = _HEAD.size + n
        if version != RECORD_VERSION or end + 4 > len(data):
            return None
        if zlib.crc32(data[:end]).to_bytes(4, "little") != data[end : end + 4]:
            return None
        try:
            values = json.loads(data[_HEAD.size : end])
        except ValueError:
            return None
        if not isinstance(values, dict):
            return None
        return cls(schema, owner, values, seq)


class ConfigStore(Redundant[ConfigRecord]):
    def __init__(self, flash: Flash, slot: int):
        super().__init__(flash, flash.geometry.config_offsets(slot), ConfigRecord.decode)
        self.slot = slot

    def erase(self) -> None:
        """Forget this slot's store before a new image is written there (pages already blank
        are left alone: no wear for nothing)."""
        blank = b"\xff" * self.flash.page_size
        for off in self.offsets:
            if self.flash.read(off, self.flash.page_size) != blank:
                self.flash.erase_page(off)


def schema_of(info: dict[str, str]) -> int:
    """An image's configuration schema, from its tag (1 when absent or not a number)."""
    text = info.get(SCHEMA_KEY, "1")
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) <= 0xFFFF else 1


def migrate(values: dict, from_schema: int, to_schema: int) -> dict:
    """The test application's migration, one schema at a time: schema N adds ``schema_N``."""
    out = dict(values)
    for s in range(from_schema + 1, to_schema + 1):
        out.setdefault(f"schema_{s}", f"added by schema {s}")
    return out


@dataclass(frozen=True)
class Loaded:
    """What the application booted with, and where it came from."""

    record: ConfigRecord | None  # None: unreadable
    source: str  # own | migrated | carried | defaults | unreadable
    from_schema: int | None = None


def load_for_boot(flash: Flash, slot: int, other_ok: bool, owner: bytes, schema: int,
                  other_owner: bytes | None) -> Loaded:
    """The configuration the image in ``slot`` (owner, schema) boots with, migrating or
    carrying it forward when this is its first boot.  ``other_ok``: the other slot holds the
    confirmed image whose store may be carried forward; ``other_owner`` is its owner."""
    own = ConfigStore(flash, slot)
    rec = own.load()
    if rec is not None and rec.owner == owner[:8]:
        if rec.schema == schema:
            return Loaded(rec, "own")
        if rec.schema > schema:
            return Loaded(None, "unreadable", rec.schema)
        new = own.store(ConfigRecord(schema, owner[:8], migrate(rec.values, rec.schema, schema)))
        return Loaded(new, "migrated", rec.schema)
    src = ConfigStore(flash, 1 - slot).load() if other_ok else None
    if src is not None and other_owner is not None and src.owner == other_owner[:8] and src.schema <= schema:
        new = own.store(ConfigRecord(schema, owner[:8], migrate(src.values, src.schema, schema)))
        return Loaded(new, "carried", src.schema)
    new = own.store(ConfigRecord(schema, owner[:8], migrate(DEFAULTS, 1, schema)))
    return Loaded(new, "defaults", src.schema if src is not None else None)
