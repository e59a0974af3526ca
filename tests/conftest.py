import os

import pytest

from hypothesis import HealthCheck, settings

# CI runs a pinned, derandomized profile so that a red build is reproducible; "long" is for
# hunting (HYPOTHESIS_PROFILE=long pytest).
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# Tests that start processes, ptys or long searches take seconds each: they are marked slow so
# that `pytest -m "not slow"` is a quick inner loop. CI and the README's command run them all.
SLOW_FILES = {"test_e2e.py", "test_fuzz.py"}
SLOW_TESTS = {"test_keygen_sign_verify_and_run", "test_tag_commands",
              "test_the_same_seed_gives_the_same_summary_on_a_local_cluster",
              "test_a_real_scheduler_with_two_workers_gives_the_single_process_summary"}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


# -- the C reference firmware (examples/firmware), built once per session ---------------------------

FIRMWARE = os.path.join(os.path.dirname(__file__), "..", "examples", "firmware")


@pytest.fixture(scope="session")
def refmcu(tmp_path_factory) -> str:
    """The reference firmware, built with the system C compiler for this session."""
    import shutil
    import subprocess

    if shutil.which(os.environ.get("CC", "cc")) is None or shutil.which("make") is None:
        if os.environ.get("CI"):
            pytest.fail("CI builds the reference firmware: apt-get install gcc make (README)")
        pytest.skip("no C compiler or make: the reference firmware cannot be built")
    build = tmp_path_factory.mktemp("refmcu")
    r = subprocess.run(["make", "-s", "-C", FIRMWARE, f"BUILD={build}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(build / "refmcu")


@pytest.fixture(scope="session")
def dualmcu_firmware_command(refmcu) -> str:
    """The plugin's firmware: the reference firmware, as a user's pytest.ini would name theirs."""
    return f"{refmcu} --port {{pty}} --flash {{flash}} --provision {{factory}}"


@pytest.fixture(scope="session")
def refmcu_mps2(tmp_path_factory) -> str:
    """The reference firmware cross-built for QEMU's mps2-an385 (Cortex-M3, no C library)."""
    import shutil
    import subprocess

    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the QEMU build: apt-get install gcc-arm-none-eabi qemu-system-arm ({', '.join(missing)})")
        pytest.skip(f"{', '.join(missing)} missing: the Cortex-M build cannot be made or run")
    build = tmp_path_factory.mktemp("refmcu-mps2")
    r = subprocess.run(["make", "-s", "-C", FIRMWARE, f"BUILD={build}", "mps2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(build / "refmcu-mps2.elf")
