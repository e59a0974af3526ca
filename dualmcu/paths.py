"""Per-user default locations, from platformdirs: the right place on Linux, macOS and Windows."""

from __future__ import annotations

import os

import platformdirs

APP = "dualmcu"


def data_dir() -> str:
    return platformdirs.user_data_dir(APP, appauthor=False)


def default_flash() -> str:
    """Where `dualmcu primary` keeps its flash file when --flash is not given."""
    return os.path.join(data_dir(), "primary.flash")


def default_store() -> str:
    """Where `dualmcu ncp` keeps prefetched images when --store is not given."""
    return os.path.join(platformdirs.user_cache_dir(APP, appauthor=False), "ncp-store")


def shown(path: str) -> str:
    """``path`` as help texts and generated docs show it: the home directory as ~."""
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home and home != "/" and path.startswith(home + os.sep) else path
