"""The device-side safety checklist, item by item, on the virtual clock.

Each test runs the real NCP and primary cores through the simulated link, and asserts on
what a firmware engineer would look at: the boot state in flash, the configuration stores,
the images' digests, the reason codes, and what the cloud stand-in recorded.
"""

import datetime
import hashlib

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.ncp.core import NcpConfig
from dualmcu.ncp.update import Shipment
from dualmcu.primary.boot import Bootloader, BootStore
from dualmcu.primary.config import ConfigStore
from dualmcu.framing import get_profile
from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
from dualmcu.primary.flash import Flash, FlashError, Geometry, Identity
from dualmcu.primary.ota import OtaConfig
from dualmcu.sim import Simulation
from support import BUILD, active_image

OLD = build_image(make_info("1.0.0", "TMPLCK", build=BUILD), 60_000, seed=1)


def new(version="1.1.0", size=90_000, **tag):
    return build_image(make_info(version, "TMPLCK", build=BUILD, **tag), size, seed=2)


def device(identity=Identity(), image=OLD):
    f = Flash.in_memory(Geometry(4096, 256 * 1024), identity=identity)
    Bootloader(f).provision(image)
    return f


def sim(shipment, flash=None, ota=None, ncp=None, **primary):
    flash = flash or device()
    return Simulation(flash, Shipment.from_bytes(shipment, "fw.bin"), ncp_config=ncp or NcpConfig(),
                      primary_config=PrimaryConfig(ota=ota or OtaConfig(), **primary))


def utc_ms(text):
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)


def running(s):
    st, image = active_image(s.flash)
    return st, hashlib.sha256(image).digest()


# -- 1. commit timer ---------------------------------------------------------------------------


def test_an_image_that_hangs_is_rolled_back_by_the_commit_timer():
    s = sim(new(**{"dualmcu-test": "hang"}), commit_timeout=30.0)
    assert s.run_update() == "rollback"
    rollback = s.find("rollback", "primary")
    assert [r["reason"] for r in rollback] == ["commit_timeout"]
    # The timer fired 30 s after the trial boot, not before, and the hung image never talked.
    trial_boot = next(e for e in s.find("booted", "primary") if e["trial"])
    fired = s.find("commit_timeout", "primary")[0]
    assert fired["t"] - trial_boot["t"] == pytest.approx(30.0, abs=0.01)
    st, digest = running(s)
    assert digest == hashlib.sha256(OLD).digest() and st.confirmed == st.active == 0 and not st.trial
    assert st.last_failure_reason == "commit_timeout" and st.rollbacks == 1 and st.crash_loop == 0
    assert s.ncp.telemetry["ota_state"] == "rolled_back" and s.ncp.telemetry["ota_reason"] == "commit_timeout"


@pytest.mark.parametrize("confirm_after,outcome", [(5, "success"), (45, "rollback")])
def test_a_slow_health_check_confirms_only_within_the_commit_timeout(confirm_after, outcome):
    s = sim(new(**{"dualmcu-test": f"slow-confirm:{confirm_after}"}), commit_timeout=30.0)
    assert s.run_update() == outcome
    st, digest = running(s)
    if outcome == "success":
        assert st.active == 1 and not st.trial and s.find("confirmed", "primary")
        assert s.ncp.telemetry["ota_state"] == "confirmed"
    else:
        assert st.active == 0 and st.last_failure_reason == "commit_timeout"
        assert not s.find("confirmed", "primary")


# -- 2. configuration that survives a rollback -------------------------------------------------


def test_configuration_is_carried_forward_and_migrated_on_the_trial_boot():
    s = sim(new(**{"config-schema": "3"}))
    # A setting from the cloud, made while the old image runs, lives in its store.
    s.run_until(lambda s: s.primary.ready)
    s.ncp.ep.notify("client_blynkVPinChange", {"vpin": 7, "value": b"kitchen"})
    assert s.run_update() == "success"
    old_cfg, new_cfg = ConfigStore(s.flash, 0).load(), ConfigStore(s.flash, 1).load()
    assert old_cfg.schema == 1 and old_cfg.values["V7"] == "kitchen"
    assert new_cfg.schema == 3 and new_cfg.values["V7"] == "kitchen"
    assert new_cfg.values["schema_2"] and new_cfg.values["schema_3"]
    loaded = s.find("config_loaded", "primary")[-1]
    assert (loaded["source"], loaded["from_schema"], loaded["schema"]) == ("carried", 1, 3)


def test_a_breaking_migration_rolls_back_to_the_old_configuration_untouched():
    """The guide's mistake 4: configuration that stays new after the firmware rolls back."""
    s = sim(new(**{"dualmcu-test": "breaking-migration", "config-schema": "2"}))
    s.run_until(lambda s: s.primary.ready)
    g = s.flash.geometry
    old_store = s.flash.read(g.config_offsets(0)[0], 2 * g.page_size)
    assert s.run_update() == "rollback"
    assert s.find("config_migrated", "primary")[0]["breaking"] is True
    # The new image wrote a schema the old one cannot read, into its own store only.
    broken = ConfigStore(s.flash, 1).load()
    assert broken.schema == 2 and "report_interval_ms" in broken.values
    assert s.flash.read(g.config_offsets(0)[0], 2 * g.page_size) == old_store
    st, digest = running(s)
    assert digest == hashlib.sha256(OLD).digest() and st.last_failure_reason == "health_check_failed"
    back = s.find("config_loaded", "primary")[-1]
    assert (back["source"], back["schema"]) == ("own", 1)
    assert s.primary.config.values["report_interval_s"] == "60"


def test_a_store_of_a_newer_schema_is_never_guessed_at():
    flash = device()
    s = sim(new(), flash=flash)
    s.run_until(lambda s: s.primary.ready)
    store = ConfigStore(flash, 0)
    rec = store.load()
    store.store(type(rec)(9, rec.owner, {"renamed": "x"}))
    s.restart_primary()
    ev = s.find("config_unreadable", "primary")[-1]
    assert (ev["schema"], ev["own_schema"]) == (9, 1)
    assert BootStore(flash).load().last_failure_reason == "config_unreadable"


# -- 3. compatibility before writing -----------------------------------------------------------


@pytest.mark.parametrize("tag,identity,reason", [
    ({"hw-rev": "B"}, Identity("A"), "hw_rev_mismatch"),
    ({"hw-rev": "A, B"}, Identity("C"), "hw_rev_mismatch"),
    ({"min-bootloader": "1.2.0"}, Identity("A", "1.1.9"), "bootloader_too_old"),
])
def test_an_incompatible_image_is_refused_before_a_byte_is_written(tag, identity, reason):
    s = sim(new(**tag), flash=device(identity))
    ops = []
    s.flash.interrupt = lambda op, kind, off, n: ops.append((kind, off)) or None
    # The cloud stops at the device's report, and records its reason.
    assert s.run_update() == "device_failed"
    assert s.find("ota_outcome", "ncp")[-1]["reason"] == reason
    refused = s.find("ota_refused", "primary")[0]
    assert refused["reason"] == reason and refused["offset"] == 0
    base = s.flash.geometry.slot_offset(1)
    assert not [o for k, o in ops if k == "program" and o >= base], "a byte of the image was programmed"
    assert BootStore(s.flash).load().last_failure_reason == reason


@pytest.mark.parametrize("tag,identity", [({"hw-rev": "A B"}, Identity("B")),
                                          ({"min-bootloader": "1.2"}, Identity("A", "1.10.0"))])
def test_a_compatible_image_installs(tag, identity):
    s = sim(new(**tag), flash=device(identity))
    assert s.run_update() == "success"


def test_hardware_does_not_change_and_a_bootloader_update_is_kept(tmp_path):
    path = tmp_path / "dev.flash"
    Flash.open(path, Geometry(4096, 64 * 1024), identity=Identity("B", "1.0.0")).close()
    with pytest.raises(FlashError, match="hardware revision B, not A"):
        Flash.open(path, identity=Identity("A", "1.0.0"))
    Flash.open(path, identity=Identity("B", "2.0.0")).close()
    f = Flash.open(path)
    assert f.identity == Identity("B", "2.0.0")
    f.close()


# -- 4. deferral --------------------------------------------------------------------------------


def test_an_offer_outside_the_install_window_waits_for_it_then_installs():
    s = sim(new(), ota=OtaConfig(install_window=(2, 5)),
            ncp=NcpConfig(wall_clock_ms=utc_ms("2026-11-21T01:00:00")))
    assert s.run_update(limit=3 * 3600) == "success"
    deferred = s.find("ota_deferred", "primary")
    assert deferred[0]["reason"] == "install_window"
    # The wait is what the clock said: from 01:00 plus the offer's few seconds, to 02:00.
    assert 3590 <= deferred[0]["seconds"] <= 3600
    installed = s.find("ota_installed", "primary")[0]["t"]
    assert installed >= 3600 - 5
    assert s.find("ota_deferred", "ncp")[0]["seconds"] == deferred[0]["seconds"]
    assert s.ncp.deferrals == 1


def test_a_low_battery_defers_until_it_has_charged():
    # 10 %, charging 20 % an hour, threshold 20 %: half an hour.
    s = sim(new(), ota=OtaConfig(battery=10, battery_rate=20, min_battery=20))
    assert s.run_update(limit=7200) == "success"
    d = s.find("ota_deferred", "primary")[0]
    assert d["reason"] == "low_battery" and 1790 <= d["seconds"] <= 1800
    assert s.find("ota_installed", "primary")[0]["t"] >= 1790


def test_a_battery_that_never_recovers_ends_as_deferred_in_the_cloud():
    s = sim(new(), ota=OtaConfig(battery=5, battery_rate=0, min_battery=20),
            ncp=NcpConfig(max_defer=3 * 3600))
    assert s.run_update(limit=6 * 3600) == "deferred"
    assert len(s.find("ota_deferred", "primary")) == 4  # looked at again every hour
    st, digest = running(s)
    assert digest == hashlib.sha256(OLD).digest() and not st.trial and not st.slots[1].installed


def test_a_refusal_stays_a_refusal_even_outside_the_window():
    s = sim(new("0.9.0"), ota=OtaConfig(install_window=(2, 5)),
            ncp=NcpConfig(wall_clock_ms=utc_ms("2026-11-21T01:00:00")))
    assert s.run_update() == "refused"
    assert not s.find("ota_deferred", "primary")


def test_a_power_cut_while_deferred_keeps_the_old_image_and_the_update_comes_again():
    s = sim(new(), ota=OtaConfig(battery=10, battery_rate=20, min_battery=20), ncp=NcpConfig(offers=3))
    s.run_until(lambda s: bool(s.find("ota_deferred", "ncp")))
    s.restart_primary()
    assert s.run_update(limit=7200) == "success"


# -- 5. telemetry ---------------------------------------------------------------------------------


def test_telemetry_reaches_the_cloud_with_counters_and_the_update_state():
    s = sim(new())
    assert s.run_update() == "success"
    s.run_until(lambda s: s.ncp.telemetry.get("ota_state") == "confirmed")
    t = s.ncp.telemetry
    assert t["version"] == "1.1.0" and t["hw_rev"] == "A" and t["bootloader"] == "1.0.0"
    assert t["boots"] == 2 and t["crash_loop"] == 0 and t["rollbacks"] == 0 and t["config_schema"] == 1
    states = [e["ota_state"] for e in s.find("telemetry", "ncp")]
    assert states.index("downloading") < states.index("written") < states.index("trial") < states.index("confirmed")


def test_the_last_failure_survives_reboots():
    s = sim(new(**{"dualmcu-test": "fail-health"}))
    assert s.run_update() == "rollback"
    for _ in range(3):
        s.restart_primary()
    assert BootStore(s.flash).load().last_failure_reason == "health_check_failed"
    s.run_until(lambda s: s.primary.ready and s.find("telemetry", "ncp")[-1]["boots"] >= 6)
    assert s.ncp.telemetry["last_failure"] == "health_check_failed"


def test_a_crash_loop_is_counted_until_the_image_is_healthy():
    crash = build_image(make_info("1.0.0", "TMPLCK", build=BUILD, **{"dualmcu-test": "crash"}), 30_000)
    f = device(image=crash)
    for _ in range(5):  # a confirmed image that crashes at every boot: a crash loop
        PrimaryDevice(f, get_profile("cobs"), PrimaryConfig(), 0.0)
    st = BootStore(f).load()
    assert (st.boots, st.crash_loop) == (5, 5)
    s = sim(new())  # a healthy image: the loop ends once it reaches the NCP
    s.run_until(lambda s: s.primary.ready)
    assert BootStore(s.flash).load().crash_loop == 0


# -- 6. mandatory updates -------------------------------------------------------------------------


def test_a_mandatory_recall_installs_an_older_build():
    s = sim(new("0.9.5"), ncp=NcpConfig(mandatory=True))
    assert s.run_update() == "success"
    assert s.find("ota_mandatory", "primary") and running(s)[0].active == 1


def test_a_minimum_version_makes_the_update_mandatory_for_devices_below_it():
    s = sim(new("0.9.5"), ncp=NcpConfig(min_version="1.0.1"))
    assert s.run_update() == "success"
    assert s.find("ota_mandatory", "primary")[0]["min_version"] == "1.0.1"


def test_mandatory_skips_the_window_but_never_the_battery():
    s = sim(new(), ota=OtaConfig(install_window=(2, 5), battery=10, battery_rate=20),
            ncp=NcpConfig(mandatory=True, wall_clock_ms=utc_ms("2026-11-21T12:00:00")))
    assert s.run_update(limit=7200) == "success"
    assert [d["reason"] for d in s.find("ota_deferred", "primary")] == ["low_battery"]


def test_a_device_that_installs_only_mandatory_updates_refuses_an_optional_one():
    s = sim(new(), ota=OtaConfig(version_policy="mandatory-only"))
    assert s.run_update() == "refused"
    assert s.find("ota_refused", "primary")[0]["reason"] == "not_mandatory"
    s2 = sim(new(), ota=OtaConfig(version_policy="mandatory-only"), ncp=NcpConfig(mandatory=True))
    assert s2.run_update() == "success"


def test_a_signed_minimum_bootloader_is_checked_under_the_signature():
    from dualmcu.image.signing import generate, load_keys, load_private, sign, verify_bytes

    priv, pub = generate()
    import tempfile, os
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "k.pub"), "wb") as f:
        f.write(pub)
    keys = load_keys([os.path.join(d, "k.pub")])
    image = sign(new(), load_private(priv), 5, ["dualmcu/1"], min_bootloader="2.0")
    assert verify_bytes(image, keys, "dualmcu/1", bootloader="1.9.9").reason == "bootloader_too_old"
    assert verify_bytes(image, keys, "dualmcu/1", bootloader="2.0.0").ok
    # A device whose bootloader is too old refuses the signed image at Finish, by its reason.
    from dualmcu.primary.boot import Trust

    factory = sign(OLD, load_private(priv), 1, ["dualmcu/1"])
    f = Flash.in_memory(Geometry(4096, 256 * 1024), identity=Identity("A", "1.5.0"))
    trust = Trust(keys, "dualmcu/1")
    Bootloader(f, trust=trust).provision(factory)
    s = Simulation(f, Shipment.from_bytes(image, "fw.bin"), primary_config=PrimaryConfig(trust=trust))
    s.run_update()
    assert "signature_bootloader_too_old" in [e["reason"] for e in s.find("ota_refused", "primary")]
    assert running(s)[0].active == 0
