"""Update packages: a new image compressed, or as a delta against the image a device runs.

Over a UART at 115200 a 1 MiB image takes 91 s; a release that changes 1 % of it fits in a
few KiB as a delta.  The diff and the compression are detools' (made for MCUs, with a C
library that applies its patches on the device); this module only puts its patches in a
container a device can check before it writes a byte, and apply as the bytes arrive.

The container (every integer little-endian)
-------------------------------------------
    offset  size  field
    0       4     magic "DMPK"
    4       1     format (1)
    5       1     kind: 0 full (the image, compressed), 1 delta (against a base image)
    6       1     compression, detools' number: 0 none, 1 lzma, 4 heatshrink
    7       1     reserved, 0
    8       4     image size: the image the package rebuilds
    12      4     image CRC-32
    16      32    image SHA-256
    48      4     base size (0 for a full package)
    52      32    base SHA-256 (zeros for a full package)
    84      4     segment: image bytes per segment (the last one may be shorter)
    88      4     RAM: bytes of decompressor state a segment needs (lzma dictionary,
                  heatshrink window; 0 for none)
    92      1     B, the length of the base version
    93      B     base version (the base image's tag "mcu"; what the cloud keys patches by)
    93+B    2     T, the length of the tag
    95+B    T     the new image's firmware tag, verbatim (so the package carries it, and the
                  cloud and the device read version and type from it as from an image)
    95+B+T  4     CRC-32 of every header byte before it
    then, for each segment in order:
            4     image bytes this segment makes
            4     P, the length of its patch
            P     a detools sequential patch (header byte, to-size, compressed stream)
                  from the base (an empty base for a full package) to those image bytes

Each segment's patch is whole in itself: its decompressor starts afresh and its position in
the base starts at 0.  That is what lets a device resume an interrupted transfer at a segment
boundary with nothing but two offsets and two CRCs persisted, and what bounds its RAM: one
decompressor state (``RAM``), one input chunk, and one output piece of at most ``PIECE``
bytes.  ``detools.apply_patch`` applies any one segment's patch on its own.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Generator, Iterator

from .firmware import find_tag, parse_tag

MAGIC = b"DMPK"
FORMAT = 1
FULL, DELTA = 0, 1
KINDS = {FULL: "full", DELTA: "delta"}
COMPRESSIONS = {"none": 0, "lzma": 1, "heatshrink": 4}  # detools' numbers
COMPRESSION_NAMES = {v: k for k, v in COMPRESSIONS.items()}
DEFAULT_SEGMENT = 64 * 1024
DEFAULT_LZMA_DICT = 32 * 1024
DEFAULT_HEATSHRINK = (8, 7)  # window and lookahead, as powers of two: detools' defaults
PIECE = 4096  # the largest output piece the applier hands over at once
LZMA_TABLES = 16 * 1024  # an LZMA1 decoder's probability tables (lc=3, lp=0), besides its dictionary
HEATSHRINK_INPUT = 256  # the input buffer of a heatshrink decoder, besides its window
HEATSHRINK_QUANTUM = 64  # compressed bytes given to the heatshrink decoder at a time
_FIXED = struct.Struct("<4sBBBBII32sI32sII")
_SEG = struct.Struct("<II")
MAX_TAG = 4096


class PackageError(ValueError):
    """A package that is not well formed, or that cannot rebuild its image."""

    def __init__(self, message: str, reason: str = "package_corrupt"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageClaims:
    """What a package says the image it rebuilds is: checked once the image is whole."""

    size: int
    crc32: int
    sha256: bytes


@dataclass(frozen=True)
class Header:
    kind: int
    compression: int
    image_size: int
    image_crc32: int
    image_sha256: bytes
    base_size: int
    base_sha256: bytes
    segment: int
    ram: int
    base_version: str
    tag: bytes
    length: int  # bytes of header, CRC included

    @property
    def claims(self) -> ImageClaims:
        return ImageClaims(self.image_size, self.image_crc32, self.image_sha256)

    @property
    def info(self) -> dict[str, str]:
        return parse_tag(self.tag)

    @property
    def delta(self) -> bool:
        return self.kind == DELTA

    def describe(self) -> dict:
        return {"kind": KINDS[self.kind], "compression": COMPRESSION_NAMES[self.compression],
                "image_size": self.image_size, "image_crc32": f"{self.image_crc32:08x}",
                "image_sha256": self.image_sha256.hex(), "base_size": self.base_size,
                "base_sha256": self.base_sha256.hex() if self.delta else None,
                "base_version": self.base_version or None, "segment": self.segment, "ram": self.ram,
                "version": self.info.get("mcu"), "fw_type": self.info.get("fw-type")}


def is_package(data: bytes) -> bool:
    return data[:4] == MAGIC


def parse_header(data: bytes) -> Header | None:
    """The header at the start of ``data``; None when more bytes are needed (PackageError
    when what is there cannot be one)."""
    if len(data) < 4:
        return None
    if data[:4] != MAGIC:
        raise PackageError("not a dualmcu package (no DMPK magic)")
    if len(data) < _FIXED.size + 1:
        return None
    (_, fmt, kind, comp, _res, size, crc, sha, base_size, base_sha, segment, ram) = _FIXED.unpack_from(data)
    if fmt != FORMAT:
        raise PackageError(f"package format {fmt} is not one this version reads ({FORMAT})")
    if kind not in KINDS or comp not in COMPRESSION_NAMES:
        raise PackageError(f"package kind {kind} or compression {comp} unknown")
    at = _FIXED.size
    blen = data[at]
    if len(data) < at + 1 + blen + 2:
        return None
    try:
        base_version = data[at + 1 : at + 1 + blen].decode("ascii")
    except UnicodeDecodeError:
        raise PackageError("package base version is not ASCII") from None
    at += 1 + blen
    (tlen,) = struct.unpack_from("<H", data, at)
    if tlen > MAX_TAG:
        raise PackageError(f"package tag of {tlen} bytes (at most {MAX_TAG})")
    at += 2
    if len(data) < at + tlen + 4:
        return None
    tag = bytes(data[at : at + tlen])
    at += tlen
    if zlib.crc32(data[:at]) != int.from_bytes(data[at : at + 4], "little"):
        raise PackageError("package header CRC-32 does not match")
    if find_tag(tag) != tag:
        raise PackageError("package header does not hold a whole firmware tag")
    if size == 0 or segment == 0 or (kind == FULL) != (base_size == 0):
        raise PackageError("package header sizes are inconsistent")
    return Header(kind, comp, size, crc, sha, base_size, base_sha, segment, ram, base_version, tag, at + 4)


def segment_spans(h: Header, read: Callable[[int, int], bytes], size: int) -> list[tuple[int, int, int]]:
    """Where each segment lies in a package of ``size`` bytes: (first byte, end, image bytes it
    makes), read from the segment prefixes alone (``read(offset, length)``).  A sender bounds
    with it the flash work one piece of the package costs the device: a few bytes of a delta
    may make a whole segment of image (a copy from the base)."""
    spans, at = [], h.length
    while at + _SEG.size <= size:
        out_len, patch_len = _SEG.unpack(read(at, _SEG.size))
        end = min(at + _SEG.size + patch_len, size)
        spans.append((at, end, out_len))
        at = end
    return spans


def pack_header(h: Header) -> bytes:
    bv = h.base_version.encode("ascii")[:255]
    body = _FIXED.pack(MAGIC, FORMAT, h.kind, h.compression, 0, h.image_size, h.image_crc32, h.image_sha256,
                       h.base_size, h.base_sha256, h.segment, h.ram)
    body += bytes([len(bv)]) + bv + struct.pack("<H", len(h.tag)) + h.tag
    return body + zlib.crc32(body).to_bytes(4, "little")


def decoder_ram(compression: int, param: int) -> int:
    """Bytes of RAM a decoder needs: ``param`` is lzma's dictionary size, or heatshrink's
    window as a power of two."""
    if compression == COMPRESSIONS["lzma"]:
        return param + LZMA_TABLES
    if compression == COMPRESSIONS["heatshrink"]:
        return (1 << param) + HEATSHRINK_INPUT
    return 0


# -- making packages ---------------------------------------------------------------------


def _compress(stream: bytes, compression: str, lzma_dict: int, heatshrink: tuple[int, int]) -> bytes:
    if compression == "none":
        return stream
    if compression == "lzma":
        # detools' own lzma writer uses the default preset, whose 8 MiB dictionary no MCU has:
        # the same format (lzma "alone") with a dictionary the package declares.
        c = lzma.LZMACompressor(format=lzma.FORMAT_ALONE,
                                filters=[{"id": lzma.FILTER_LZMA1, "dict_size": lzma_dict, "preset": 9}])
        return c.compress(stream) + c.flush()
    from detools.compression.heatshrink import HeatshrinkCompressor

    c = HeatshrinkCompressor(*heatshrink)
    return c.compress(stream) + c.flush()


def _segment_patch(base: bytes, piece: bytes, compression: str, lzma_dict: int,
                   heatshrink: tuple[int, int]) -> bytes:
    """A detools sequential patch from ``base`` to ``piece``."""
    import detools

    raw = io.BytesIO()
    detools.create_patch(io.BytesIO(base), io.BytesIO(piece), raw, compression="none")
    data = raw.getvalue()
    # The header byte is (patch type << 4) | compression, then to-size; the rest is the
    # stream, here uncompressed, which is compressed with the package's own settings.
    size_len = _varint_length(data, 1)
    head = bytes([(data[0] & 0xF0) | COMPRESSIONS[compression]]) + data[1 : 1 + size_len]
    return head + _compress(data[1 + size_len :], compression, lzma_dict, heatshrink)


def _varint_length(data: bytes, at: int) -> int:
    n = 1
    while data[at + n - 1] & 0x80:
        n += 1
    return n


def build_package(new: bytes, base: bytes | None = None, compression: str = "heatshrink",
                  segment: int = DEFAULT_SEGMENT, lzma_dict: int = DEFAULT_LZMA_DICT,
                  heatshrink: tuple[int, int] = DEFAULT_HEATSHRINK) -> bytes:
    """``new`` as a package: compressed (no base) or a delta against ``base``."""
    tag = find_tag(new)
    if tag is None:
        raise PackageError("the new image has no firmware tag (blnkinf): tag it with `dualmcu tag append`")
    if compression not in COMPRESSIONS:
        raise PackageError(f"compression is one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    if segment < 4096 or segment % 4096:
        raise PackageError(f"segment of {segment} bytes: a multiple of 4096 is needed")
    if base is not None and not base:
        raise PackageError("the base image is empty")
    base_version = ""
    if base is not None:
        base_tag = find_tag(base)
        base_version = parse_tag(base_tag).get("mcu", "") if base_tag else ""
    ram = decoder_ram(COMPRESSIONS[compression], lzma_dict if compression == "lzma" else heatshrink[0])
    h = Header(DELTA if base is not None else FULL, COMPRESSIONS[compression], len(new), zlib.crc32(new),
               hashlib.sha256(new).digest(), len(base or b""), hashlib.sha256(base).digest() if base else bytes(32),
               segment, ram, base_version, tag, 0)
    out = [pack_header(h)]
    for at in range(0, len(new), segment):
        piece = new[at : at + segment]
        patch = _segment_patch(base or b"", piece, compression, lzma_dict, heatshrink)
        out.append(_SEG.pack(len(piece), len(patch)) + patch)
    return b"".join(out)


# -- applying them, as the bytes arrive ----------------------------------------------------


class Applier:
    """Rebuilds a package's image from its bytes, fed in order in pieces of any size (sans-IO).

    ``feed`` returns the image bytes each piece completes, in order, in pieces of at most
    ``PIECE`` bytes.  ``on_header`` sees the header as soon as it has arrived whole, before a
    byte of the base is read or of the image made, and refuses it by raising PackageError.  ``boundaries`` lists
    each segment end reached: (package offset, image offset), where a transfer may resume
    with ``Applier.resumed``.  Any fault raises PackageError and the applier takes no more.
    """

    def __init__(self, read_base: Callable[[int, int], bytes], base_size: int, max_ram: int | None = None,
                 on_header: Callable[[Header], None] | None = None, _resume: tuple[int, int, int] | None = None):
        self.read_base = read_base
        self.on_header = on_header  # may raise PackageError: called before any segment is read
        self.base_size = base_size
        self.max_ram = max_ram
        self.header: Header | None = None
        self.consumed = 0  # package bytes taken
        self.out_pos = 0  # image bytes made
        self.image_size = 0
        self.boundaries: list[tuple[int, int]] = []
        self.done = False
        self.failed: PackageError | None = None
        self._in = b""
        self._at = 0
        self._feeding = False
        if _resume is not None:
            self.consumed, self.out_pos, self.image_size = _resume
            self._gen = self._segments()
        else:
            self._gen = self._run()
        next(self._gen)

    @classmethod
    def resumed(cls, read_base: Callable[[int, int], bytes], base_size: int, package_offset: int,
                image_offset: int, image_size: int) -> Applier:
        """An applier that goes on at a segment boundary an earlier one reached."""
        return cls(read_base, base_size, None, None, (package_offset, image_offset, image_size))

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The image bytes ``data`` completes, one piece at a time: each is made only when the
        one before it has been taken (programmed), so no more than one is ever held."""
        if self.failed is not None:
            raise self.failed
        if self._feeding:
            raise RuntimeError("feed() called before the previous feed's pieces were all taken")
        if self.done:
            if data:
                self._fail(PackageError(f"{len(data)} bytes after the package's last segment"))
            return
        self._in, self._at = bytes(data), 0
        self._feeding = True
        try:
            while True:
                piece = self._gen.send(None)
                if piece is None:  # every byte of ``data`` used: wait for the next feed
                    return
                yield piece
        except StopIteration:
            self.done = True
            if self._at < len(self._in):
                self._fail(PackageError(f"{len(self._in) - self._at} bytes after the package's last segment"))
        except PackageError as e:
            self._fail(e)
        except Exception as e:  # a decompressor's own complaint about what it was given
            self._fail(PackageError(f"patch data does not decompress: {e}"))
        finally:
            self._feeding = False

    def _fail(self, e: PackageError) -> None:
        self.failed = e
        raise e

    # The parser is a generator: it yields each image piece as it makes it, and None when it
    # has used every byte fed so far; the next feed resumes it where it stopped.  So it reads
    # like detools' own (pull-based) applier while taking its input pushed, a chunk at a time.

    def _some(self, most: int) -> Generator[None, None, bytes]:
        """At least one byte and at most ``most`` of the input."""
        while self._at >= len(self._in):
            yield None
        got = self._in[self._at : self._at + most]
        self._at += len(got)
        self.consumed += len(got)
        return got

    def _exactly(self, n: int) -> Generator[None, None, bytes]:
        parts = []
        while n:
            got = yield from self._some(n)
            parts.append(got)
            n -= len(got)
        return b"".join(parts)

    def _run(self) -> Generator[None, None, None]:
        head = b""
        while True:
            head += yield from self._some(1 << 16)
            h = parse_header(head)
            if h is not None:
                break
            if len(head) > _FIXED.size + 1 + 255 + 2 + MAX_TAG + 4:
                raise PackageError("package header too long")
        # Hand back what followed the header: it is the first segment's.
        extra = len(head) - h.length
        self._at -= extra
        self.consumed -= extra
        if self.max_ram is not None and h.ram > self.max_ram:
            raise PackageError(f"the package needs {h.ram} bytes of RAM to decompress, more than {self.max_ram}",
                               "package_needs_ram")
        self.header, self.image_size = h, h.image_size
        if self.on_header is not None:
            self.on_header(h)
        yield from self._segments()

    def _segments(self) -> Generator[None, None, None]:
        while self.out_pos < self.image_size:
            out_len, patch_len = _SEG.unpack((yield from self._exactly(_SEG.size)))
            if out_len == 0 or self.out_pos + out_len > self.image_size or patch_len < 2:
                raise PackageError(f"segment at image offset {self.out_pos} makes {out_len} bytes "
                                   f"from a {patch_len}-byte patch: not this package's")
            yield from self._segment(out_len, patch_len)
            self.boundaries.append((self.consumed, self.out_pos))

    def _segment(self, out_len: int, patch_len: int) -> Generator[None, None, None]:
        from detools.bsdiff import add_bytes

        start = self.consumed
        first = (yield from self._exactly(1))[0]
        patch_type, comp = first >> 4 & 0x7, first & 0xF
        if patch_type != 0 or comp not in COMPRESSION_NAMES:
            raise PackageError(f"segment patch type {patch_type}, compression {comp}: not a sequential patch")
        to_size = yield from self._raw_size()
        if to_size != out_len:
            raise PackageError(f"segment patch makes {to_size} bytes, its segment says {out_len}")
        left = patch_len - (self.consumed - start)
        if left < 0:
            raise PackageError("segment patch shorter than its header")
        stream = _Stream(self, comp, left)
        if (yield from stream.size()) != 0:
            raise PackageError("segment patch uses a data format (not supported)")
        end = self.out_pos + out_len
        from_pos = 0
        while self.out_pos < end:
            n = yield from stream.size()
            if n < 0 or self.out_pos + n > end:
                raise PackageError("segment diff runs past its end")
            while n:
                k = min(n, PIECE)
                diff = yield from stream.read(k)
                if from_pos < 0 or from_pos + k > self.base_size:
                    raise PackageError("segment patch reads outside its base")
                yield from self._emit(add_bytes(diff, self.read_base(from_pos, k)))
                from_pos += k
                n -= k
            n = yield from stream.size()
            if n < 0 or self.out_pos + n > end:
                raise PackageError("segment extra data runs past its end")
            while n:
                k = min(n, PIECE)
                yield from self._emit((yield from stream.read(k)))
                n -= k
            from_pos += yield from stream.size()
        yield from stream.close()

    def _raw_size(self) -> Generator[None, None, int]:
        return (yield from _read_size(lambda: self._exactly(1)))

    def _emit(self, data: bytes) -> Generator[bytes, None, None]:
        self.out_pos += len(data)
        yield data


def _read_size(read1) -> Generator[None, None, int]:
    """detools' size encoding: 6 bits and a sign in the first byte, 7 bits in each next."""
    b = (yield from read1())[0]
    signed, value, shift = b & 0x40, b & 0x3F, 6
    while b & 0x80:
        if shift > 63:
            raise PackageError("size field too long")
        b = (yield from read1())[0]
        value |= (b & 0x7F) << shift
        shift += 7
    return -value if signed else value


class _Stream:
    """One segment's compressed stream: decompressed on demand from the applier's input."""

    def __init__(self, applier: Applier, comp: int, length: int):
        from detools.compression.heatshrink import HeatshrinkDecompressor
        from detools.compression.none import NoneDecompressor

        self.a = applier
        self.left = length  # compressed bytes not yet taken from the input
        self.pending = b""
        self.head = b""  # the stream's first bytes, until its RAM need is known
        if comp == COMPRESSIONS["lzma"]:
            h, most = applier.header, applier.max_ram
            limit = min(x for x in (h.ram if h else None, most, 1 << 26) if x is not None)
            # The dictionary is checked against the declared RAM before it is allocated; the
            # limit is the backstop (plus the decoder's own tables).
            self.dec = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE, memlimit=limit + (1 << 20))
            self.first = True
        elif comp == COMPRESSIONS["heatshrink"]:
            self.dec = HeatshrinkDecompressor(length)
            self.first = True
        else:
            self.dec = NoneDecompressor(length)
            self.first = False
        self.comp = comp
        # heatshrink's decoder here hands back everything its input makes, and a backreference
        # can expand 64-fold: 64 bytes in keeps one output under a piece.  lzma is asked for
        # at most what is read, so its input may be a piece.
        self.quantum = HEATSHRINK_QUANTUM if comp == COMPRESSIONS["heatshrink"] else PIECE

    def _input(self) -> Generator[None, None, bytes]:
        if self.left <= 0:
            raise PackageError("segment patch data ends early")
        data = yield from self.a._some(min(self.left, self.quantum))
        self.left -= len(data)
        if self.first:
            self.head += data[:5]
            if len(self.head) >= 5 or self.comp != COMPRESSIONS["lzma"]:
                self._check_ram(self.head)
        return data

    def _check_ram(self, data: bytes) -> None:
        """A segment may not ask for more decompressor state than its package declared."""
        self.first = False
        h = self.a.header
        declared = h.ram if h is not None else None
        if self.comp == COMPRESSIONS["lzma"] and len(data) >= 5:
            need = decoder_ram(self.comp, int.from_bytes(data[1:5], "little"))
        elif self.comp == COMPRESSIONS["heatshrink"]:
            need = decoder_ram(self.comp, (data[0] >> 4) + 4)
        else:
            return
        if declared is not None and need > declared:
            raise PackageError(f"segment needs {need} bytes of decompressor state, the package declared {declared}")
        if self.a.max_ram is not None and need > self.a.max_ram:
            raise PackageError(f"segment needs {need} bytes of RAM to decompress, more than {self.a.max_ram}",
                               "package_needs_ram")

    def read(self, n: int) -> Generator[None, None, bytes]:
        parts, want = [], n
        while want:
            if self.pending:
                take = self.pending[:want]
                self.pending = self.pending[want:]
            else:
                if self.dec.eof:
                    raise PackageError("segment patch data ends early")
                data = (yield from self._input()) if self.dec.needs_input else b""
                take = self.dec.decompress(data, want)
            parts.append(take)
            want -= len(take)
        return b"".join(parts)

    def size(self) -> Generator[None, None, int]:
        return (yield from _read_size(lambda: self.read(1)))

    def close(self) -> Generator[None, None, None]:
        """Every compressed byte taken, and none of them made more data than was used."""
        while self.left > 0:
            data = yield from self._input()
            if self.dec.eof:
                raise PackageError("bytes after the end of a segment's patch data")
            if self.dec.decompress(data, 1):
                raise PackageError("segment patch has more data than its image bytes")
        if not self.dec.eof and self.dec.decompress(b"", 1):
            raise PackageError("segment patch has more data than its image bytes")
        if not self.dec.eof:
            raise PackageError("segment patch data ends early")


def apply_package(package: bytes, base: bytes | None = None, max_ram: int | None = None) -> bytes:
    """The image ``package`` rebuilds from ``base`` (checked like a device checks it)."""
    base = base or b""
    h = parse_header(package)
    if h is None:
        raise PackageError("package ends inside its header")
    check_base(h, len(base), hashlib.sha256(base).digest())  # before a byte is applied
    a = Applier(lambda pos, n: base[pos : pos + n], len(base), max_ram)
    image = b"".join(a.feed(package))
    if not a.done:
        raise PackageError("package ends early")
    check_image(h, len(image), zlib.crc32(image), hashlib.sha256(image).digest())
    return image


def check_base(h: Header, size: int, sha256: bytes) -> None:
    if h.delta and (size != h.base_size or sha256 != h.base_sha256):
        raise PackageError(f"delta for base {h.base_version or '?'} ({h.base_size} bytes, "
                           f"SHA-256 {h.base_sha256.hex()[:16]}...) does not apply to this image", "package_base_mismatch")


def check_image(h: Header, size: int, crc32: int, sha256: bytes) -> None:
    if (size, crc32, sha256) != (h.image_size, h.image_crc32, h.image_sha256):
        raise PackageError("the rebuilt image does not match the package's length, CRC-32 and SHA-256",
                           "package_image_mismatch")
