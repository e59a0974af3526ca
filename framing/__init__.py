"""Framing profiles: how RPC messages become bytes on a UART and back.

``get_profile("cobs")`` (the native profile: COBS with a CRC-32) or ``get_profile("blynk")``
(byte for byte the Blynk.NCP UART framing).  The shared interface lives in :mod:`.base`.
"""

from __future__ import annotations

from .base import (
    BAD_CRC,
    BAD_ENCODING,
    DROP_REASONS,
    EMPTY,
    OVERSIZE,
    RAW_KEEP,
    TRUNCATED,
    CountingDecoder,
    Decoder,
    Dropped,
    Frame,
    FramingError,
    Profile,
    check_message,
    new_stats,
)
from .blynk import BlynkProfile
from .native import CobsProfile

PROFILES = {"cobs": CobsProfile, "blynk": BlynkProfile}
PROFILE_NAMES = tuple(PROFILES)

__all__ = [
    "BAD_CRC", "BAD_ENCODING", "DROP_REASONS", "EMPTY", "OVERSIZE", "RAW_KEEP", "TRUNCATED",
    "CountingDecoder", "Decoder", "Dropped", "Frame", "FramingError", "Profile", "check_message",
    "new_stats", "BlynkProfile", "CobsProfile", "PROFILES", "PROFILE_NAMES", "get_profile",
]


def get_profile(name: str, max_message: int | None = None) -> Profile:
    """The framing profile called ``name`` ('cobs' or 'blynk')."""
    try:
        cls = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown framing {name!r}; choose from {', '.join(PROFILES)}") from None
    return cls() if max_message is None else cls(max_message=max_message)
