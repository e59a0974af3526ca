"""`dualmcu fuzz`: fuzz a live peer from the interface table."""

from __future__ import annotations

import sys
import time

import click

from .common import FRAMING, JSON, IOFailure, emit_json, main


@main.command()
@click.option("-p", "--port", envvar="DUALMCU_PORT", show_envvar=True, help="Port of the target (path or pyserial URL).")
@click.option("--target-cmd", help="Run the target yourself: a command with {port} for its port; it is restarted when it dies.")
@click.option("--reset-cmd", help="Shell command that resets a real target that stopped answering.")
@click.option("--target", "target_side", type=click.Choice(["primary", "ncp"]), required=True, help="Which side the target is.")
@FRAMING
@click.option("-b", "--baud", type=click.IntRange(300, 10_000_000), default=38400, show_default=True, envvar="DUALMCU_BAUD", show_envvar=True)
@click.option("--examples", type=click.IntRange(1), default=200, show_default=True, help="Cases to try (before shrinking).")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed tries the same cases.")
@click.option("--out", type=click.Path(dir_okay=False), default="fuzz-failure.json", show_default=True, help="Where a failing case is saved.")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False), help="Play a saved case again instead of fuzzing.")
@JSON
def fuzz(port, target_cmd, reset_cmd, target_side, framing, baud, examples, seed, out, replay, as_json) -> None:
    """Fuzz a live peer (real firmware or an emulator) from the interface table.

    Cases mix valid calls with boundary arguments, malformed arguments, unknown uids, bad
    CRCs, oversize and truncated frames, garbage and, against a primary, OTA sequences out of
    order. After each case the target must answer ping and hasUID, acknowledge a resend of
    its last chunk and refuse writes at wrong offsets. A failure is shrunk to a minimal case,
    printed as the exact bytes sent and saved to --out. Exit 0: nothing found; 1: a failure
    (saved); 3: no target to talk to.

    \b
      dualmcu fuzz --target primary --port /dev/ttyUSB0 --framing blynk
      dualmcu fuzz --target primary --target-cmd "dualmcu primary --port {port} --flash f.bin --provision app.bin"
    """
    from dualmcu import fuzz as F
    from dualmcu.shell import PortError

    if bool(port) == bool(target_cmd):
        raise click.UsageError("give --port or --target-cmd (one of them)")
    say = emit_json if as_json else (lambda obj: click.echo(" ".join(f"{k}={v}" for k, v in obj.items()), err=True))
    target = F.Target(port, baud, target_cmd, reset_cmd)
    try:
        p = target.open()
    except PortError as e:
        target.close()
        raise IOFailure(str(e)) from None
    session = F.Session(p, framing, target_side)
    try:
        session.pump(0.5 if target_cmd else 0.1)
        if replay:
            problem = F.replay(session, replay)
            say({"event": "replay", "file": replay, "failure": problem})
            sys.exit(1 if problem else 0)
        t0 = time.monotonic()

        def progress(n, problem):
            if as_json:
                say({"event": "case", "n": n, "failure": problem})
            elif problem or n % 25 == 0:
                say({"case": n, "failure": problem})

        try:
            found, n = F.fuzz(session, target, examples, seed, progress)
        except F.TargetDown as e:
            raise IOFailure(str(e)) from None
        result = {"event": "result", "cases": n, "seconds": round(time.monotonic() - t0, 2),
                  "target_restarts": target.restarts, "failure": found.reason if found else None}
        if found:
            F.save(out, found, {"target": target_side, "framing": framing, "baud": baud, "seed": seed})
            result.update(saved=out, steps=len(found.steps))
        say(result)
        if found and not as_json:
            click.echo(f"minimal failing case ({len(found.steps)} steps): {found.reason}")
            for s in found.steps:
                click.echo(f"  {s.what:<40} {s.data.hex(' ')}")
            click.echo(f"saved to {out}; play it again with: dualmcu fuzz --replay {out} ...")
        sys.exit(1 if found else 0)
    finally:
        p.close()
        target.close()
