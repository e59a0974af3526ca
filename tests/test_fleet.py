"""`dualmcu fleet`: a rollout over real emulated pairs, its gates, its operator, and Dask.

The bad demo build fails its health check on hardware revision B: the canary gate must pause
the rollout having offered it to no more than the canary share, with every device that took
it back on its old image, confirmed.  The same seed must give the same summary in one process,
on a local cluster and on a real scheduler with two worker processes.
"""

from __future__ import annotations

import json
import re
import math
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from dualmcu.cli import main

TIMING = ("wall_seconds", "workers")


def fleet(*args):
    r = CliRunner().invoke(main, ["fleet", "--json", *map(str, args)], catch_exceptions=False)
    lines = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    return r.exit_code, lines


def untimed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


def test_the_bad_build_pauses_at_the_canary_and_every_device_that_took_it_is_back():
    code, lines = fleet("--demo", "bad", "--devices", 200, "--in-process")
    s = lines[-1]
    assert code == 10 and s["event"] == "summary" and s["state"] == "paused" and s["paused_by"] == "gate"
    assert 0 < s["offered"] <= math.ceil(s["eligible"] * s["canary_percent"] / 100)
    assert len(s["waves"]) == 1 and s["waves"][0]["gate"] == "pause"
    assert s["rolled_back"] > 0 and s["rolled_back_confirmed_old"] == s["rolled_back"]
    assert s["waves"][0]["rollback_reasons"] == {"health_check_failed": s["rolled_back"]}
    assert [x for x in lines if x["event"] == "gate"][0]["decision"] == "pause"


def test_the_good_build_reaches_every_device():
    code, lines = fleet("--demo", "good", "--devices", 120, "--in-process", "--seed", 7)
    s = lines[-1]
    assert code == 0 and s["state"] == "completed"
    assert s["offered"] == s["confirmed"] == s["devices"] == 120
    assert [w["percent"] for w in s["waves"]] == [5, 25, 50, 100]
    assert s["rollout_seconds"] > 3 * 86400  # three soaks of a day, on the virtual clock


def test_operator_actions_and_the_blocklist(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('canary_percent = 10\nramp_percent = [50, 100]\nsoak_seconds = 3600\n'
                    '[[actions]]\nat_seconds = 3000\naction = "pause"\n')
    code, lines = fleet("--demo", "good", "--devices", 50, "--in-process", "--plan", plan)
    assert code == 11 and lines[-1]["state"] == "stopped" and len(lines[-1]["waves"]) == 1
    plan.write_text('canary_percent = 10\nramp_percent = [50, 100]\nsoak_seconds = 3600\n'
                    '[[actions]]\nat_seconds = 3000\naction = "pause"\n'
                    '[[actions]]\nat_seconds = 5000\naction = "resume"\n')
    code, lines = fleet("--demo", "good", "--devices", 50, "--in-process", "--plan", plan)
    assert code == 0 and lines[-1]["state"] == "completed"
    plan.write_text('canary_percent = 10\nramp_percent = [100]\nsoak_seconds = 3600\n'
                    '[[actions]]\nat_seconds = 10\naction = "blocklist"\nbuild = "1.1.0"\n')
    code, lines = fleet("--demo", "good", "--devices", 50, "--in-process", "--plan", plan)
    assert code == 11 and lines[-1]["offered"] == 5 and any(x["event"] == "blocklisted" for x in lines)


def test_a_yaml_population_is_the_same_fleet_as_its_toml(tmp_path):
    (tmp_path / "pop.toml").write_text('devices = 60\nseed = 4\n[[group]]\nshare = 0.5\nhw_rev = "A"\n'
                                       '[[group]]\nshare = 0.5\nhw_rev = "B"\nversion = "0.9.0"\nber = 1e-6\n')
    (tmp_path / "pop.yaml").write_text("devices: 60\nseed: 4\ngroup:\n  - {share: 0.5, hw_rev: A}\n"
                                       "  - {share: 0.5, hw_rev: B, version: 0.9.0, ber: 1.0e-6}\n")
    _, toml = fleet("--demo", "good", "--in-process", "--population", tmp_path / "pop.toml")
    _, yaml = fleet("--demo", "good", "--in-process", "--population", tmp_path / "pop.yaml")
    assert untimed(toml[-1]) == untimed(yaml[-1]) and toml[-1]["devices"] == 60


@pytest.mark.parametrize("option,name,text,says", [
    ("--plan", "plan.toml", "canary_percent = nan", "canary_percent"),
    ("--plan", "plan.toml", "ramp_percent = [50, 25]", "must rise"),
    ("--plan", "plan.toml", "[[actions]]\nat_seconds = 1\naction = \"explode\"", "pause, resume"),
    ("--plan", "plan.toml", "this is not toml", "not TOML"),
    ("--population", "pop.yml", "- just\n- a list\n", "must hold a table"),
    ("--population", "pop.yml", "group: [1, 2]\n", "a group is a table"),
    ("--population", "pop.yml", "devices: [\n", "not YAML"),
    ("--population", "pop.yml", "devices: .nan\n", "devices"),
    # A misspelt key would leave its default in place without a word.
    ("--plan", "plan.toml", "canary = 50",
     "plan: unknown key 'canary' (did you mean canary_percent?)"),
    ("--plan", "plan.toml", "[gates]\nmin_confirm = 0.5", "plan gates: unknown key 'min_confirm'"),
    ("--plan", "plan.toml", "[[actions]]\nat_seconds = 1\naction = \"pause\"\nwhen = 2",
     "plan action 1: unknown key 'when'"),
    ("--population", "pop.toml", "device = 50",
     "population: unknown key 'device' (did you mean devices?)"),
    ("--population", "pop.toml", "[[group]]\nhwrev = \"B\"",
     "population group 1: unknown key 'hwrev'"),
])
def test_a_bad_plan_or_population_gets_one_line(tmp_path, option, name, text, says):
    f = tmp_path / name
    f.write_text(text)
    r = CliRunner().invoke(main, ["fleet", "--demo", "good", "--in-process", option, str(f)])
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output


def test_devices_csv_has_a_row_per_device_offered(tmp_path):
    import csv

    out = tmp_path / "devices.csv"
    code, lines = fleet("--demo", "bad", "--devices", 200, "--in-process", "--devices-csv", out)
    rows = list(csv.DictReader(out.open()))
    s = lines[-1]
    assert code == 10 and len(rows) == s["offered"]
    assert sum(r["outcome"] == "rollback" for r in rows) == s["rolled_back"]
    assert {r["hw_rev"] for r in rows if r["outcome"] == "rollback"} == {"B"}
    assert all(r["running"] == r["from_version"] for r in rows if r["outcome"] == "rollback")


@pytest.mark.parametrize("args,says", [
    (["--speed", "nan"], "finite"),
    (["--speed", "0"], "0"),
    (["--serve", "localhost:99999"], "HOST:PORT"),
    (["--devices-csv", "/nonexistent/dir/x.csv"], "cannot write"),
])
def test_bad_options_get_one_line_before_anything_runs(args, says):
    r = CliRunner().invoke(main, ["fleet", "--demo", "good", "--in-process", *args])
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output


def test_the_same_seed_gives_the_same_summary_on_a_local_cluster():
    _, one = fleet("--demo", "bad", "--devices", 300, "--seed", 3, "--in-process")
    _, two = fleet("--demo", "bad", "--devices", 300, "--seed", 3, "--workers", 2)
    assert two[-1]["workers"] == 2
    assert untimed(one[-1]) == untimed(two[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_a_real_scheduler_with_two_workers_gives_the_single_process_summary(tmp_path):
    port = free_port()
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    addr = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=tmp_path)]
    try:
        time.sleep(2)
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", addr, "--nworkers", "1", "--nthreads", "1",
                                           "--dashboard-address", ":0"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, cwd=tmp_path))
        from dask.distributed import Client

        with Client(addr, timeout="20s") as c:
            c.wait_for_workers(2, timeout=60)
        _, cluster = fleet("--demo", "good", "--devices", 200, "--seed", 5, "--scheduler", addr)
        _, alone = fleet("--demo", "good", "--devices", 200, "--seed", 5, "--in-process")
        assert cluster[-1]["workers"] == 2 and cluster[-1]["state"] == "completed"
        assert untimed(cluster[-1]) == untimed(alone[-1])
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_a_device_outside_its_install_window_waits_for_it():
    # The cloud's clock reads the wave's start on the rollout's day 0 (midnight UTC): a wave at
    # 00:30 reaches devices whose window opens at 02:00 and they install 1.5 h later, at once
    # for those without a window.
    from dualmcu import fleet as F

    groups, _, _ = F.parse_population({"group": [
        {"share": 1, "hw_rev": "A", "install_window": [2, 3]}, {"share": 1, "hw_rev": "B"}]})
    specs = F.draw_fleet(groups, 6, 2)
    assert {s.install_window for s in specs} == {(2, 3), None}
    results = F.run_shard(specs, F.demo_build("good"), F.DEMO_IMAGE_SIZE, None, 1800.0)
    assert all(r["outcome"] == "success" for r in results)
    for s, r in zip(specs, results):
        assert (r["update_seconds"] > 5400) == (s.install_window is not None)
        assert r["update_seconds"] < 5400 + 60


@pytest.mark.parametrize("window,says", [([3], "install_window is [start, end]"), ([5, 5], "is empty"),
                                         ([1, 25], "from 0 to 24")])
def test_a_bad_install_window_gets_one_line(window, says):
    from dualmcu import fleet as F

    with pytest.raises(F.FleetError, match=re.escape(says)):
        F.parse_population({"group": [{"install_window": window}]})


def test_a_device_with_a_worn_sector_fails_the_update_with_its_reason_and_keeps_its_image():
    # The worn sector's erase fails under a write the device has already counted: the device
    # must abandon the transfer and say why (before, it refused only that write, went on at
    # the next offset with a chunk missing, and the NCP resent into offset_mismatch until its
    # download limit).
    from dualmcu import fleet as F

    groups, _, _ = F.parse_population({"group": [{"share": 1, "hw_rev": "A", "weak_flash_share": 0.5}]})
    specs = F.draw_fleet(groups, 8, 3)
    assert 0 < sum(s.weak_flash for s in specs) < 8
    results = F.run_shard(specs, F.demo_build("good"), F.DEMO_IMAGE_SIZE, None)
    for s, r in zip(specs, results):
        if s.weak_flash:
            assert (r["outcome"], r["failure_reason"], r["running"], r["confirmed"]) == (
                "device_failed", "flash_error", "1.0.0", True)
        else:
            assert (r["outcome"], r["failure_reason"], r["running"]) == ("success", None, "1.1.0")


def test_weak_flash_is_drawn_last_so_an_old_population_draws_the_same_fleet():
    from dualmcu import fleet as F

    plain, _, _ = F.parse_population({"group": [{"share": 1, "battery": [20, 100], "slow_flash_share": 0.3}]})
    weak, _, _ = F.parse_population({"group": [{"share": 1, "battery": [20, 100], "slow_flash_share": 0.3,
                                                "weak_flash_share": 0.3}]})
    a, b = F.draw_fleet(plain, 50, 9), F.draw_fleet(weak, 50, 9)
    assert [(x.battery, x.slow_flash) for x in a] == [(x.battery, x.slow_flash) for x in b]
    assert not any(x.weak_flash for x in a) and any(x.weak_flash for x in b)


def test_a_wave_counts_the_failures_devices_reported(tmp_path):
    pop = tmp_path / "pop.toml"
    pop.write_text('[[group]]\nshare = 1\nhw_rev = "A"\nweak_flash_share = 1.0\n')
    code, lines = fleet("--demo", "good", "--devices", 20, "--in-process", "--population", pop)
    wave = lines[-1]["waves"][0]
    assert code == 10 and wave["outcomes"] == {"device_failed": wave["devices"]}
    assert wave["failure_reasons"] == {"flash_error": wave["devices"]} and wave["rollback_reasons"] == {}
