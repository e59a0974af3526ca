"""What the benchmark scripts share; standard library only, so that the peer-framing worker can
use it from its own environment."""

from __future__ import annotations

import time
from typing import Callable


def rate(fn: Callable[[], object], nbytes: int, seconds: float) -> float:
    """MB/s of ``nbytes`` per call of ``fn``, calling it for at least ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return nbytes * n / dt / 1e6


def report(rows: list[dict], as_json: bool, title: str, head: list[str], cells) -> None:
    """Rows as JSON lines, or as a titled markdown table (``cells(row)`` gives one row's cells)."""
    import json

    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    if title:
        print(title)
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in cells(r)) + " |")


def as_installed() -> None:
    """Run the commands this benchmark starts as an installed package runs: pip compiles the
    modules as it installs them, so each process loads cached byte code.  With
    PYTHONDONTWRITEBYTECODE set in the shell, every process compiled every module it imports
    instead: 0.14 s more for a 4 KiB `dualmcu run` (1.40 against 1.26 s, measured)."""
    import compileall
    import importlib
    import os

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the processes started from here
    for name in ("dualmcu", "dualmcu.framing", "dualmcu.rpc", "dualmcu.image", "dualmcu.ncp",
                 "dualmcu.primary"):
        for folder in importlib.import_module(name).__path__:
            compileall.compile_dir(folder, quiet=1)
