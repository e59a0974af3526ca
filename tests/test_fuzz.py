"""`dualmcu fuzz` finds planted defects, shrinks them to minimal cases, replays them, and
reports nothing against the correct emulators."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.framing import get_profile
from dualmcu.rpc.interface import INTERFACE
from dualmcu.rpc.message import parse


def dualmcu(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dualmcu", *map(str, args)], capture_output=True, timeout=timeout)


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "factory.bin"
    path.write_bytes(build_image(make_info("1.0.0", "TMPLFZ", build="Jan  1 2026 00:00:00"), 20_000))
    return path


PLANTED = Path(__file__).with_name("planted.py")


def primary_cmd(tmp_path, factory, *extra, defects: str | None = None):
    """The primary as a fuzz target; with ``defects``, with those bugs planted (planted.py)."""
    flash = tmp_path / "fz.flash"
    run = [sys.executable, "-m", "dualmcu"] if defects is None else [sys.executable, str(PLANTED), defects]
    return " ".join([*run, "primary", "--port", "{port}", "--flash", str(flash),
                     "--provision", str(factory), "--slot-size", "64K", *extra])


def findings(out):
    return {json.loads(p.read_text())["class"]: json.loads(p.read_text()) for p in out.glob("*.json")}


def result_of(r):
    return [json.loads(x) for x in r.stdout.decode().splitlines() if '"event": "result"' in x or '"event":"result"' in x][-1]


def test_finds_and_shrinks_the_duplicate_chunk_hazard_confirms_and_replays_it(tmp_path, factory):
    out = tmp_path / "found"
    bad = primary_cmd(tmp_path, factory, defects="duplicate-chunk-hazard")
    r = dualmcu("fuzz", "--target", "primary", "--examples", 40, "--seed", 1, "--out", out, "--target-cmd", bad)
    assert r.returncode == 1, r.stderr[-3000:]
    case = findings(out)["resend_acknowledged client_otaUpdateWrite"]
    assert case["verdict"] == "confirmed" and case["reproduced"] == "3/3"
    whats = [s["what"] for s in case["steps"]]
    # minimal: an offer, one accepted write and its resend (plus the fuzzer's opening cancel)
    assert len(whats) <= 5 and whats[-1].startswith("ota resend") and any(w == "ota offer" for w in whats)
    assert b"confirmed (3/3 replays" in r.stdout
    path = out / "resend_acknowledged-client_otaUpdateWrite.json"
    # The printed hint is a whole command (it ended in "..."), and the file names the side.
    import shlex

    hint = [line for line in r.stdout.decode().splitlines() if "play it again with: " in line][0]
    words = shlex.split(hint.split("play it again with: ", 1)[1])
    assert words[:4] == ["dualmcu", "fuzz", "--replay", str(path)] and "--target" not in words
    (tmp_path / "fz.flash").unlink()
    assert dualmcu(*words[1:]).returncode == 1
    (tmp_path / "fz.flash").unlink()
    good = primary_cmd(tmp_path, factory)
    assert dualmcu("fuzz", "--replay", path, "--target-cmd", good).returncode == 0


@pytest.mark.timeout(400)
def test_two_bugs_in_one_campaign_are_both_reported(tmp_path, factory):
    out = tmp_path / "found"
    bad = primary_cmd(tmp_path, factory, defects="hang-on-empty-binary,duplicate-chunk-hazard")
    r = dualmcu("fuzz", "--target", "primary", "--examples", 80, "--seed", 1, "--out", out, "--target-cmd", bad, "--json",
                "--ping-wait", 0.5)
    assert r.returncode == 1, r.stderr[-3000:]
    found = findings(out)
    assert found["resend_acknowledged client_otaUpdateWrite"]["verdict"] == "confirmed"
    hang = [c for k, c in found.items() if k.startswith("liveness")]
    assert hang and all(c["verdict"] == "confirmed" for c in hang)
    # shrunk to the one write that carries an empty chunk (and what opens an OTA case, if any)
    assert any(c["steps"][-1]["fn"] == "client_otaUpdateWrite" and len(c["steps"]) <= 3 for c in hang)
    result = result_of(r)
    assert result["confirmed"] == len(found) and result["target_restarts"] >= 1


@pytest.mark.timeout(400)
@pytest.mark.parametrize("defect,oracle,fn,shortest", [
    # A remote crash: one virtual-pin value over 64 bytes ends the process. Shrunk to that
    # one call, with the shortest value that still crashes it.
    ("crash-on-long-vpin", "crash", "client_blynkVPinChange", 65),
    # A leak: each state change keeps 2 MiB. Shrunk to one call.
    ("leak-on-state-change", "memory", "client_blynkStateChange", None),
])
def test_finds_and_shrinks_a_remote_crash_and_a_memory_leak(tmp_path, factory, defect, oracle, fn, shortest):
    out = tmp_path / "found"
    bad = primary_cmd(tmp_path, factory, defects=defect)
    r = dualmcu("fuzz", "--target", "primary", "--examples", 100, "--seed", 1, "--out", out, "--target-cmd", bad,
                "--json", "--ping-wait", 0.5)
    assert r.returncode == 1, (r.stdout[-3000:], r.stderr[-3000:])
    case = findings(out)[f"{oracle} {fn}"]
    assert case["verdict"] == "confirmed" and case["reproduced"] == "3/3", case
    assert case["steps"][-1]["fn"] == fn and len(case["steps"]) == 1, case["steps"]
    if shortest is not None:
        frame = next(iter(get_profile("cobs").decoder().feed(bytes.fromhex(case["steps"][0]["send"]))))
        value = INTERFACE[fn].decode_args(parse(frame.message).args)["value"]
        assert len(value) == shortest
    assert {c["oracle"] for c in findings(out).values()} == {oracle}


def test_a_bug_behind_a_timing_race_is_flaky_never_confirmed(tmp_path, factory):
    # The race strikes a resend on one millisecond in five; a shrunk case holds a few resends,
    # and 2 and 3 replays of 10 failed in two tries. Ten that all fail are then about one in a
    # million. With one millisecond in three and five replays, all five failed once in CI.
    out = tmp_path / "found"
    racy = primary_cmd(tmp_path, factory, defects="racy-duplicate-hazard")
    r = dualmcu("fuzz", "--target", "primary", "--examples", 60, "--seed", 1, "--out", out, "--target-cmd", racy,
                "--confirm", 10, "--json")
    assert r.returncode == 0, r.stderr[-3000:]  # nothing confirmed
    found = findings(out)
    assert found, "the race never showed"
    assert all(c["verdict"] in ("flaky", "not_reproduced") for c in found.values())
    assert result_of(r)["confirmed"] == 0


def test_a_correct_target_that_blocks_on_its_own_calls_has_no_liveness_failures(tmp_path, factory):
    # Like the C driver: while its own call (a heartbeat ping every 0.2 s) waits, it serves
    # nothing. The fuzzer answers those calls, so it is never judged dead.
    cmd = primary_cmd(tmp_path, factory, "--blocking-calls", "--heartbeat", "0.2")
    r = dualmcu("fuzz", "--target", "primary", "--examples", 30, "--seed", 3, "--out", tmp_path / "found",
                "--target-cmd", cmd, "--json")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert not (tmp_path / "found").exists()
    assert result_of(r)["classes"] == 0


@pytest.mark.parametrize("side", ["primary", "ncp"])
def test_the_correct_emulators_give_nothing_to_report(tmp_path, factory, side):
    if side == "primary":
        cmd = primary_cmd(tmp_path, factory)
    else:
        cmd = f"{sys.executable} -m dualmcu ncp --port {{port}} --store {tmp_path / 'store'}"
    r = dualmcu("fuzz", "--target", side, "--examples", 40, "--seed", 2, "--out", tmp_path / "x", "--target-cmd", cmd)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert not (tmp_path / "x").exists()


def test_fuzz_needs_a_target():
    r = dualmcu("fuzz", "--target", "primary")
    assert r.returncode == 2 and b"--port or --target-cmd" in r.stderr
    r = dualmcu("fuzz", "--target", "primary", "--port", "/dev/nope")
    assert r.returncode == 3 and b"no port at /dev/nope" in r.stderr


@pytest.mark.parametrize("cmd, code, says", [
    # A target that cannot start says why, at once: its exit code and its last stderr line.
    # (It used to be pinged in a busy loop for 15 s per restart, and said only that it "did
    # not come back".)
    ("sh -c 'echo boom {port} >&2; exit 7'", 3,
     "the target command exited with code 7: boom /dev/pts/"),
    (f"{sys.executable} -m dualmcu primary --port {{port}} --flash nowhere.flash", 3,
     "exited with code 2: Error: no flash file at nowhere.flash"),
    ("no-such-program {port}", 3, "cannot run the target command 'no-such-program /dev/pts/"),
    # Refused before anything starts.
    ("'unclosed {port}", 2, "No closing quotation"),
    ("sleep 100", 2, "has no {port}"),
])
def test_a_target_command_that_cannot_serve_gets_one_line(tmp_path, cmd, code, says):
    r = dualmcu("fuzz", "--target", "primary", "--examples", 3, "--out", tmp_path / "x",
                "--target-cmd", cmd, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == code and says in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content", ["not json", "[]", '{"steps": []}', '{"steps": [{"what": "x", "send": "zz"}]}',
                                     '{"steps": [{"what": "x", "send": "00", "msg_id": -1}]}'])
def test_a_case_file_that_is_not_one_gets_one_line(tmp_path, content):
    bad = tmp_path / "case.json"
    bad.write_text(content)
    r = dualmcu("fuzz", "--target", "primary", "--port", "/dev/nope", "--replay", bad)
    assert r.returncode == 2 and b"Traceback" not in r.stderr and r.stderr.count(b"\n") <= 3, r.stderr


def test_a_fault_of_the_fuzzer_itself_is_raised_not_reported_as_nothing_found(monkeypatch):
    from dualmcu import fuzz as F

    class Quiet:  # a target that is always alive; the cases never reach it
        target = "primary"

        def alive(self, waits=None):
            return True

    def broken(session, case, record):
        raise TypeError("a bug in the fuzzer")

    monkeypatch.setattr(F, "execute", broken)
    with pytest.raises(TypeError, match="a bug in the fuzzer"):
        F.fuzz(Quiet(), F.Target(), examples=3, seed_value=1)


def test_a_campaign_stopped_by_sigterm_saves_what_it_found_unconfirmed(tmp_path, factory):
    """A long campaign stopped with `kill` (or `timeout`, or a CI job's end) keeps its findings:
    each class's smallest case so far, saved and said, unconfirmed; the exit code says why."""
    import signal

    out = tmp_path / "found"
    bad = primary_cmd(tmp_path, factory, defects="duplicate-chunk-hazard")
    p = subprocess.Popen([sys.executable, "-m", "dualmcu", "fuzz", "--target", "primary",
                          "--examples", "100000", "--seed", "1", "--out", str(out),
                          "--target-cmd", bad, "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    for line in p.stdout:  # until the first failure is found
        lines.append(line)
        ev = json.loads(line)
        if ev.get("event") == "case" and ev["failure"]:
            break
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 143, err[-2000:]
    evs = [json.loads(x) for x in b"".join(lines + [rest]).splitlines()]
    result = evs[-1]
    assert result["event"] == "result" and result["stopped"] == "terminated"
    assert result["classes"] >= 1 and result["confirmed"] == 0
    assert result["unconfirmed"] == result["classes"]
    case = findings(out)["resend_acknowledged client_otaUpdateWrite"]
    assert case["verdict"] == "unconfirmed" and case["reproduced"] == "0/0" and case["steps"]


def test_a_campaign_leads_with_the_confirmed_and_counts_the_rest_in_one_line(tmp_path, factory):
    """15 not-reproduced classes were printed at the weight of the one confirmed."""
    out = tmp_path / "found"
    racy = primary_cmd(tmp_path, factory, defects="racy-duplicate-hazard,duplicate-chunk-hazard")
    r = dualmcu("fuzz", "--target", "primary", "--examples", 30, "--seed", 1, "--out", out, "--target-cmd", racy)
    text = r.stdout.decode().splitlines()
    assert r.returncode == 1 and text[0].startswith("confirmed ("), text
    found = findings(out)
    rest = [c for c in found.values() if c["verdict"] != "confirmed"]
    if rest:
        assert text[-1].startswith("not confirmed: ") and text[-1].endswith(f"(their cases and replay counts are in {out})")
    assert sum(line.startswith("confirmed (") for line in text) == sum(c["verdict"] == "confirmed" for c in found.values())
