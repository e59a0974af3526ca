"""The reference firmware as bare-metal Cortex-M3 code on QEMU's mps2-an385 board, updated over
the air through `dualmcu ncp`: a vector table, a polled CMSDK UART, no operating system, its flash
a host file through semihosting, a reset that QEMU (run with -no-reboot) answers by exiting."""

import pytest

from dualmcu import Misbehave

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dualmcu_firmware_command(refmcu_mps2):
    """What a user with a QEMU build writes in pytest.ini, as this module's firmware."""
    return ("qemu-system-arm -M mps2-an385 -display none -monitor none -no-reboot "
            "-semihosting-config enable=on,target=native -serial {pty} -kernel " + refmcu_mps2 +
            " -append '--flash {flash} --provision {factory} --slot-size 131072'")


def test_a_64k_image_is_installed_on_the_cortex_m_and_verified_after_its_reboot(dualmcu_ncp, dualmcu_image):
    outcome = dualmcu_ncp(dualmcu_image("1.1.0", size=64 * 1024)).outcome()
    assert (outcome.verdict, outcome.version, outcome.firmware_starts) == ("confirmed", "1.1.0", 2), outcome


def test_a_noisy_link_ends_in_the_right_image(dualmcu_ncp, dualmcu_image):
    lies = Misbehave(corrupt_chunk_at=8192, chunk_crc_at=16384)
    outcome = dualmcu_ncp(dualmcu_image("1.1.0", size=64 * 1024), misbehave=lies).outcome()
    assert outcome.verdict == "confirmed" and outcome.retries == 2, outcome


def test_an_ncp_reboot_mid_transfer(dualmcu_ncp, dualmcu_image):
    ncp = dualmcu_ncp(dualmcu_image("1.1.0", size=64 * 1024))
    ncp.wait_for("ota_progress", where=lambda e: e["offset"] >= 16384)
    ncp.reboot()
    outcome = ncp.outcome()
    assert outcome.verdict == "confirmed" and outcome.offers == 2, outcome


def test_a_power_cut_mid_transfer_boots_the_old_image_cleanly_and_the_update_lands(dualmcu_ncp, dualmcu_image):
    ncp = dualmcu_ncp(dualmcu_image("1.1.0", size=64 * 1024))
    ncp.wait_for("ota_progress", where=lambda e: e["offset"] >= 16384)
    ncp.power_cycle()  # QEMU killed where it stands, mid-program
    cut = ncp.events.index(ncp.wait_for("target_exited"))
    back = ncp.wait_for("primary_firmware", where=lambda e: ncp.events.index(e) > cut)
    assert back["version"] == "1.0.0"  # the old image, whole, after the cut
    outcome = ncp.outcome()
    assert outcome.verdict == "confirmed" and outcome.firmware_starts == 3, outcome
