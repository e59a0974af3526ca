"""dualmcu: emulate both halves of a Blynk.NCP dual-MCU device and the UART between them.

The public Python API (docs/api.md) is importable from here: ``from dualmcu import Ncp``.  It is
loaded on first use, so the command line does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("Ncp", "Primary", "Link", "Outcome", "Misbehave", "SideError", "make_image", "make_package",
        "flash_state", "simulate")
__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # for type checkers and editors: the names as they are
    from .api import (Link, Misbehave, Ncp, Outcome, Primary, SideError, flash_state, make_image,  # noqa: F401
                      make_package, simulate)


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dualmcu' has no attribute {name!r}")
