"""A primary with known bugs planted, for showing that `dualmcu fuzz` finds each of them.

    python tests/planted.py DEFECT[,DEFECT...] primary --port ... (any `dualmcu` arguments)

The bugs live here, next to the fuzzer's tests, and never in the emulator itself: this
script patches them into the classes, then runs the `dualmcu` command line as it is.

    duplicate-chunk-hazard  a resend of a chunk already written is refused (the reference
                            primary's bug: a real NCP's retry after a lost answer fails)
    racy-duplicate-hazard   the same, only when the resend arrives on a millisecond that is
                            a multiple of 5 (a bug behind a timing race)
    hang-on-empty-binary    a write with an empty chunk hangs the MCU
    crash-on-long-vpin      a virtual-pin value over 64 bytes ends the process (a remote
                            crash, as an overflowed buffer would)
    leak-on-state-change    every client_blynkStateChange keeps 2 MiB that is never freed
"""

from __future__ import annotations

import os
import sys

from dualmcu.primary.device import PrimaryDevice
from dualmcu.primary.ota import OtaReceiver
from dualmcu.rpc import DEFER
from dualmcu.rpc.events import Event

DEFECTS = ("duplicate-chunk-hazard", "racy-duplicate-hazard", "hang-on-empty-binary", "crash-on-long-vpin",
           "leak-on-state-change")
LEAK = 2 << 20
_kept: list[bytearray] = []


def plant(defects: set[str]) -> None:
    on_write, on_vpin, on_state = OtaReceiver.on_write, PrimaryDevice._on_vpin, PrimaryDevice._on_state

    def resend(self: OtaReceiver, inc) -> bool:
        """A chunk that lies wholly below the next offset is a resend."""
        t, a = self.t, inc.args
        if t is None or a["offset"] + len(a["chunk"]) > t.offset:
            return False
        if "duplicate-chunk-hazard" in defects:
            return True
        return "racy-duplicate-hazard" in defects and int(self.ep.now * 1000) % 5 == 0

    def write(self: OtaReceiver, inc):
        if not inc.args["chunk"] and "hang-on-empty-binary" in defects:
            self.emit(Event.HUNG, note="planted defect: hang on an empty write")
            self.hang()
            return DEFER
        if resend(self, inc):
            return self._refuse("write", "offset_mismatch", offset=inc.args["offset"], expected=self.t.offset)
        return on_write(self, inc)

    def vpin(self: PrimaryDevice, inc) -> None:
        if "crash-on-long-vpin" in defects and len(inc.args["value"]) > 64:
            os._exit(70)
        return on_vpin(self, inc)

    def state(self: PrimaryDevice, inc) -> None:
        if "leak-on-state-change" in defects:
            _kept.append(bytearray(b"\xa5") * LEAK)  # written, so every page is resident
        return on_state(self, inc)

    OtaReceiver.on_write = write
    PrimaryDevice._on_vpin = vpin
    PrimaryDevice._on_state = state


def main() -> None:
    defects = set(sys.argv[1].split(","))
    unknown = defects - set(DEFECTS)
    if unknown:
        sys.exit(f"unknown defect {', '.join(sorted(unknown))}; known: {', '.join(DEFECTS)}")
    plant(defects)
    from dualmcu.cli import main as cli

    cli(sys.argv[2:], prog_name="dualmcu")


if __name__ == "__main__":
    main()
