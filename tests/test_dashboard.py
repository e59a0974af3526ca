"""The live dashboard of `dualmcu fleet --serve`: its API on a real server, the live operator in
the rollout, and the page itself in a real headless Chromium (Debian's, through its
chromedriver), whose counts must equal the run's JSON summary and whose Pause button must hold
the next wave."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from dualmcu import dashboard as D
from dualmcu import fleet as F

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def http(url: str, method: str = "GET", body: bytes | None = None, ctype: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def served():
    board = D.Board(F.Operator(), "1.1.0")
    server = D.Server(board, "127.0.0.1", 0)
    yield board, server
    server.close()


def test_summary_and_operator_actions_over_http(served):
    board, server = served
    board.publish({"event": "wave", "wave": 1}, {"event": "summary", "state": "running", "offered": 3})
    assert http(server.url + "api/summary") == (200, {"event": "summary", "state": "running", "offered": 3})
    # A form post from another site cannot carry this content type without a preflight.
    assert http(server.url + "api/pause", "POST", b"{}", "text/plain")[0] == 415
    assert http(server.url + "api/pause", "POST", b"{}", "application/json")[0] == 202
    assert http(server.url + "api/blocklist", "POST", b"{}", "application/json")[0] == 202
    assert http(server.url + "api/blocklist", "POST", b'{"build": 7}', "application/json")[0] == 400
    assert http(server.url + "api/reboot", "POST", b"{}", "application/json")[0] == 404
    assert board.operator.take(0) == ("pause", None)
    assert board.operator.take(0) == ("blocklist", "1.1.0")  # by default, the build being rolled out
    assert board.operator.take(0) is None
    board.publish({"event": "summary"}, {"event": "summary", "state": "completed"}, ended=True)
    assert http(server.url + "api/stop", "POST", b"{}", "application/json")[0] == 409


def test_stream_sends_the_whole_board_to_a_late_reader(served):
    board, server = served
    board.publish({"event": "gate", "decision": "pause"}, {"state": "paused"})
    board.publish({"event": "progress", "done": 1}, {"state": "paused"})  # not logged
    with urllib.request.urlopen(server.url + "api/stream", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = []
        while not lines or not lines[-1].startswith("data:"):
            lines.append(r.readline().decode().strip())
    snap = json.loads(lines[-1][5:])
    assert "event: board" in lines
    assert snap["seq"] == 2 and snap["summary"] == {"state": "paused"}
    assert snap["log"] == [{"event": "gate", "decision": "pause"}]


def test_a_port_in_use_is_one_line(served):
    _, server = served
    with pytest.raises(OSError, match=r"cannot serve on 127\.0\.0\.1:\d+: Address already in use"):
        D.Server(D.Board(F.Operator(), "1.1.0"), "127.0.0.1", server.port)


@pytest.mark.parametrize("text", ["nope", "host:", "h:70000", ":-1"])
def test_bad_addresses(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        D.parse_address(text)


def demo_rollout(kind: str, devices: int, operator=None, emit=lambda e: None) -> F.Rollout:
    groups, _, seed = F.parse_population(F.DEMO_POPULATION)
    return F.Rollout(F.draw_fleet(groups, devices, seed), F.parse_plan(F.DEMO_PLAN), F.demo_build(kind),
                     F.DEMO_IMAGE_SIZE, F.InProcess(), emit=emit, operator=operator)


def test_live_pause_holds_the_next_wave_until_the_operator_acts():
    # The operator presses Pause while the canary runs, then Stop once the pause has taken:
    # the ramp never starts, and the rollout ends stopped with one wave.
    op = F.Operator()
    seen = []

    def emit(event):
        seen.append(event)
        if event["event"] == "wave_start" and event["wave"] == 1:
            op.request("pause")
        if event["event"] == "operator" and event["action"] == "pause":
            assert rollout.state == "paused"  # the event is sent after the move
            op.request("stop")

    rollout = demo_rollout("good", 40, op, emit)
    summary = rollout.run()
    assert summary["state"] == "stopped" and len(summary["waves"]) == 1
    assert [a["action"] for a in summary["actions"]] == ["pause", "stop"]
    assert all(a["source"] == "live" for a in summary["actions"])
    assert summary["device_states"]["waiting"] == summary["eligible"] - summary["waves"][0]["devices"]


def test_live_resume_goes_on_and_blocklist_stops():
    op = F.Operator()

    def emit(event):
        if event["event"] == "wave" and event["wave"] == 1:
            op.request("pause")
        if event["event"] == "operator" and event["action"] == "pause":
            op.request("resume")
        if event["event"] == "wave" and event["wave"] == 2:
            op.request("blocklist", "1.1.0")

    summary = demo_rollout("good", 40, op, emit).run()
    assert summary["state"] == "stopped" and summary["blocklisted"] and len(summary["waves"]) == 2


# -- the page in a real browser ------------------------------------------------------------------


@pytest.fixture
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("CI runs the browser test: apt-get install chromium chromium-driver (README)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # As root in a sandbox, and with no network beyond loopback: no sandbox, no background
    # connections (each would be refused and retried), no GPU.
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1300,1400"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


class Fleet:
    """`dualmcu fleet ... --serve 127.0.0.1:0 --json` as a process; its JSON lines as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dualmcu", "fleet", "--in-process", "--serve", "127.0.0.1:0", "--json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.summary: dict | None = None
        self.url = self.next("dashboard")["url"]
        threading.Thread(target=self._read, daemon=True).start()

    def next(self, kind: str) -> dict:
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == kind:
                return event
        raise AssertionError(f"no {kind} event: {self.proc.stderr.read()}")

    def _read(self) -> None:
        self.summary = self.next("summary")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def page_counts(driver) -> dict:
    by_id = lambda i: driver.find_element("id", i).text  # noqa: E731
    counts = {k: int(by_id("count-" + k)) for k in
              ("devices", "eligible", "offered", "confirmed", "rolled_back", "rolled_back_confirmed_old")}
    counts["state"] = by_id("state")
    rows = driver.find_elements("css selector", "#device-states tbody tr")
    counts["device_states"] = {r.get_attribute("data-state"): int(r.find_elements("tag name", "td")[1].text) for r in rows}
    counts["waves"] = len(driver.find_elements("css selector", "#waves tbody tr"))
    return counts


def summary_counts(summary: dict) -> dict:
    keys = ("devices", "eligible", "offered", "confirmed", "rolled_back", "rolled_back_confirmed_old", "state",
            "device_states")
    return {**{k: summary[k] for k in keys}, "waves": len(summary["waves"])}


@pytest.mark.slow
def test_bad_build_in_the_browser_pauses_at_the_canary_gate(browser):
    run = Fleet("--demo", "bad", "--devices", "200")
    try:
        summary = wait_for(lambda: run.summary)
        # The done-when of a bad build: paused at the canary gate, offered to no more than the
        # canary share, and every device that took it back on its old image, confirmed.
        assert summary["state"] == "paused" and summary["paused_by"] == "gate" and len(summary["waves"]) == 1
        assert summary["offered"] <= -(-summary["eligible"] * summary["canary_percent"] // 100)
        assert summary["rolled_back"] > 0 and summary["rolled_back_confirmed_old"] == summary["rolled_back"]
        assert http(run.url + "api/summary") == (200, summary)
        browser.get(run.url)
        wait_for(lambda: browser.find_element("tag name", "body").get_attribute("data-ended") == "true")
        assert page_counts(browser) == summary_counts(summary)
        assert "pause (rollback rate" in browser.find_element("css selector", "#waves tbody tr").text
        assert browser.find_element("id", "pause").get_attribute("disabled") == "true"
        assert run.interrupt() == 10
    finally:
        run.close()


@pytest.mark.slow
def test_good_build_in_the_browser_pause_holds_the_next_wave(browser):
    # Soaks of a day take 3 s of real time, so the click lands between waves.
    run = Fleet("--demo", "good", "--devices", "40", "--speed", "28800")
    try:
        browser.get(run.url)
        waves = lambda: len(browser.find_elements("css selector", "#waves tbody tr"))  # noqa: E731
        wait_for(lambda: waves() >= 1)
        browser.find_element("id", "pause").click()
        wait_for(lambda: browser.find_element("id", "state").text == "paused")
        held = waves()
        time.sleep(5)  # longer than a soak: without the pause the next wave would have started
        assert waves() == held
        status, live = http(run.url + "api/summary")
        assert (live["state"], live["paused_by"], len(live["waves"])) == ("paused", "operator", held)
        browser.find_element("id", "resume").click()
        summary = wait_for(lambda: run.summary)
        wait_for(lambda: browser.find_element("tag name", "body").get_attribute("data-ended") == "true")
        # The good build reaches every device, and the page says so with the summary's numbers.
        assert summary["state"] == "completed" and summary["confirmed"] == summary["devices"] == 40
        assert [a["action"] for a in summary["actions"]] == ["pause", "resume"]
        assert page_counts(browser) == summary_counts(summary)
        assert run.interrupt() == 0
    finally:
        run.close()


def test_serve_without_the_web_stack_is_one_line(monkeypatch):
    from click.testing import CliRunner

    from dualmcu.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    r = CliRunner().invoke(main, ["fleet", "--demo", "good", "--in-process", "--serve", "127.0.0.1:0"])
    assert r.exit_code == 2 and "pip install 'dualmcu-emulator[dashboard]'" in r.output
    assert "Traceback" not in r.output


def test_ctrl_c_while_the_operator_is_awaited_stops_the_rollout():
    # Paused by hand, the rollout waits on the operator; Ctrl-C there is the operator's stop
    # (exit 11), recorded as such, not a traceback or a rollout left "paused".
    class Interrupted(F.Operator):
        def take(self, timeout):
            if timeout is None:
                raise KeyboardInterrupt
            return super().take(timeout)

    op = Interrupted()
    summary = demo_rollout("good", 40, op, lambda e: e["event"] == "wave_start" and op.request("pause")).run()
    assert summary["state"] == "stopped" and len(summary["waves"]) == 1
    assert [(a["action"], a["source"]) for a in summary["actions"]] == [("pause", "live"), ("stop", "interrupt")]
