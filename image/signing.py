"""Signed firmware images: Ed25519 over the image's SHA-256, a key id, a security counter and
the targets it may be installed on, in a block appended to the image.

    image  = body ‖ block
    body   = the firmware as built, tag included
    block  = "DMSG" · u8 version (1 or 2) · key_id[8] · u32 counter · u8 n · n × (u8 len · target)
             · [version 2: u8 len · minimum bootloader version]
             · sha256(body)[32] · signature[64] · u16 block length · "DMSG"

Version 2 adds the oldest bootloader the image needs; an image signed without one gets a
version 1 block, which every reader takes.  Targets name the product and hardware revision
the image may be installed on ("dualmcu/1"), so both compatibility checks are signed.

All integers little-endian.  ``key_id`` is the first 8 bytes of the SHA-256 of the raw 32-byte
public key.  The signature is Ed25519 over ``"dualmcu-image-v1" ‖`` the block from its first
"DMSG" through the body's digest, so the counter and the targets are signed along with the
firmware.  The block's length and magic at the very end let a reader find it from the end.

Nothing here changes the Blynk wire protocol: a signed image is just a file the NCP offers.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# cryptography is imported by the functions that use it, not here: reading a signature block
# needs none of it, and a primary that trusts no key should not carry its 7 MiB.

MAGIC = b"DMSG"
ANY = "*"  # the target of an image signed for every product
VERSION = 1  # a block without a minimum bootloader
VERSION_BOOTLOADER = 2  # a block with one
CONTEXT = b"dualmcu-image-v1"
TRAILER = struct.Struct("<H4s")
MAX_BLOCK = 2048


class SignError(ValueError):
    pass


@dataclass(frozen=True)
class Signature:
    key_id: bytes
    counter: int
    targets: tuple[str, ...]
    body_sha256: bytes
    signature: bytes
    signed: bytes  # the bytes the signature covers (after the context)
    body_length: int
    min_bootloader: str | None = None


def key_id(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8]


def generate() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv = Ed25519PrivateKey.generate()
    return (
        priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        priv.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def load_private(pem: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = _loaded("private", lambda: serialization.load_pem_private_key(pem, password=None),
                  "an unencrypted PEM private key")
    if not isinstance(key, Ed25519PrivateKey):
        raise SignError(f"the private key is {_kind(key)}: images are signed with Ed25519 keys only "
                        "(dualmcu keygen makes one)")
    return key


def load_public(pem: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = _loaded("public", lambda: serialization.load_pem_public_key(pem), "a PEM public key")
    if not isinstance(key, Ed25519PublicKey):
        raise SignError(f"the public key is {_kind(key)}: images are signed with Ed25519 keys only "
                        "(dualmcu keygen makes one)")
    return key


def _loaded(which: str, load, expected: str):
    """The key ``load`` reads, or one line: a PEM of a kind the library cannot read at all (an
    EC key on a curve it does not support raises its own exception type) names what it is."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return load()
    except UnsupportedAlgorithm as e:
        raise SignError(f"the {which} key is of a kind that cannot be read ({e}): images are signed "
                        "with Ed25519 keys only (dualmcu keygen makes one)") from None
    except (ValueError, TypeError) as e:
        raise SignError(f"not {expected}: {e}") from None


def _kind(key) -> str:
    """What a key that is not Ed25519 is, in words: 'an RSA key', 'an EC key on secp256r1'."""
    curve = getattr(key, "curve", None)
    if curve is not None:
        return f"an EC key on {curve.name}"
    name = type(key).__name__.removeprefix("_").removesuffix("PrivateKey").removesuffix("PublicKey")
    return f"an {name} key" if name[:1] in "AEIOURX" else f"a {name} key"


def sign(body: bytes, private: Ed25519PrivateKey, counter: int, targets: list[str],
         min_bootloader: str | None = None) -> bytes:
    """``body`` with its signature block appended."""
    if find_block(len(body), lambda off, n: body[off : off + n]) is not None:
        raise SignError("the image is signed already; sign the unsigned firmware")
    if not 0 <= counter <= 0xFFFFFFFF:
        raise SignError("the counter must fit 32 bits")
    if not targets or len(targets) > 32:
        raise SignError("give between 1 and 32 targets (product/hardware-revision, or * for any)")
    version = VERSION if min_bootloader is None else VERSION_BOOTLOADER
    head = MAGIC + bytes([version]) + key_id(private.public_key()) + counter.to_bytes(4, "little")
    head += bytes([len(targets)])
    for t in targets:
        raw = t.encode("utf-8")
        if not 0 < len(raw) < 256:
            raise SignError(f"target {t!r} must be 1 to 255 bytes")
        head += bytes([len(raw)]) + raw
    if min_bootloader is not None:
        raw = min_bootloader.encode("utf-8")
        if not 0 < len(raw) < 256 or not min_bootloader.isprintable():
            raise SignError(f"minimum bootloader {min_bootloader!r} must be 1 to 255 printable bytes")
        head += bytes([len(raw)]) + raw
    signed = head + hashlib.sha256(body).digest()
    block = signed + private.sign(CONTEXT + signed)
    block += TRAILER.pack(len(block) + TRAILER.size, MAGIC)
    return body + block


def find_block(length: int, read: Callable[[int, int], bytes]) -> Signature | None:
    """Parse the signature block at the end of an image of ``length`` bytes (read through
    ``read(offset, n)``); None when there is none or it is malformed."""
    if length < TRAILER.size:
        return None
    size, magic = TRAILER.unpack(read(length - TRAILER.size, TRAILER.size))
    if magic != MAGIC or not 4 + 1 + 8 + 4 + 1 + 32 + 64 + TRAILER.size <= size <= min(MAX_BLOCK, length):
        return None
    block = read(length - size, size)
    if block[:4] != MAGIC or block[4] not in (VERSION, VERSION_BOOTLOADER):
        return None
    pos = 5
    kid, counter = block[pos : pos + 8], int.from_bytes(block[pos + 8 : pos + 12], "little")
    pos += 12
    n = block[pos]
    pos += 1
    targets = []
    for _ in range(n):
        if pos >= len(block):
            return None
        ln = block[pos]
        targets.append(block[pos + 1 : pos + 1 + ln].decode("utf-8", "replace"))
        pos += 1 + ln
    min_bootloader = None
    if block[4] == VERSION_BOOTLOADER:
        if pos >= len(block):
            return None
        ln = block[pos]
        min_bootloader = block[pos + 1 : pos + 1 + ln].decode("utf-8", "replace")
        pos += 1 + ln
    if pos + 32 + 64 + TRAILER.size != size:
        return None
    digest, sig = block[pos : pos + 32], block[pos + 32 : pos + 96]
    return Signature(kid, counter, tuple(targets), digest, sig, block[: pos + 32], length - size, min_bootloader)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # "ok" or why not: unsigned, unknown_key, bad_signature, digest_mismatch, wrong_target,
    # counter_too_low, bootloader_too_old
    signature: Signature | None = None

    def __bool__(self) -> bool:
        return self.ok


def verify(length: int, read: Callable[[int, int], bytes], keys: dict[bytes, Ed25519PublicKey],
           target: str | None = None, min_counter: int = 0, block: int = 1 << 16,
           any_target: bool = False, bootloader: str | None = None) -> Verdict:
    """Check a signed image read through ``read``; its body is hashed in ``block``-sized reads."""
    sig = find_block(length, read)
    if sig is None:
        return Verdict(False, "unsigned")
    public = keys.get(sig.key_id)
    if public is None:
        return Verdict(False, "unknown_key", sig)
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(sig.signature, CONTEXT + sig.signed)
    except InvalidSignature:
        return Verdict(False, "bad_signature", sig)
    h = hashlib.sha256()
    for pos in range(0, sig.body_length, block):
        h.update(read(pos, min(block, sig.body_length - pos)))
    if h.digest() != sig.body_sha256:
        return Verdict(False, "digest_mismatch", sig)
    if target is not None and target not in sig.targets and not (any_target and ANY in sig.targets):
        # "*" (any target) is honoured only where the verifier says so: an image signed for
        # every product must not install on a device that was never meant to take it.
        return Verdict(False, "wrong_target", sig)
    if sig.counter < min_counter:
        return Verdict(False, "counter_too_low", sig)
    if bootloader is not None and sig.min_bootloader is not None:
        from .firmware import version_key

        if version_key(bootloader) < version_key(sig.min_bootloader):
            return Verdict(False, "bootloader_too_old", sig)
    return Verdict(True, "ok", sig)


def verify_bytes(image: bytes, keys: dict[bytes, Ed25519PublicKey], target: str | None = None,
                 min_counter: int = 0, any_target: bool = False, bootloader: str | None = None) -> Verdict:
    return verify(len(image), lambda off, n: image[off : off + n], keys, target, min_counter,
                  any_target=any_target, bootloader=bootloader)


def load_keys(paths: list[str]) -> dict[bytes, Ed25519PublicKey]:
    from .inputs import MAX_KEY, InputFileError, read_input

    keys = {}
    for p in paths:
        try:
            pub = load_public(read_input(p, "public key", MAX_KEY))
        except InputFileError as e:
            raise SignError(str(e)) from None
        keys[key_id(pub)] = pub
    return keys
