"""Both emulator cores wired together on a virtual clock: whole updates and each way they fail."""

import hashlib

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.sim import Simulation
from dualmcu.framing import get_profile
from dualmcu.ncp.update import Network, Shipment
from dataclasses import replace

from dualmcu.primary.boot import BootStore, verify_slot
from dualmcu.primary.device import PrimaryConfig
from dualmcu.primary.ota import OtaConfig
from dualmcu.rpc import message as M
from dualmcu.rpc.device import SetBaud
from support import active_image, provisioned

SLOT = 512 * 1024
OLD = build_image(make_info("1.0.0", "TMPL1", build="Jan  1 2026 00:00:00"), 80_000)
NEW = build_image(make_info("1.1.0", "TMPL1", build="Feb  1 2026 00:00:00"), 200_000)


def device(image=OLD, slot=SLOT):
    return provisioned(image, slot)


def sim(new=NEW, flash=None, **kw):
    ship = Shipment.from_bytes(new, "fw.bin") if new is not None else None
    return Simulation(flash or device(), ship, **kw)




@pytest.mark.parametrize("framing", ["cobs", "blynk"])
def test_full_update_installs_and_confirms_the_new_image(framing):
    s = sim(framing=framing)
    assert s.run_update() == "success"
    st, image = active_image(s.flash)
    assert hashlib.sha256(image).digest() == hashlib.sha256(NEW).digest()
    assert st.active == 1 and st.confirmed == 1 and not st.trial
    assert verify_slot(s.flash, st, 0)  # the old image stays as a fallback
    kinds = s.kinds("primary")
    assert kinds.index("ota_installed") < kinds.index("rebooting") < kinds.index("confirmed")
    assert s.find("primary_firmware", "ncp")[-1]["version"] == "1.1.0"
    assert s.ncp.ep.stats["stale_results"] == 0 and s.primary.ep.decoder_stats["bad_crc"] == 0


def test_blynk_chunks_never_exceed_what_one_frame_carries():
    s = sim(framing="blynk", primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=4000)))
    assert s.run_update() == "success"
    assert s.find("ota_start", "ncp")[0]["chunk_size"] == 1536 - 16


@pytest.mark.parametrize(
    "new,cfg,reason",
    [
        (build_image(make_info("2.0.0", "TMPL1", build="Jan  1 2026 00:00:00"), SLOT + 1), OtaConfig(), "too_large"),
        (build_image(make_info("0.9.0", "TMPL1", build="Jan  1 2026 00:00:00"), 50_000), OtaConfig(), "not_newer"),
        (build_image(make_info("2.0.0", "TMPL1", build="Jan  1 2026 00:00:00", **{"hw-rev": "B C"}), 50_000),
         OtaConfig(), "hw_rev_mismatch"),
        (build_image(make_info("2.0.0", "TMPL1", build="Jan  1 2026 00:00:00", **{"min-bootloader": "2.1"}), 50_000),
         OtaConfig(), "bootloader_too_old"),
    ],
)
def test_refusals_have_reason_codes_and_write_only_the_reason(new, cfg, reason):
    """A refusal leaves both images and the boot choice alone; the boot state keeps the
    reason code (it survives a reboot and travels in telemetry)."""
    s = sim(new, primary_config=PrimaryConfig(ota=cfg))
    before = BootStore(s.flash).load()
    slots = s.flash.read(s.flash.geometry.slot_offset(0), 2 * s.flash.geometry.slot_size)
    outcome = s.run_update()
    reasons = [e["reason"] for e in s.find("ota_refused", "primary")]
    after = BootStore(s.flash).load()
    assert after.last_failure_reason == reason
    assert (after.active, after.confirmed, after.trial, after.slots[0]) == (0, 0, False, before.slots[0])
    if reason in ("hw_rev_mismatch", "bootloader_too_old"):
        # Known only from the image's tag, in its first chunk: refused before it is written.
        assert outcome == "device_failed" and reasons[0] == reason
        assert s.find("ota_accepted", "primary") and s.flash.read(
            s.flash.geometry.slot_offset(1), 1024) == b"\xff" * 1024
    else:
        assert outcome == "refused" and reasons == [reason]
        assert replace(after, seq=0, last_failure=0) == replace(before, seq=0, crash_loop=0)
        assert s.flash.read(s.flash.geometry.slot_offset(0), 2 * s.flash.geometry.slot_size) == slots
    assert s.find("telemetry", "ncp")[-1]["last_failure"] == reason


def test_another_products_shipment_is_never_offered():
    """The cloud matches by fw-type: the NCP does not offer it, and says why."""
    other = build_image(make_info("2.0.0", "OTHER", build="Jan  1 2026 00:00:00"), 50_000)
    s = sim(other)
    g = s.flash.geometry
    before = s.flash.read(g.slot_offset(0), 2 * g.slot_size)
    assert s.run_update() == "wrong_type"
    assert not s.find("ota_offer", "ncp") and s.flash.read(g.slot_offset(0), 2 * g.slot_size) == before
    assert s.find("ota_outcome", "ncp")[-1]["device_type"] == "TMPL1"


def test_any_version_policy_accepts_a_downgrade():
    older = build_image(make_info("0.9.0", "TMPL1", build="Jan  1 2026 00:00:00"), 50_000)
    s = sim(older, primary_config=PrimaryConfig(ota=OtaConfig(version_policy="any")))
    assert s.run_update() == "success"


def test_a_lost_write_result_is_acknowledged_as_a_duplicate_without_rewriting():
    """The reference primary's hazard: the resend of a chunk already written."""
    profile = get_profile("cobs")
    lost = []

    def drop_third_write_result(data):
        d = profile.decoder()
        out = b""
        for fr in d.feed(data):
            msg = M.parse(fr.message)
            if isinstance(msg, M.Result) and msg.msg_id == 9 and not lost:
                lost.append(msg)
                continue
            out += profile.encode(fr.message)
        return out

    s = sim(tap_to_ncp=drop_third_write_result)
    assert s.run_update() == "success"
    assert lost and s.find("ota_duplicate", "primary")
    assert s.find("ota_retry", "ncp")[0]["reason"] == "timeout"
    assert s.find("ota_installed", "primary")[0]["duplicates"] == 1
    assert hashlib.sha256(active_image(s.flash)[1]).digest() == hashlib.sha256(NEW).digest()


def corrupt_writes(after_offset=0):
    """Flip a byte inside every write chunk at or after ``after_offset``."""
    profile = get_profile("cobs")
    from dualmcu.rpc.interface import INTERFACE

    write = INTERFACE["client_otaUpdateWrite"]

    def tap(data):
        out = b""
        for fr in profile.decoder().feed(data):
            msg = M.parse(fr.message)
            if isinstance(msg, M.Invoke) and msg.uid == write.uid:
                args = write.decode_args(msg.args)
                if args["offset"] >= after_offset:
                    args["chunk"] = bytes([args["chunk"][0] ^ 0xFF]) + args["chunk"][1:]
                    msg = M.Invoke(msg.uid, msg.msg_id, write.encode_args(args))
            out += profile.encode(msg.encode())
        return out

    return tap


def test_retries_exhausted_cancels_with_download_limit_and_old_image_stays():
    s = sim(tap_to_primary=corrupt_writes(after_offset=4096))
    assert s.run_update() == "download_limit"
    retries = s.find("ota_retry", "ncp")
    # each corrupted chunk in the window is retried; the first to spend its retries ends it
    assert [r["attempt"] for r in retries if r["offset"] == 4096] == [1, 2, 3, 4, 5, 6]
    assert min(r["offset"] for r in retries) == 4096
    assert {e["reason"] for e in s.find("ota_refused", "primary")} == {"chunk_crc"}
    assert s.find("ota_cancelled", "primary")[-1]["reason"] == "ncp_cancel"
    st, image = active_image(s.flash)
    assert image == OLD and st.confirmed == 0 and not st.slots[1].installed


def test_download_failure_without_prefetch_cancels_on_the_primary():
    s = sim(network=Network(rate=200_000, fail_at=100_000))
    assert s.run_update() == "download_failed"
    assert s.find("ota_cancelled", "primary")[-1]["reason"] == "ncp_cancel"
    assert active_image(s.flash)[1] == OLD


def test_prefetch_downloads_first_and_its_failure_never_reaches_a_write():
    ok = sim(primary_config=PrimaryConfig(ota=OtaConfig(prefetch=True)), network=Network(rate=100_000))
    assert ok.run_update() == "success"
    assert ok.find("prefetch_done", "ncp") and ok.find("ota_start", "ncp")[0]["prefetched"]
    # 200 kB at 100 kB/s: two virtual seconds of download before the first write
    assert ok.find("ota_start", "ncp")[0]["t"] - ok.find("prefetch_start", "ncp")[0]["t"] == pytest.approx(2.0, abs=0.01)

    bad = sim(primary_config=PrimaryConfig(ota=OtaConfig(prefetch=True)), network=Network(rate=100_000, fail_at=50_000))
    assert bad.run_update() == "prefetch_failed"
    assert bad.find("ota_cancelled", "primary")[0]["reason"] == "prefetch_failed:download_timeout"
    assert "client_otaUpdateWrite" not in str(bad.events) and not bad.find("ota_progress", "ncp")


def test_primary_cancels_by_itself_when_writes_stop():
    dead = []

    def ncp_goes_silent(data):
        return b"" if dead else data

    s = sim(tap_to_primary=ncp_goes_silent, primary_config=PrimaryConfig(ota=OtaConfig(ota_timeout=60)))
    s.run_until(lambda s: len(s.find("ota_progress", "ncp")) >= 10)
    dead.append(True)
    t0 = s.now
    s.run_until(lambda s: bool(s.find("ota_cancelled", "primary")), limit=t0 + 120)
    (c,) = s.find("ota_cancelled", "primary")
    assert c["reason"] == "timeout" and 59.9 < c["t"] - t0 < 61
    assert active_image(s.flash)[1] == OLD


def test_wrong_final_digest_is_never_installed():
    ship = Shipment.from_bytes(NEW, "fw.bin")
    ship.digests = type(ship.digests)(ship.size, ship.digests.crc32 ^ 1, ship.digests.md5, ship.digests.sha256)
    s = Simulation(device(), ship)
    assert s.run_update() == "finish_failed"
    assert {e["reason"] for e in s.find("ota_refused", "primary")} == {"crc_mismatch"}
    st, image = active_image(s.flash)
    assert image == OLD and not st.trial


@pytest.mark.parametrize("near", [1000, 150_000, len(NEW) - 10])
def test_a_byte_the_flash_took_wrong_is_found_at_finish(near):
    # Below a checkpoint the slot is read back when the checkpoint is made, the rest at
    # Finish: a bit the flash failed to program anywhere must fail the digests, and the
    # image is never installed.
    at = next(i for i in range(near, len(NEW)) if NEW[i])  # a byte with a bit to lose
    s = sim()
    base = s.flash.geometry.slot_offset(1)
    store, write, hits = s.flash._store, s.flash._store.write, []

    def faulty(offset, data):
        if offset <= base + at < offset + len(data) and data.count(0xFF) != len(data):  # a program
            data = bytearray(data)
            data[base + at - offset] &= data[base + at - offset] - 1  # its lowest 1 is lost
            hits.append(offset)
        write(offset, bytes(data))

    store.write = faulty
    assert s.run_update() == "finish_failed" and hits
    assert {e["reason"] for e in s.find("ota_refused", "primary")} == {"crc_mismatch"}
    st, image = active_image(s.flash)
    assert image == OLD and not st.trial


@pytest.mark.parametrize("behaviour", ["fail-health", "crash"])
def test_an_image_that_never_confirms_is_rolled_back(behaviour):
    bad = build_image(make_info("1.1.0", "TMPL1", build="Jan  1 2026 00:00:00", **{"dualmcu-test": behaviour}), 120_000)
    s = sim(bad)
    assert s.run_update() == "rollback"
    # A failed health check rolls back at once and says so; a crash spends every attempt.
    expected = {"fail-health": "health_check_failed", "crash": "trial_attempts_spent"}[behaviour]
    assert s.find("rollback", "primary")[0]["reason"] == expected
    assert BootStore(s.flash).load().last_failure_reason == expected
    st, image = active_image(s.flash)
    assert image == OLD and st.active == 0 and st.confirmed == 0 and not st.trial
    outcome = s.find("ota_outcome", "ncp")[-1]
    assert outcome["new_version_seen"] is (behaviour == "fail-health")
    # old -> (new) -> old, as the cloud sees it
    versions = [e["version"] for e in s.find("primary_firmware", "ncp")]
    assert versions[0] == versions[-1] == "1.0.0"


def test_primary_power_cycled_mid_transfer_boots_the_old_image_and_the_ncp_notices():
    s = sim()
    s.run_until(lambda s: len(s.find("ota_progress", "ncp")) >= 50)
    s.restart_primary()  # power cut: a new device from the same flash
    s.run_until(lambda s: len(s.find("primary_firmware", "ncp")) >= 2)
    assert s.primary.info["mcu"] == "1.0.0" and s.find("ota_interrupted", "ncp")
    assert active_image(s.flash)[1] == OLD
    # the cloud offers the update again, and the second transfer completes
    assert s.run_update() == "success"
    assert len(s.find("ota_offer", "ncp")) == 2
    assert hashlib.sha256(active_image(s.flash)[1]).digest() == hashlib.sha256(NEW).digest()


def test_nested_digest_calls_happen_inside_finish():
    s = sim()
    s.run_update()
    ncp_stats = s.ncp.ep.stats
    # the primary invoked GetCRC32 and GetSHA256 while the NCP's Finish call was pending
    assert ncp_stats["invokes_in"] >= 2
    fin = [i for i, (side, k, f) in enumerate(s.events) if k == "ota_finished"][0]
    inst = [i for i, (side, k, f) in enumerate(s.events) if k == "ota_installed"][0]
    assert inst < fin


def test_a_device_already_on_the_shipment_is_up_to_date():
    s = sim(new=OLD)
    assert s.run_update() == "up_to_date"
    assert not s.find("ota_offer", "ncp")


def test_baud_change_answers_at_the_old_rate_then_switches():
    s = sim(new=None)
    s.run_until(lambda s: s.primary.ready)
    c = s.primary.ep.call("hw_setUartBaudRate", {"baud": 921600})
    s.ncp.receive(s.primary.data_to_send(), s.now)
    # the RESULT is already queued when the NCP asks its shell to switch
    assert s.ncp.actions == [SetBaud(921600)] and s.ncp.ep._out
    s.run_until(lambda s: c.done)
    assert c.ok and c.result is True


def test_a_port_that_echoes_is_said_once_and_its_echoes_never_keep_the_ncp_alive():
    """The NCP goes quiet and the line echoes what the primary sends (an RS-485 transceiver
    with its receiver on, TX shorted to RX). The primary's own getState calls come back: they
    must not count as hearing from the NCP, or it would never notice that the NCP is gone."""
    echo = []

    def back_to_the_primary(data):
        if not echo:
            return data
        s.link.send("a", data, s.now)
        return b""

    s = sim(new=None, tap_to_primary=lambda d: b"" if echo else d, tap_to_ncp=back_to_the_primary,
            primary_config=PrimaryConfig(heartbeat=10))
    s.run_until(lambda s: s.primary.ready)
    echo.append(1)
    s.run_until(lambda s: bool(s.find("ncp_lost", "primary")), limit=100)
    assert s.find("ncp_lost", "primary")[0]["misses"] == 3
    said = s.find("rpc_echo", "primary")
    assert len(said) == 1 and said[0]["name"] == "blynk_getState"
    assert not s.find("rpc_unknown_uid", "primary")


def test_the_primary_reinitialises_after_three_missed_heartbeats():
    silent = []
    s = sim(new=None, tap_to_primary=lambda d: b"" if silent else d,
            primary_config=PrimaryConfig(heartbeat=10))
    s.run_until(lambda s: s.primary.ready)
    silent.append(1)
    s.run_until(lambda s: bool(s.find("ncp_lost", "primary")), limit=100)
    assert s.find("ncp_lost", "primary")[0]["misses"] == 3
    silent.clear()
    s.run_until(lambda s: len(s.find("ready", "primary")) == 2, limit=200)


def test_an_ncp_reboot_makes_the_primary_initialise_it_again():
    s = sim(new=None)
    s.run_until(lambda s: s.primary.ready)
    c = s.primary.ep.call("ncp_reboot")
    s.run_until(lambda s: len(s.find("initialize", "ncp")) == 2, limit=30)
    assert c.ok and s.find("ncp_event", "primary")[0]["event"] == "ncp_rebooting"


def test_the_rest_of_the_ncp_interface_answers():
    s = sim(new=None)
    s.run_until(lambda s: s.primary.ready)
    from dualmcu.rpc import INTERFACE, NCP

    calls = {fn.name: s.primary.ep.call(fn.name, {p.name: _zero(p.type) for p in fn.args})
             for fn in INTERFACE.served_by(NCP) if fn.kind == "invoke"
             and fn.name not in ("ncp_reboot", "hw_setUartBaudRate", "blynk_otaUpdatePrefetch")}
    s.run_until(lambda s: all(c.done for c in calls.values()), limit=60)
    failed = {n: c.status for n, c in calls.items() if not c.ok}
    assert failed == {}
    assert calls["ncp_hasUID"].result is False  # uid 0 is served by nobody
    assert calls["blynk_getNcpVersion"].values["version"]
    from dualmcu.rpc.interface import STATES

    assert calls["blynk_getState"].result in STATES  # the calls above move the state around


def _zero(t):
    return {bool: False, int: 0, float: 0.0, str: "", bytes: b""}[t.py]


def test_an_ncp_that_never_heard_a_primary_never_calls_it_lost():
    """With no peer the NCP said `primary_lost tries=5` every 45 s of a primary it never heard;
    the watchdog's one no_peer line says it. A primary heard once and then gone is lost."""
    from dualmcu.ncp.core import NcpConfig, NcpDevice

    said = []
    ncp = NcpDevice(get_profile("cobs"), NcpConfig(), 0.0, emit=lambda kind, **f: said.append(kind))
    now = 0.0
    while now < 300:
        now = ncp.next_deadline()
        ncp.tick(now)
        ncp.data_to_send()
    assert "primary_lost" not in said
    s = sim()
    s.run_update()
    s.tap_to_ncp = lambda data: b""  # heard, then silent
    s.run_until(lambda x: bool(x.find("primary_lost", "ncp")), limit=s.now + 300)
    assert s.find("primary_lost", "ncp")


@pytest.mark.parametrize("lie,expect", [
    ({"offer_type": "TMPLOTHER"}, "wrong_type"),
    ({"offer_version": "0.1.0"}, "not_newer"),
])
def test_a_misbehaving_cloud_reaches_the_primarys_own_offer_checks(lie, expect):
    """The faithful cloud never offers another product's image nor an older version, so a
    firmware's own checks were never reached; --misbehave makes it lie on purpose."""
    from dualmcu.ncp.core import Misbehave, NcpConfig

    s = sim(ncp_config=NcpConfig(misbehave=Misbehave(**lie)))
    assert s.run_update() == "refused"
    (refused,) = s.find("ota_refused", "primary")
    assert refused["reason"] == expect
    assert s.find("misbehaved", "ncp")[0]["what"] == "offer"


@pytest.mark.parametrize("lie", [{"corrupt_chunk_at": 4096}, {"chunk_crc_at": 4096}])
def test_a_chunk_sent_once_wrong_is_refused_and_its_resend_lands(lie):
    from dualmcu.ncp.core import Misbehave, NcpConfig

    s = sim(ncp_config=NcpConfig(misbehave=Misbehave(**lie)))
    assert s.run_update() == "success"
    assert [r["offset"] for r in s.find("ota_retry", "ncp")] == [4096]
    assert [r["reason"] for r in s.find("ota_refused", "primary")] == ["chunk_crc"]
    assert active_image(s.flash)[1] == NEW


def test_a_cloud_that_lies_about_the_digest_never_gets_the_image_installed():
    from dualmcu.ncp.core import Misbehave, NcpConfig

    s = sim(ncp_config=NcpConfig(misbehave=Misbehave(wrong_crc32=True)))
    assert s.run_update() == "finish_failed"
    assert active_image(s.flash)[1] == OLD
