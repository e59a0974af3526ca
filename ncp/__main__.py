"""python -m ncp: the emulated NCP alone (the same as `dualmcu ncp`)."""

from dualmcu.cli import ncp

ncp(prog_name="python -m ncp")
