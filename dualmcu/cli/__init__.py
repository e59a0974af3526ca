"""The ``dualmcu`` command line: a thin layer over the cores and shells.

One module per command group; importing them registers their commands on :data:`main`.
"""

from __future__ import annotations

from . import docs, files, fleeting, fuzzing, sides, signed, wire  # noqa: F401 -- registers the commands
from .common import main

__all__ = ["main"]
