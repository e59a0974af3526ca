"""Reading the files a user names (images, keys, fleet files), bounded; and the part file an
output is written to before it takes its name.

A path may name anything: a regular file, a pipe (``--key <(pass show key)``), a directory,
or a device that never ends (/dev/zero, a tty).  Each read here takes at most its limit and
says in one line why a file cannot be used, instead of filling the memory or waiting forever
on a device.  Pipes and FIFOs are read, up to the limit; devices and sockets are refused.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from typing import Iterator

MAX_IMAGE = 1 << 30  # what the largest slot holds (image lengths travel as u32)
MAX_KEY = 1 << 16  # a PEM key is a few hundred bytes
MAX_TEXT = 1 << 26  # a fleet's population or plan file


class InputFileError(ValueError):
    """A named file that cannot be used: the message is one line for the user."""


def kind_of(mode: int) -> str | None:
    """What a path that is not a regular file is ("a pipe", "a device"...), None for a file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def read_input(path: str | os.PathLike, what: str, limit: int, *, regular: bool = False) -> bytes:
    """The whole of ``path``, at most ``limit`` bytes.  ``regular``: the file is read again
    later (by another process), so a pipe, whose bytes can be read once, is refused too.

    What the path names is looked at before it is opened: opening a device can have effects
    of its own (a serial port's DTR), and opening a FIFO waits for its writer."""
    try:
        st = os.stat(path)
        kind = kind_of(st.st_mode)
        if kind is not None and (kind != "a pipe" or regular):  # a pipe is read, once
            raise InputFileError(f"{what} {path} is {kind}, not a file")
        if st.st_size > limit:
            # Before a byte is read: a huge file costs nothing.
            raise InputFileError(f"{what} {path} has {st.st_size:,} bytes, "
                                 f"more than the {limit:,} it may have")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InputFileError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > limit:
        raise InputFileError(f"{what} {path} has more than the {limit:,} bytes it may have")
    return data


@contextmanager
def removed_on_failure(part: str) -> Iterator[None]:
    """Remove ``part`` (a file being written beside its target) when the block fails, then let
    the failure go on: an output that did not land leaves nothing behind, where a part left on
    a full disk would keep the disk full after the failure is reported."""
    try:
        yield
    except BaseException:
        try:
            os.unlink(part)
        except OSError:
            pass
        raise
