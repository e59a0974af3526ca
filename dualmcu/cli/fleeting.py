"""`dualmcu fleet`: rehearse a rollout over a fleet of emulated devices."""

from __future__ import annotations

import csv
import json
import sys

import click

from dualmcu.exits import ExitCode

from .common import JSON, InputError, IOFailure, main, read_file


@main.command()
@click.option("--demo", type=click.Choice(["good", "bad"]), help="An embedded example: 1.1.0 of a demo product, good, or failing its health check on hardware revision B.")
@click.option("--population", type=click.Path(exists=True, dir_okay=False), help="Population file (TOML): groups of devices by share (see `dualmcu docs fleet`).")
@click.option("--plan", type=click.Path(exists=True, dir_okay=False), help="Rollout plan file (TOML): canary, ramp, soak, gates, blocklist, operator actions.")
@click.option("--firmware", type=click.Path(exists=True, dir_okay=False), help="The build to roll out (a tagged image); devices start on builds of its fw-type.")
@click.option("--image-size", type=click.IntRange(4096, 1 << 24), default=64 * 1024, show_default=True, help="Size of the images devices start on.")
@click.option("--devices", type=click.IntRange(1, 10_000_000), help="Devices in the fleet (overrides the population file).")
@click.option("--seed", type=click.IntRange(0, 2**63), help="Seed of the fleet (overrides the population file): the same seed, the same result.")
@click.option("--scheduler", help="Address of a running Dask scheduler (tcp://HOST:PORT); default: a local cluster of this machine's cores.")
@click.option("--workers", type=click.IntRange(1, 1024), help="Worker processes of the local cluster (default: one per core).")
@click.option("--in-process", is_flag=True, help="Run every device in this process (no cluster).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the waves' time series as CSV.")
@JSON
def fleet(demo, population, plan, firmware, image_size, devices, seed, scheduler, workers, in_process, csv_path,
          as_json) -> None:
    """Rehearse a rollout: canary, ramp waves with soak times, health gates, blocklist.

    Each device is a real pair of cores on the virtual clock: days of rollout take seconds.
    Exit 0: completed; 10: paused by a health gate; 11: stopped by the operator; 2: bad
    input; 3: the cluster could not be used.

    \b
      dualmcu fleet --demo bad --devices 200
      dualmcu fleet --population pop.toml --plan plan.toml --firmware app-1.2.0.bin --json
    """
    from dualmcu import fleet as F

    if bool(demo) == bool(firmware):
        raise click.UsageError("give --demo good|bad, or --firmware (with --population and --plan as needed)")
    if scheduler and (workers or in_process):
        raise click.UsageError("--scheduler uses the cluster's workers: --workers and --in-process do not apply")
    try:
        pop = F.load_toml(population, "population") if population else F.DEMO_POPULATION
        groups, n, s = F.parse_population(pop, devices, seed)
        the_plan = F.parse_plan(F.load_toml(plan, "plan") if plan else F.DEMO_PLAN)
        new = F.demo_build(demo) if demo else read_file(firmware, "firmware", 1 << 26)
        if demo:
            image_size = F.DEMO_IMAGE_SIZE
    except F.FleetError as e:
        raise InputError(str(e)) from None
    from dualmcu.image.firmware import read_info

    if not (read_info(new) or {}).get("mcu"):
        raise InputError(f"{firmware} has no firmware tag with a version: tag it with `dualmcu tag append`")

    def out(event: dict) -> None:
        if as_json:
            click.echo(json.dumps(event))
        elif event["event"] == "wave":
            click.echo(f"wave {event['wave']} ({event['name']}): {event['devices']} devices, "
                       f"{', '.join(f'{k} {v}' for k, v in event['outcomes'].items()) or 'none'}; "
                       f"gate {event['gate']}" + (f" ({event['gate_reason']})" if event['gate_reason'] else ""), err=True)
        elif event["event"] in ("gate", "operator", "blocklisted"):
            click.echo(" ".join(f"{k}={v}" for k, v in event.items()), err=True)

    try:
        executor = F.InProcess() if in_process else F.Executor(scheduler, workers)
    except Exception as e:  # the cluster's own errors: an address that does not answer, say
        raise IOFailure(f"cannot use the Dask cluster{' at ' + scheduler if scheduler else ''}: {e}") from None
    try:
        fleet_ = F.draw_fleet(groups, n, s)
        out({"event": "fleet", "devices": n, "seed": s, "workers": executor.workers,
             "hw_revs": sorted({d.hw_rev for d in fleet_})})
        rollout = F.Rollout(fleet_, the_plan, new, image_size, executor, emit=out)
        if in_process:
            summary = rollout.run()
        else:
            try:
                summary = rollout.run()
            except Exception as e:  # a worker or scheduler lost mid-rollout: one line, exit 3
                raise IOFailure(f"the Dask cluster failed during the rollout: {type(e).__name__}: {e}") from None
    finally:
        executor.close()
    if csv_path:
        rows = F.as_rows(summary)
        try:
            with open(csv_path, "w", newline="") as f:
                if rows:
                    w = csv.DictWriter(f, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(rows)
        except OSError as e:
            raise InputError(f"cannot write {csv_path}: {e.strerror}") from None
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{summary['state']}: {summary['offered']} of {summary['devices']} devices offered "
                   f"{summary['version']}, {summary['confirmed']} confirmed, {summary['rolled_back']} rolled back "
                   f"({summary['rolled_back_confirmed_old']} back on their old image, confirmed); "
                   f"{summary['rollout_seconds'] / 86400:.1f} days of rollout in {summary['wall_seconds']} s")
    sys.exit({"completed": ExitCode.OK, "paused": ExitCode.PAUSED}.get(summary["state"], ExitCode.STOPPED))
