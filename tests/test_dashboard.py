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


def http(url: str, method: str = "GET", body: bytes | None = None, ctype: str | None = None,
         token: str | None = None, host: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": ctype} if ctype else {}
    if token:
        headers["Authorization"] = f"token {token}"
    if host:
        headers["Host"] = host
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
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
    assert http(server.base + "api/summary", token=server.token) == (200, {"event": "summary", "state": "running", "offered": 3})
    # A form post from another site cannot carry this content type without a preflight.
    assert http(server.base + "api/pause", "POST", b"{}", "text/plain", token=server.token)[0] == 415
    assert http(server.base + "api/pause", "POST", b"{}", "application/json", token=server.token)[0] == 202
    assert http(server.base + "api/blocklist", "POST", b"{}", "application/json", token=server.token)[0] == 202
    assert http(server.base + "api/blocklist", "POST", b'{"build": 7}', "application/json", token=server.token)[0] == 400
    assert http(server.base + "api/reboot", "POST", b"{}", "application/json", token=server.token)[0] == 404
    assert board.operator.take(0) == ("pause", None)
    assert board.operator.take(0) == ("blocklist", "1.1.0")  # by default, the build being rolled out
    assert board.operator.take(0) is None
    board.publish({"event": "summary"}, {"event": "summary", "state": "completed"}, ended=True)
    assert http(server.base + "api/stop", "POST", b"{}", "application/json", token=server.token)[0] == 409


def test_only_this_runs_token_and_the_served_host_names_reach_the_api(served):
    """A site that rebinds its DNS name to 127.0.0.1 is same-origin to the page and could press
    the buttons; so could anyone on the network with --serve 0.0.0.0. Every /api/ request needs
    this run's token, and a Host this server is not served under is refused."""
    board, server = served
    assert http(server.base + "api/pause", "POST", b"{}", "application/json")[0] == 403
    assert http(server.base + "api/summary", token="not-the-token")[0] == 403
    assert http(server.base + "api/summary?token=" + server.token)[0] == 200
    assert http(server.base + "api/pause", "POST", b"{}", "application/json", token=server.token,
                host=f"rebound.example:{server.port}")[0] == 403
    assert http(server.base + "api/summary", token=server.token, host=f"localhost:{server.port}")[0] == 200
    assert board.operator.take(0) is None  # nothing refused reached the rollout
    # The page is given with the token once, and keeps it in a cookie its own requests carry.
    with urllib.request.urlopen(server.url, timeout=10) as r:
        cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"dualmcu_token={server.token};") and "HttpOnly" in cookie and "strict" in cookie.lower()
    req = urllib.request.Request(server.base + "api/summary", headers={"Cookie": f"dualmcu_token={server.token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert http(server.base)[0] == 403  # the page without the token says where to find it


def test_every_address_bound_takes_address_literals_but_no_other_name():
    wild, local = D.Guard("0.0.0.0", "t"), D.Guard("127.0.0.1", "t")
    assert wild.host_ok("192.0.2.7:8750") and wild.host_ok("[2001:db8::1]:8750") and wild.host_ok("localhost:1")
    assert not wild.host_ok("rebound.example:8750") and not local.host_ok("192.0.2.7:8750")
    assert local.host_ok("127.0.0.1:8750") and local.host_ok("[::1]:8750")


def test_the_summary_has_its_schema_while_the_cluster_starts():
    """/api/summary answered {} for about 4 s while the cluster started."""
    start = F.starting_summary("1.1.0", 200, 5)
    rollout = demo_rollout("good", 10)
    assert set(start) == set(rollout.summary()) and start["state"] == "starting"
    board = D.Board(F.Operator(), "1.1.0", start)
    assert board.snapshot()["summary"] == start


def test_stream_sends_the_whole_board_to_a_late_reader(served):
    board, server = served
    board.publish({"event": "gate", "decision": "pause"}, {"state": "paused"})
    board.publish({"event": "progress", "done": 1}, {"state": "paused"})  # not logged
    with urllib.request.urlopen(urllib.request.Request(server.base + "api/stream", headers={"Authorization": f"token {server.token}"}), timeout=10) as r:
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
        self.base, self.token = self.url.split("?token=")
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
        assert http(run.base + "api/summary", token=run.token) == (200, summary)
        browser.get(run.url)
        wait_for(lambda: browser.find_element("tag name", "body").get_attribute("data-ended") == "true")
        assert page_counts(browser) == summary_counts(summary)
        assert "pause (rollback rate" in browser.find_element("css selector", "#waves tbody tr").text
        # Every rollback is on revision B: the page shows it split out, as the summary has it.
        rows = {(r.get_attribute("data-split"), r.get_attribute("data-value")): r.text.split()[-3:]
                for r in browser.find_elements("css selector", "#breakdown tbody tr")}
        assert summary["by_hw_rev"]["B"]["rollback_rate"] == 1.0 and summary["by_hw_rev"]["A"]["rollback_rate"] == 0.0
        assert rows[("hardware revision", "B")] == [str(summary["by_hw_rev"]["B"]["offered"]), "0", "1"]
        log = [li.text for li in browser.find_elements("css selector", "#log li")]
        assert sum("pause" in line for line in log) == 1, log  # the pause is listed once
        assert [h.text for h in browser.find_elements("css selector", "h2, figcaption")].count("Devices per state") == 1
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
        status, live = http(run.base + "api/summary", token=run.token)
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


@pytest.mark.slow
@pytest.mark.parametrize("when", ["start-up", "mid-rollout", "after the end"])
def test_one_sigterm_stops_fleet_serve_wherever_it_lands(when):
    """The exception SIGTERM's handler raises can land in a weakref callback of the cluster and
    be swallowed: servers stayed up 77 minutes after one SIGTERM. The rollout's next event, or
    the wait after the end, now ends it on the first."""
    speed = {"start-up": "86400", "mid-rollout": "28800", "after the end": "10000000"}[when]
    p = subprocess.Popen([sys.executable, "-m", "dualmcu", "fleet", "--demo", "good", "--devices", "40",
                          "--serve", "127.0.0.1:0", "--json", "--speed", speed],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wanted = {"start-up": "dashboard", "mid-rollout": "wave", "after the end": "summary"}[when]
        for line in p.stdout:
            if json.loads(line)["event"] == wanted:
                break
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # After the end the rollout's own verdict stands (completed: 0); before, an interruption.
    assert code == (0 if when == "after the end" else 143), p.stderr.read()[-2000:]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowing itself
def test_a_swallowed_sigterm_is_raised_again_at_the_next_safe_point():
    import weakref

    from dualmcu import exits

    class Thing:
        pass

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with exits.sigterm_interrupts():
            handler = signal.getsignal(signal.SIGTERM)
            t = Thing()
            ref = weakref.ref(t, lambda _: handler(signal.SIGTERM, None))  # raises inside a callback...
            del t  # ...where Python prints "Exception ignored" and goes on
            assert ref() is None
            with pytest.raises(exits.Terminated):
                exits.check_terminated()
    finally:
        exits.TERMINATED_EVENT.clear()
        signal.signal(signal.SIGTERM, previous)
