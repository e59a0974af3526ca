"""The C reference firmware (examples/firmware) in its own CI, as a firmware engineer writes it:
each scenario a few lines of the pytest plugin's fixtures, nothing else. The plugin's settings
are in pyproject.toml; conftest.py builds the firmware and names its command."""

import pytest

from dualmcu import Misbehave

pytestmark = pytest.mark.slow


def test_an_update_is_installed_and_the_new_version_reported(dualmcu_ncp, dualmcu_image):
    outcome = dualmcu_ncp(dualmcu_image("1.1.0")).outcome()
    assert (outcome.verdict, outcome.version, outcome.firmware_starts) == ("confirmed", "1.1.0", 2), outcome


def test_a_noisy_link_ends_in_the_right_image(dualmcu_ncp, dualmcu_image):
    lies = Misbehave(corrupt_chunk_at=4096, chunk_crc_at=8192)
    outcome = dualmcu_ncp(dualmcu_image("1.1.0"), misbehave=lies).outcome()
    assert outcome.verdict == "confirmed" and outcome.retries == 2, outcome
    assert outcome.misbehaved == ("corrupt_chunk", "chunk_crc")


def test_an_ncp_reboot_mid_transfer_is_noticed_and_the_update_offered_again(dualmcu_ncp, dualmcu_image):
    ncp = dualmcu_ncp(dualmcu_image("1.1.0", size=256 * 1024), firmware_args=["--flash-ms-per-kib", "5"])
    ncp.wait_for("ota_progress", where=lambda e: e["offset"] >= 64 * 1024)
    ncp.reboot()
    outcome = ncp.outcome()
    assert outcome.verdict == "confirmed" and outcome.offers == 2, outcome


def test_an_ncp_gone_mid_transfer_ends_cleanly_on_the_old_image_or_updated(dualmcu_ncp, dualmcu_image):
    ncp = dualmcu_ncp(dualmcu_image("1.1.0", size=256 * 1024), firmware_args=["--flash-ms-per-kib", "5"])
    ncp.wait_for("ota_progress", where=lambda e: e["offset"] >= 64 * 1024)
    ncp.vanish(6.0)  # longer than the firmware's three missed heartbeats
    outcome = ncp.outcome()
    assert outcome.verdict == "confirmed" or (not outcome.ok and outcome.version == "1.0.0"), outcome
    assert ncp.wait_for("telemetry", ota_state="failed", ota_reason="ncp_restarted")


@pytest.mark.parametrize("lie,reason", [(Misbehave(offer_type="TMPL0OTHER"), "wrong_type"),
                                        (Misbehave(offer_version="0.9.0"), "not_newer")])
def test_the_firmware_itself_refuses_another_product_or_an_older_version(dualmcu_ncp, dualmcu_image, lie, reason):
    outcome = dualmcu_ncp(dualmcu_image("1.1.0"), misbehave=lie).outcome()
    assert (outcome.verdict, outcome.reason, outcome.version) == ("refused", reason, "1.0.0"), outcome


def test_a_slow_flash_is_updated_within_the_drivers_timeouts(dualmcu_ncp, dualmcu_image):
    # 2 s to program each 1 KiB chunk: close to the 5 s a plain NCP waits for a write's answer
    outcome = dualmcu_ncp(dualmcu_image("1.1.0", size=4096), firmware_args=["--flash-ms-per-kib", "2000"]).outcome()
    assert outcome.verdict == "confirmed" and outcome.retries == 0, outcome


def test_the_baud_switch_is_undone_after_an_ncp_reboot(dualmcu_ncp, dualmcu_image):
    ncp = dualmcu_ncp(dualmcu_image("1.1.0"), firmware_args=["--baud-switch", "230400"], confirm_window=30)
    ncp.wait_for("baud_change", baud=230400)
    ncp.wait_for("telemetry", ota_state="confirmed")
    ncp.reboot()  # back at 38400, as a real NCP after a reboot: the firmware must follow
    outcome = ncp.outcome()
    assert outcome.verdict == "confirmed" and outcome.version == "1.1.0", outcome


# -- the builds with a defect fail the scenarios above ---------------------------------------------


def test_a_build_that_stays_at_its_switched_rate_fails_the_baud_scenario(dualmcu_ncp, dualmcu_image):
    ncp = dualmcu_ncp(dualmcu_image("1.1.0"), firmware_args=["--baud-switch", "230400", "--keep-switched-baud"],
                      timeout=8)
    ncp.wait_for("telemetry", ota_state="confirmed")
    ncp.reboot()
    outcome = ncp.outcome()
    assert outcome.verdict == "timeout" and outcome.version == "1.0.0", outcome


def test_a_build_that_skips_its_type_check_fails_the_wrong_type_scenario(dualmcu_ncp, dualmcu_image):
    lie = Misbehave(offer_type="TMPL0OTHER")
    outcome = dualmcu_ncp(dualmcu_image("1.1.0"), misbehave=lie, firmware_args=["--skip-type-check"]).outcome()
    assert outcome.verdict == "confirmed" and outcome.reason != "wrong_type"  # installed: the test above fails


@pytest.mark.parametrize("build,confirmed", [([], ["resend_acknowledged client_otaUpdateWrite"]),
                                             (["--tolerate-duplicates"], [])], ids=["strict", "tolerant"])
def test_a_fuzz_campaign_finds_the_duplicate_chunk_hazard_of_the_strict_build_only(refmcu, tmp_path, build,
                                                                                   confirmed):
    import json
    import subprocess
    import sys

    from dualmcu import make_image

    factory = make_image("1.0.0", "TMPLREF", tmp_path / "factory.bin")
    cmd = " ".join([refmcu, "--port", "{port}", "--flash", str(tmp_path / "f.flash"), "--provision", str(factory),
                    *build])
    r = subprocess.run([sys.executable, "-m", "dualmcu", "fuzz", "--target", "primary", "--framing", "blynk",
                        "--target-cmd", cmd, "--duration", "30", "--examples", "60", "--seed", "1", "--json",
                        "--out", str(tmp_path / "found")], capture_output=True, text=True, timeout=600)
    found = [json.loads(line) for line in r.stdout.splitlines() if '"event":"finding"' in line.replace(" ", "")]
    assert sorted(f["class"] for f in found if f["verdict"] == "confirmed") == confirmed, r.stdout[-3000:]
    assert r.returncode == (1 if confirmed else 0), r.stderr[-2000:]


def test_fuzz_takes_the_firmware_as_the_sides_do(refmcu, tmp_path):
    """-p 'exec:... {pty}' runs the target as --target-cmd does."""
    import subprocess
    import sys

    from dualmcu import make_image

    factory = make_image("1.0.0", "TMPLREF", tmp_path / "factory.bin")
    port = f"exec:{refmcu} --port {{pty}} --flash {tmp_path / 'f.flash'} --provision {factory} --tolerate-duplicates"
    r = subprocess.run([sys.executable, "-m", "dualmcu", "fuzz", "--target", "primary", "--framing", "blynk", "-p", port,
                        "--examples", "10", "--out", str(tmp_path / "found")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "event=result cases=10" in r.stderr, r.stderr[-2000:]
