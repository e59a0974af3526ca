"""`dualmcu fleet`: rehearse a rollout over a fleet of emulated devices."""

from __future__ import annotations

import csv
import io
import json
import sys

import click

from dualmcu.exits import ExitCode, check_terminated, wait_for_a_stop

from .common import JSON, InputError, IOFailure, Number, main, read_file, write_file


@main.command()
@click.option("--demo", type=click.Choice(["good", "bad"]), help="An embedded example: 1.1.0 of a demo product, good, or failing its health check on hardware revision B.")
@click.option("--population", type=click.Path(exists=True, dir_okay=False), help="Population file (TOML, or YAML by a .yaml/.yml name): groups of devices by share (see `dualmcu docs fleet`).")
@click.option("--plan", type=click.Path(exists=True, dir_okay=False), help="Rollout plan file (TOML): canary, ramp, soak, gates, blocklist, operator actions.")
@click.option("--firmware", type=click.Path(exists=True, dir_okay=False), help="The build to roll out (a tagged image); devices start on builds of its fw-type.")
@click.option("--image-size", type=click.IntRange(4096, 1 << 24), default=64 * 1024, show_default=True, help="Size of the images devices start on.")
@click.option("--devices", type=click.IntRange(1, 10_000_000), help="Devices in the fleet (overrides the population file).")
@click.option("--seed", type=click.IntRange(0, 2**63), help="Seed of the fleet (overrides the population file): the same seed, the same result.")
@click.option("--scheduler", help="Address of a running Dask scheduler (tcp://HOST:PORT); default: a local cluster of this machine's cores.")
@click.option("--workers", type=click.IntRange(1, 1024), help="Worker processes of the local cluster (default: one per core).")
@click.option("--in-process", is_flag=True, help="Run every device in this process (no cluster).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the waves' time series as CSV.")
@click.option("--devices-csv", type=click.Path(dir_okay=False), help="Also write one CSV row per device offered the build: outcome, rollback reason, version running, wave.")
@click.option("--serve", metavar="HOST:PORT", help="Serve a live dashboard (port 0: any free port); after the rollout it stays up until Ctrl-C.")
@click.option("--speed", type=Number(0, min_open=True), metavar="FACTOR", help="Virtual seconds per real second while soaking between waves (86400: a day a second), so an operator can watch and act; default: no waiting.")
@JSON
def fleet(demo, population, plan, firmware, image_size, devices, seed, scheduler, workers, in_process, csv_path,
          devices_csv, serve, speed, as_json) -> None:
    """Rehearse a rollout: canary, ramp waves with soak times, health gates, blocklist.

    Each device is a real pair of cores on the virtual clock: days of rollout take seconds.
    Exit 0: completed; 10: paused by a health gate; 11: stopped by the operator; 2: bad
    input; 3: the cluster (or the dashboard's port) could not be used.

    With --serve, the page shows waves, devices per state, rates and rollback reasons over
    time and gate decisions, and has the operator's buttons: pause (the next wave waits until
    resume or stop), resume, stop, blocklist.  GET /api/summary returns the summary.

    \b
      dualmcu fleet --demo bad --devices 200
      dualmcu fleet --population pop.toml --plan plan.toml --firmware app-1.2.0.bin --json
      dualmcu fleet --demo good --serve 127.0.0.1:8750 --speed 20000
    """
    from dualmcu import fleet as F

    if bool(demo) == bool(firmware):
        raise click.UsageError("give --demo good|bad, or --firmware (with --population and --plan as needed)")
    if scheduler and (workers or in_process):
        raise click.UsageError("--scheduler uses the cluster's workers: --workers and --in-process do not apply")
    try:
        pop = F.load_file(population, "population") if population else F.DEMO_POPULATION
        groups, n, s = F.parse_population(pop, devices, seed)
        the_plan = F.parse_plan(F.load_file(plan, "plan") if plan else F.DEMO_PLAN)
        new = F.demo_build(demo) if demo else read_file(firmware, "firmware", 1 << 26)
        if demo:
            image_size = F.DEMO_IMAGE_SIZE
    except F.FleetError as e:
        raise InputError(str(e)) from None
    from dualmcu.image.firmware import read_info

    if not (read_info(new) or {}).get("mcu"):
        raise InputError(f"{firmware} has no firmware tag with a version: tag it with `dualmcu tag append`")

    for path in (csv_path, devices_csv):
        if path:
            _writable(path)
    board = server = None
    if serve:
        try:
            import sse_starlette  # noqa: F401  (the web stack is the `dashboard` extra)
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401

            from dualmcu import dashboard as D

            host, port = D.parse_address(serve)
        except ImportError as e:
            raise InputError(f"--serve needs the web stack ({e.name} is missing): "
                             "pip install 'dualmcu-emulator[dashboard]'") from None
        except ValueError as e:
            raise InputError(str(e)) from None
        operator = F.Operator()
        version = (read_info(new) or {})["mcu"]
        board = D.Board(operator, version, F.starting_summary(version, n, the_plan.canary_percent))
        try:
            server = D.Server(board, host, port)
        except OSError as e:
            raise IOFailure(str(e)) from None
    rollout = None

    def out(event: dict) -> None:
        check_terminated()  # a SIGTERM whose exception a callback swallowed ends it here
        if board is not None and rollout is not None:
            board.publish(event, rollout.summary(), ended=event["event"] == "summary")
        if event["event"] == "progress":
            return  # for the page only: how many shards a wave has depends on the workers
        if as_json:
            click.echo(json.dumps(event))
        elif event["event"] == "wave":
            click.echo(f"wave {event['wave']} ({event['name']}): {event['devices']} devices, "
                       f"{', '.join(f'{k} {v}' for k, v in event['outcomes'].items()) or 'none'}; "
                       f"gate {event['gate']}" + (f" ({event['gate_reason']})" if event['gate_reason'] else ""), err=True)
        elif event["event"] in ("gate", "operator", "blocklisted", "dashboard"):
            click.echo(" ".join(f"{k}={v}" for k, v in event.items() if k != "event"), err=True)

    try:
        try:
            executor = F.InProcess() if in_process else F.Executor(scheduler, workers)
        except Exception as e:  # the cluster's own errors: an address that does not answer, say
            raise IOFailure(f"cannot use the Dask cluster{' at ' + scheduler if scheduler else ''}: {e}") from None
        try:
            fleet_ = F.draw_fleet(groups, n, s)
            rollout = F.Rollout(fleet_, the_plan, new, image_size, executor, emit=out,
                                operator=board.operator if board else None, speed=speed)
            if server is not None:
                out({"event": "dashboard", "url": server.url})
            out({"event": "fleet", "devices": n, "seed": s, "workers": executor.workers,
                 "hw_revs": sorted({d.hw_rev for d in fleet_})})
            if in_process:
                summary = rollout.run()
            else:
                try:
                    summary = rollout.run()
                except Exception as e:  # a worker or scheduler lost mid-rollout: one line, exit 3
                    raise IOFailure(f"the Dask cluster failed during the rollout: {type(e).__name__}: {e}") from None
        finally:
            executor.close()
        if board is not None:
            board.publish(summary, summary, ended=True)
        _write_reports(summary, csv_path, devices_csv, rollout)
        # From here the rollout has ended and its files are written: a stop while its summary
        # is said, or while the dashboard stays up, only closes the page; the verdict stands.
        # (SIGTERM just after the summary line fell before the wait and ended the command 143.)
        try:
            _say_summary(summary, as_json)
            if server is not None:
                click.echo(f"the dashboard stays up at {server.url} until Ctrl-C or SIGTERM", err=True)
                wait_for_a_stop()
        except KeyboardInterrupt:
            if server is None:
                raise
    finally:
        if server is not None:
            server.close()
    sys.exit({"completed": ExitCode.OK, "paused": ExitCode.PAUSED}.get(summary["state"], ExitCode.STOPPED))


def _writable(path: str) -> None:
    """Refuse an output file that cannot be written before the rollout, not after it (and
    without leaving an empty file behind if the rollout never starts)."""
    import os

    target = path if os.path.exists(path) else (os.path.dirname(path) or ".")
    if os.path.isdir(path) or not os.access(target, os.W_OK):
        raise InputError(f"cannot write {path}: permission denied or no such directory")


def _write_csv(path: str, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    if rows:
        w = csv.DictWriter(text, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_file(path, text.getvalue().encode(), None)


def _write_reports(summary: dict, csv_path, devices_csv, rollout) -> None:
    from dualmcu import fleet as F

    if csv_path:
        _write_csv(csv_path, F.as_rows(summary))
    if devices_csv:
        _write_csv(devices_csv, F.device_rows(rollout.results))


def _say_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{summary['state']}: {summary['offered']} of {summary['devices']} devices offered "
                   f"{summary['version']}, {summary['confirmed']} confirmed, {summary['rolled_back']} rolled back "
                   f"({summary['rolled_back_confirmed_old']} back on their old image, confirmed); "
                   f"{summary['rollout_seconds'] / 86400:.1f} days of rollout in {summary['wall_seconds']} s")
