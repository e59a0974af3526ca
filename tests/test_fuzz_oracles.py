"""The fuzzer's OTA oracles judge on facts, in the run and in its replays alike.

Against a firmware that starts the transfer itself (its own blynk_otaUpdateStart, writes refused
before it), a case of offer, write 0 and its resend was reported as a refused resend, confirmed
3/3, although the firmware had refused both writes: the replay judged the resend without asking
whether the write it repeats was acknowledged in that replay, and the case wrote before Start."""

from __future__ import annotations

from collections import Counter

import pytest

from dualmcu import fuzz as F
from dualmcu.rpc.message import Result

TRUE, FALSE = Result(1, 0, b"\x01"), Result(1, 0, b"\x00")


class Scripted:
    """A stand-in session: each step sent gets the next scripted answer; the target's own
    calls arrive as the script says, after the step named."""

    target = "primary"

    def __init__(self, answers, start_after=None):
        self.answers = list(answers)
        self.called: Counter[str] = Counter()
        self.start_after = start_after  # index of the step after which the target calls Start
        self.sent = 0
        self.waited: list[float] = []

    def start_case(self):
        return None

    def send(self, step):
        result = self.answers.pop(0)
        if self.sent == self.start_after:
            self.called["blynk_otaUpdateStart"] += 1
        self.sent += 1
        return result

    def pump(self, seconds, until=None):
        self.waited.append(seconds)
        return until() if until else True


def case():
    offer = F.Step("ota offer", b"o", 1, expect=None, fn="client_otaUpdateAvailable",
                   waits_for="blynk_otaUpdateStart")
    write = F.Step("ota write 0", b"w", 2, fn="client_otaUpdateWrite")
    resend = F.Step("ota resend of the last chunk 0", b"w", 3, expect="true", fn="client_otaUpdateWrite", needs=1)
    return [offer, write, resend]


@pytest.fixture(autouse=True)
def healthy(monkeypatch):
    monkeypatch.setattr(F, "health", lambda session, last, rss=None: None)


def test_a_resend_of_a_write_the_target_refused_is_not_judged():
    assert F.play(Scripted([TRUE, FALSE, FALSE], start_after=0), case()) is None


def test_a_refused_resend_of_an_acknowledged_write_is_the_failure():
    problem = F.play(Scripted([TRUE, TRUE, FALSE], start_after=0), case())
    assert problem is not None and problem.key == "resend_acknowledged client_otaUpdateWrite"


def test_writes_wait_for_the_targets_own_start_after_an_accepted_offer():
    s = Scripted([TRUE, TRUE, TRUE], start_after=0)
    F.play(s, case())
    assert s.waited == [F.START_WAIT]  # waited (until Start came), once, after the offer
    s = Scripted([FALSE, FALSE, FALSE])
    F.play(s, case())
    assert s.waited == []  # a refused offer starts nothing: nothing to wait for


def test_the_facts_travel_in_the_case_file(tmp_path):
    steps = case()
    finding = F.Finding(F.Problem("resend_acknowledged", "client_otaUpdateWrite", "x"), steps)
    F.save(str(tmp_path / "c.json"), finding, {"target": "primary"})
    again = F.load_case(str(tmp_path / "c.json"))
    assert [(s.needs, s.waits_for) for s in again] == [(None, "blynk_otaUpdateStart"), (None, None), (1, None)]
    with pytest.raises(ValueError, match="waits_for 'nope'"):
        F.Step.from_json({**steps[0].to_json(), "waits_for": "nope"})
