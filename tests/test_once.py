"""`ncp --once` ends on the update's final verdict, on the virtual clock.

The cloud records success the moment the new version reports in, while the image is still on
trial. The NCP ended there (after a 3 s settle) with exit 0, and a build that the primary then
rolled back (a health check that fails late, a commit timer) passed CI. Now it waits for the
primary's confirmation or its return to the old version, within --confirm-window.
"""

from __future__ import annotations

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.ncp.core import NcpConfig
from dualmcu.ncp.update import Shipment
from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
from dualmcu.rpc.events import Event
from dualmcu.sides import ncp_exit
from dualmcu.exits import ExitCode
from dualmcu.sim import Simulation
from support import BUILD, provisioned

OLD = build_image(make_info("1.0.0", "TMPLONCE", build=BUILD), 40_000, seed=1)


def once(window: float = 10.0, commit_timeout: float = 300.0, **tag: str) -> Simulation:
    new = build_image(make_info("1.1.0", "TMPLONCE", build=BUILD, **tag), 50_000, seed=2)
    sim = Simulation(provisioned(OLD, slot=128 * 1024), Shipment.from_bytes(new, "fw.bin"),
                     ncp_config=NcpConfig(once=True, confirm_window=window),
                     primary_config=PrimaryConfig(commit_timeout=commit_timeout))
    sim.run_until(lambda s: s.ncp_exit is not None, limit=900)
    return sim


def test_a_confirmed_update_ends_at_the_confirmation_not_after_a_wait():
    sim = once()
    assert sim.ncp_exit == "confirmed" and ncp_exit(sim.ncp_exit) == ExitCode.OK
    confirmed = sim.find(Event.CONFIRMED, "primary")[-1]["t"]
    assert sim.now - confirmed < 1.0  # the telemetry that says so, not the window, ends it


def test_a_health_check_that_fails_ends_on_rollback():
    sim = once(**{"dualmcu-test": "fail-health"})
    assert sim.ncp_exit == "rollback" and ncp_exit(sim.ncp_exit) == ExitCode.FAILED
    assert [f["outcome"] for f in sim.find(Event.OTA_OUTCOME, "ncp")] == ["success", "rollback"]


def test_an_image_rolled_back_by_its_commit_timer_within_the_window_is_a_rollback():
    """The case that exited 0: the new version reported in, ran 3 s, and only then went back."""
    sim = once(window=30.0, commit_timeout=8.0, **{"dualmcu-test": "slow-confirm:20"})
    assert sim.ncp_exit == "rollback"
    assert sim.find(Event.COMMIT_TIMEOUT, "primary")
    assert [f["outcome"] for f in sim.find(Event.OTA_OUTCOME, "ncp")] == ["success", "rollback"]


def test_an_image_still_on_trial_when_the_window_ends_is_unconfirmed():
    sim = once(window=10.0, commit_timeout=300.0, **{"dualmcu-test": "slow-confirm:60"})
    assert sim.ncp_exit == "unconfirmed" and ncp_exit(sim.ncp_exit) == ExitCode.TIMEOUT
    assert sim.primary.boot.trial


def test_a_primary_that_sends_no_telemetry_is_judged_by_its_version_report(monkeypatch):
    """A firmware with only the Blynk driver never confirms to the cloud: the new version that
    reported in and ran through the window without going back is all a cloud can know."""
    monkeypatch.setattr(PrimaryDevice, "_send_telemetry", lambda self: None)
    sim = once(window=10.0)
    assert sim.ncp_exit == "reported" and ncp_exit(sim.ncp_exit) == ExitCode.OK


@pytest.mark.parametrize("outcome", ["up_to_date"])
def test_an_up_to_date_primary_ends_at_once(outcome):
    sim = Simulation(provisioned(OLD, slot=128 * 1024), Shipment.from_bytes(OLD, "fw.bin"),
                     ncp_config=NcpConfig(once=True))
    sim.run_until(lambda s: s.ncp_exit is not None, limit=60)
    assert sim.ncp_exit == outcome and ncp_exit(outcome) == ExitCode.OK
