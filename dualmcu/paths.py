"""Per-user default locations, from platformdirs: the right place on Linux, macOS and Windows;
and how an output file is written whole."""

from __future__ import annotations

import os
import stat
import tempfile

import platformdirs

from dualmcu.image.inputs import removed_on_failure

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


def write_whole(path: str, data: bytes, mode: int | None = None, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` whole or not at all (OSError; FileExistsError when
    ``exclusive`` and a file has the name). True when ``path`` is a device or FIFO
    (/dev/stdout), written as it is.

    The bytes go to a new file beside ``path`` and take its name only once all of them are
    written: a full disk or an error midway leaves the old file as it was (a firmware tagged
    in place, say) and no part behind, where writing in place left it cut short. A link is
    followed (its target is replaced); the old file's mode is kept. A folder that takes no new
    file (its owner's, holding a file the user may write) has the file written in place."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and exclusive:
        raise FileExistsError(path)
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        with open(path, "wb") as f:
            f.write(data)
        return True
    target = os.path.realpath(path) if st is not None and os.path.islink(path) else path
    if mode is None:
        mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part",
                                   dir=os.path.dirname(target) or ".")
    except PermissionError:
        if st is None or exclusive or not os.access(target, os.W_OK):
            raise
        # A folder that takes no new file, holding a file its owner may write: in place, as
        # the only way there is.
        with open(target, "wb") as f:
            f.write(data)
        return False
    with removed_on_failure(tmp):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if exclusive:
            _link_new(tmp, target)
        else:
            os.replace(tmp, target)
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _link_new(tmp: str, path: str) -> None:
    """Give ``tmp`` the name ``path`` only if no file has it (FileExistsError), atomically where
    the file system has hard links; a FAT stick has none, and is checked, then renamed."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)
