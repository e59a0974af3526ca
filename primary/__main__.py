"""python -m primary: the emulated primary MCU alone (the same as `dualmcu primary`)."""

from dualmcu.cli import primary

primary(prog_name="python -m primary")
