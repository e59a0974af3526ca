"""`dualmcu fuzz` finds planted defects, shrinks them to minimal cases, replays them, and
reports nothing against the correct emulators."""

import json
import subprocess
import sys

import pytest

from dualmcu.image.firmware import build_image, make_info


def dualmcu(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dualmcu", *map(str, args)], capture_output=True, timeout=timeout)


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "factory.bin"
    path.write_bytes(build_image(make_info("1.0.0", "TMPLFZ", build="Jan  1 2026 00:00:00"), 20_000))
    return path


def primary_cmd(tmp_path, factory, *extra):
    flash = tmp_path / "fz.flash"
    return " ".join([sys.executable, "-m", "dualmcu", "primary", "--port", "{port}", "--flash", str(flash),
                     "--provision", str(factory), "--slot-size", "64K", *extra])


def test_finds_and_shrinks_the_duplicate_chunk_hazard_and_replays_it(tmp_path, factory):
    out = tmp_path / "case.json"
    bad = primary_cmd(tmp_path, factory, "--defect", "duplicate-chunk-hazard")
    r = dualmcu("fuzz", "--target", "primary", "--examples", 40, "--seed", 1, "--out", out, "--target-cmd", bad)
    assert r.returncode == 1, r.stderr[-3000:]
    case = json.loads(out.read_text())
    assert "resend of the last chunk" in case["failure"]
    whats = [s["what"] for s in case["steps"]]
    # minimal: an offer, one accepted write and its resend (plus the fuzzer's opening cancel)
    assert len(whats) <= 5 and whats[-1].startswith("ota resend") and any(w == "ota offer" for w in whats)
    assert b"minimal failing case" in r.stdout
    (tmp_path / "fz.flash").unlink()
    assert dualmcu("fuzz", "--target", "primary", "--replay", out, "--target-cmd", bad).returncode == 1
    (tmp_path / "fz.flash").unlink()
    good = primary_cmd(tmp_path, factory)
    assert dualmcu("fuzz", "--target", "primary", "--replay", out, "--target-cmd", good).returncode == 0


def test_finds_a_handler_that_hangs_on_an_empty_binary(tmp_path, factory):
    out = tmp_path / "case.json"
    bad = primary_cmd(tmp_path, factory, "--defect", "hang-on-empty-binary")
    r = dualmcu("fuzz", "--target", "primary", "--examples", 60, "--seed", 1, "--out", out, "--target-cmd", bad, "--json")
    assert r.returncode == 1, r.stderr[-3000:]
    case = json.loads(out.read_text())
    assert "stopped answering" in case["failure"]
    # shrunk to the one write that carries an empty chunk (and what opens an OTA case, if any)
    last = case["steps"][-1]
    assert "client_otaUpdateWrite" in last["what"] or last["what"].startswith("ota empty write")
    assert len(case["steps"]) <= 3
    result = [json.loads(x) for x in r.stdout.decode().splitlines() if '"result"' in x][-1]
    assert result["target_restarts"] >= 1


@pytest.mark.parametrize("side", ["primary", "ncp"])
def test_the_correct_emulators_give_nothing_to_report(tmp_path, factory, side):
    if side == "primary":
        cmd = primary_cmd(tmp_path, factory)
    else:
        cmd = f"{sys.executable} -m dualmcu ncp --port {{port}} --store {tmp_path / 'store'}"
    r = dualmcu("fuzz", "--target", side, "--examples", 40, "--seed", 2, "--out", tmp_path / "x.json", "--target-cmd", cmd)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert not (tmp_path / "x.json").exists()


def test_fuzz_needs_a_target():
    r = dualmcu("fuzz", "--target", "primary")
    assert r.returncode == 2 and b"--port or --target-cmd" in r.stderr
    r = dualmcu("fuzz", "--target", "primary", "--port", "/dev/nope")
    assert r.returncode == 3 and b"no port at /dev/nope" in r.stderr
