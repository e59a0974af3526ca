"""What many test files need: a provisioned in-memory flash and the image it runs.

One place for them, so that every test builds its devices the same way.
"""

from __future__ import annotations

from dualmcu.image.firmware import build_image, make_info
from dualmcu.primary.boot import Bootloader, BootState, BootStore
from dualmcu.primary.flash import Flash, Geometry

BUILD = "Jan  1 2026 00:00:00"  # fixed build stamps: the same seed, the same bytes


def tagged(version: str, fw_type: str, size: int, build: str = BUILD, **kw) -> bytes:
    """A tagged test image (deterministic filler)."""
    return build_image(make_info(version, fw_type, build=build), size, **kw)


def provisioned(image: bytes, slot: int = 512 * 1024, page: int = 4096) -> Flash:
    """A blank in-memory flash with ``image`` as its factory firmware in slot A."""
    f = Flash.in_memory(Geometry(page, slot))
    Bootloader(f).provision(image)
    return f


def active_image(flash: Flash) -> tuple[BootState, bytes]:
    """The boot state and the bytes of the image in the active slot."""
    st = BootStore(flash).load()
    return st, flash.read(flash.geometry.slot_offset(st.active), st.slots[st.active].length)
