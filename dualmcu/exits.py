"""The exit codes of every dualmcu command, in one table (docs/cli.md prints it)."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from enum import IntEnum
from typing import Iterator


class ExitCode(IntEnum):
    OK = 0  # the job was done: an update confirmed, nothing found, a file written
    FAILED = 1  # the job ended with a verdict against it: update failed, failure found, image refused
    USAGE = 2  # bad arguments, options or input files (click's own code for usage errors)
    IO = 3  # a port, a peer or a child process could not be used
    TIMEOUT = 4  # no verdict within the time allowed
    PAUSED = 10  # a fleet rollout paused by a health gate
    STOPPED = 11  # a fleet rollout stopped by the operator (or its build blocklisted)
    POWER_CUT = 75  # the emulated power failed mid-operation: start the process again
    INTERRUPTED = 130  # stopped by Ctrl-C
    TERMINATED = 143  # stopped by SIGTERM (128 + 15, as a shell reports a process it ended)


# Each code's meaning: a short phrase for the --help epilog, and the full text for docs/cli.md.
SHORT = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the job ended against it",
    ExitCode.USAGE: "bad arguments, option values or input files (nothing was started)",
    ExitCode.IO: "a port, a peer or a child process could not be used",
    ExitCode.TIMEOUT: "no verdict within --timeout",
    ExitCode.PAUSED: "a fleet rollout paused by a health gate",
    ExitCode.STOPPED: "a fleet rollout stopped or its build blocklisted",
    ExitCode.POWER_CUT: "the emulated power was cut (--power-cut-*)",
    ExitCode.INTERRUPTED: "stopped by Ctrl-C",
    ExitCode.TERMINATED: "stopped by SIGTERM",
}

MEANING = {
    ExitCode.OK: "success: the update was confirmed, nothing was found, the file was written",
    ExitCode.FAILED: "the job ended against it: the update failed or rolled back, the fuzzer confirmed a failure, verify refused the image",
    ExitCode.USAGE: "bad arguments, option values or input files (nothing was started)",
    ExitCode.IO: "a port, a peer or a child process could not be used",
    ExitCode.TIMEOUT: "no verdict within --timeout",
    ExitCode.PAUSED: "`dualmcu fleet`: a health gate paused the rollout",
    ExitCode.STOPPED: "`dualmcu fleet`: the operator stopped the rollout, or blocklisted its build",
    ExitCode.POWER_CUT: "the emulated power was cut (--power-cut-*): start the process again to see the device come back",
    ExitCode.INTERRUPTED: "stopped by Ctrl-C: the command cleans up, and says what it had done "
                          "where it can (`run` keeps its work files, `fuzz` saves its findings "
                          "unconfirmed)",
    ExitCode.TERMINATED: "stopped by SIGTERM (`kill`, `timeout`, a CI job's end), handled as "
                         "Ctrl-C is: a job cut short never ends 0, which would read as a success. "
                         "`ncp` and `primary` end with an `exit` event saying `terminated` (or "
                         "`interrupted`), `link` with its summary; a `fleet --serve` whose rollout "
                         "had ended keeps the rollout's code",
}


def say_error(text: str) -> None:
    """The one error line of every command, in click's own style (``Error: ...`` on stderr), so
    a refusal reads the same whether click or the project found it."""
    print(f"Error: {text}", file=sys.stderr, flush=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is: a KeyboardInterrupt, so every place that stops cleanly on
    Ctrl-C does so on `kill` too."""


# Set by SIGTERM's handler, and never cleared: the exception it raises can be swallowed.  Python
# runs a signal's handler between any two bytecodes of the main thread, and when those belong to
# a weakref callback or a __del__ (a Dask cluster runs many), the exception is printed as
# "Exception ignored in ..." and lost: a `fleet --serve` kept serving 77 minutes after one
# SIGTERM.  Loops that must end on it ask :func:`check_terminated` at their safe points.
TERMINATED_EVENT = threading.Event()


def check_terminated() -> None:
    """Raise :class:`Terminated` again if SIGTERM came, whether or not its first raise landed."""
    if TERMINATED_EVENT.is_set():
        raise Terminated


def wait_for_a_stop() -> None:
    """Wait until Ctrl-C or SIGTERM (`fleet --serve` keeps its dashboard up this way)."""
    TERMINATED_EVENT.wait()
    raise Terminated


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within it, SIGTERM raises :class:`Terminated`.  Without it a command killed by `timeout`
    or at a CI job's end vanished mid-sentence: `dualmcu run` left its sides and work directory
    without a word, `dualmcu fuzz` lost what it had found, a file being written stayed half
    made beside its target."""
    def raise_terminated(*_) -> None:
        TERMINATED_EVENT.set()
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_code(e: KeyboardInterrupt) -> ExitCode:
    """The exit code of a job stopped by Ctrl-C or SIGTERM."""
    return ExitCode.TERMINATED if isinstance(e, Terminated) else ExitCode.INTERRUPTED


def stopped_word(e: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(e, Terminated) else "interrupted"
