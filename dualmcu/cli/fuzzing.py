"""`dualmcu fuzz`: fuzz a live peer from the interface table."""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections import Counter

import click
from click.core import ParameterSource

from dualmcu.framing import PROFILE_NAMES

from .common import BAUD, FRAMING, JSON, InputError, IOFailure, Size, emit_json, main, seconds


@main.command()
@click.option("-p", "--port", envvar="DUALMCU_PORT", show_envvar=True, help="Port of the target (path or pyserial URL).")
@click.option("--target-cmd", help="Run the target yourself: a command with {port} for its port; it is restarted when it dies.")
@click.option("--reset-cmd", help="Shell command that resets a real target that stopped answering (and before each confirming replay).")
@click.option("--target", "target_side", type=click.Choice(["primary", "ncp"]), help="Which side the target is (with --replay: the case file's, unless given).")
@FRAMING
@BAUD
@click.option("--examples", type=click.IntRange(1), default=200, show_default=True, help="Cases to try (before shrinking).")
@click.option("--duration", type=seconds(), help="Stop trying new cases after this many seconds (and after --examples, whichever comes first).")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed tries the same cases.")
@click.option("--db", type=click.Path(file_okay=False), help="Directory of Hypothesis's example database: a campaign replays the failures it knows first.")
@click.option("--confirm", "confirm_times", type=click.IntRange(1, 100), default=3, show_default=True, help="Replays of each failure class against a fresh target before it is reported.")
@click.option("--out", type=click.Path(file_okay=False), default="fuzz-findings", show_default=True, help="Directory where each failure class's case is saved.")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False), help="Play a saved case again instead of fuzzing; its target side, framing and baud rate are the file's unless given.")
@click.option("--ping-wait", type=seconds(), default=3.2, show_default=True, help="Seconds a liveness check waits for ping answers before the target counts as dead (a real MCU may be busy in a call of its own).")
@click.option("--rss-growth", type=Size(1 << 40), default="1M", show_default=True,
              help="With --target-cmd: a case that leaves the target's resident memory bigger by more than this has leaked.")
@JSON
@click.pass_context
def fuzz(ctx, port, target_cmd, reset_cmd, target_side, framing, baud, examples, duration, seed, db, confirm_times, out,
         replay, ping_wait, rss_growth, as_json) -> None:
    """Fuzz a live peer (real firmware or an emulator) from the interface table.

    Cases mix valid calls with boundary arguments, malformed arguments, unknown uids, bad
    CRCs, oversize and truncated frames, garbage and, against a primary, OTA sequences out of
    order. The fuzzer answers the target's own calls as its peer would. After each case the
    target must answer ping and hasUID, acknowledge a resend of its last chunk and refuse
    writes at wrong offsets. A target the fuzzer runs itself (--target-cmd) is also watched
    as a process: one that exits has crashed, and one whose memory grows by more than
    --rss-growth in a case has leaked.

    Each class of failure (oracle and uid) is shrunk to a minimal case and replayed --confirm
    times against a fresh target: confirmed when every replay fails, flaky (with its rate)
    when some do. Each is saved to --out as the exact bytes sent. Exit 0: nothing confirmed;
    1: a confirmed failure; 3: no target to talk to. Stopped by Ctrl-C (130) or SIGTERM
    (143), it saves what it found so far, unconfirmed.

    \b
      dualmcu fuzz --target primary --port /dev/ttyUSB0 --framing blynk --reset-cmd "..."
      dualmcu fuzz --target primary --target-cmd "dualmcu primary --port {port} --flash f.bin --provision app.bin"
    """
    from dualmcu import fuzz as F
    from dualmcu.exits import stopped_code, stopped_word
    from dualmcu.ports import PortError

    if port and port.startswith("exec:") and not target_cmd:
        # -p 'exec:CMD {pty}', as the sides take it: the fuzzer's own runner of a target command
        # does the same (a fresh pty, restarted when it dies, its output kept).
        if "{pty}" not in port:
            raise click.BadParameter(f"{port!r} has no {{pty}}: the firmware would not know which port is its UART",
                                     param_hint="--port")
        port, target_cmd = None, port.removeprefix("exec:").replace("{pty}", "{port}")
    if bool(port) == bool(target_cmd):
        raise click.UsageError("give --port or --target-cmd (one of them)")
    if target_cmd:
        try:
            shlex.split(target_cmd)
        except ValueError as e:
            raise click.BadParameter(f"{target_cmd!r}: {e}", param_hint="--target-cmd") from None
        if "{port}" not in target_cmd:
            raise click.BadParameter(f"{target_cmd!r} has no {{port}}: the target would not know "
                                     "the port the fuzzer listens on", param_hint="--target-cmd")
    steps = None
    if replay:
        try:
            steps, meta = F.read_case(replay)  # a bad file is refused before any port is opened
        except F.CaseFileError as e:
            raise InputError(str(e)) from None
        given = lambda name: ctx.get_parameter_source(name) is not ParameterSource.DEFAULT  # noqa: E731
        target_side = target_side or meta.get("target")
        framing = framing if given("framing") or meta.get("framing") not in PROFILE_NAMES else meta["framing"]
        baud = baud if given("baud") or not isinstance(meta.get("baud"), int) else meta["baud"]
    if target_side is None:
        raise click.UsageError("give --target primary or --target ncp: which side the target is")
    say = emit_json if as_json else (lambda obj: click.echo(" ".join(f"{k}={v}" for k, v in obj.items()), err=True))
    target = F.Target(port, baud, target_cmd, reset_cmd)
    try:
        p = target.open()
    except (PortError, F.TargetDown) as e:
        target.close()
        raise IOFailure(str(e)) from None
    session = F.Session(p, framing, target_side, ping_wait)
    session.rss, session.exit_code, session.rss_growth = target.rss, target.exit_code, rss_growth
    try:
        if target_cmd:
            try:
                F.fresh_start(session, target, after="its start")
            except F.TargetDown as e:
                raise IOFailure(str(e)) from None
        else:
            session.pump(0.1)
        if steps is not None:
            problem = F.play(session, steps)
            say({"event": "replay", "file": replay, "failure": str(problem) if problem else None,
                 "class": problem.key if problem else None})
            sys.exit(1 if problem else 0)

        def progress(n, problem):
            if as_json:
                say({"event": "case", "n": n, "failure": str(problem) if problem else None,
                     "class": problem.key if problem else None})
            elif problem or n % 25 == 0:
                say({"case": n, "failure": problem})

        try:
            campaign = F.fuzz(session, target, examples, seed, progress, duration, db)
            restarts = target.restarts
            try:
                for finding in campaign.findings.values():
                    if campaign.stopped is None:
                        F.confirm(session, target, finding, confirm_times)
            except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the rest stay unconfirmed, saved
                campaign.stopped = e
        except F.TargetDown as e:
            raise IOFailure(str(e)) from None
        findings = sorted(campaign.findings.values(), key=lambda f: (f.verdict != "confirmed", f.problem.key))
        saved = {}
        if findings:
            try:
                os.makedirs(out, exist_ok=True)
                for f in findings:
                    path = os.path.join(out, re.sub(r"[^A-Za-z0-9_.-]+", "-", f.problem.key).strip("-") + ".json")
                    F.save(path, f, {"target": target_side, "framing": framing, "baud": baud, "seed": seed})
                    saved[f.problem.key] = path
            except OSError as e:
                raise InputError(f"cannot save findings to {out}: {e.strerror or e}") from None
        if as_json:
            for f in findings:
                say({"event": "finding", **f.summary(), "saved": saved.get(f.problem.key)})
        confirmed = [f for f in findings if f.verdict == "confirmed"]
        result = {"event": "result", "cases": campaign.cases, "seconds": round(campaign.seconds, 2),
                  "classes": len(findings), "confirmed": len(confirmed),
                  "flaky": sum(f.verdict == "flaky" for f in findings),
                  "not_reproduced": sum(f.verdict == "not_reproduced" for f in findings),
                  "target_restarts": restarts, "confirm_restarts": target.restarts - restarts}
        if campaign.stopped is not None:
            result["stopped"] = stopped_word(campaign.stopped)
            result["unconfirmed"] = sum(f.verdict == "unconfirmed" for f in findings)
        say(result)
        if findings and not as_json:
            # The confirmed lead, in full; the rest is one line (each class's case is in --out).
            for f in confirmed:
                click.echo(f"confirmed ({f.reproduced}/{f.replays} replays, seen in {f.seen} cases): "
                           f"{f.problem.key}: {f.reason}")
                for s in f.steps:
                    click.echo(f"  {s.what:<40} {s.data.hex(' ')}")
                click.echo(f"  saved to {saved[f.problem.key]}; play it again with: "
                           + replay_command(saved[f.problem.key], port, target_cmd, reset_cmd))
            rest = Counter(f.verdict for f in findings if f.verdict != "confirmed")
            if rest:
                click.echo("not confirmed: " + ", ".join(f"{n} {v.replace('_', ' ')}" for v, n in sorted(rest.items()))
                           + f" (their cases and replay counts are in {out})")
        if campaign.stopped is not None:
            sys.exit(stopped_code(campaign.stopped))
        sys.exit(1 if confirmed else 0)
    finally:
        p.close()
        target.close()


def replay_command(path: str, port: str | None, target_cmd: str | None, reset_cmd: str | None) -> str:
    """The whole command that plays a saved case again: the file names the side, the framing
    and the baud rate; the target is the one this campaign used."""
    words = ["dualmcu", "fuzz", "--replay", path]
    words += ["--target-cmd", target_cmd] if target_cmd else ["--port", port or ""]
    if reset_cmd:
        words += ["--reset-cmd", reset_cmd]
    return shlex.join(words)
