"""The exit codes of every dualmcu command, in one table (docs/cli.md prints it)."""

from __future__ import annotations

from enum import IntEnum


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
    ExitCode.INTERRUPTED: "stopped by Ctrl-C",
}
