"""The wheel as a user installs it: a fresh virtual environment with nothing but `pip install` of
the wheel (and pytest) runs a user's test file through the plugin, against the reference
firmware. Its dependencies come from the package index, as they would for the user."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(600)
def test_a_fresh_venv_with_the_wheel_runs_a_users_tests(tmp_path, refmcu):
    wheels = tmp_path / "dist"
    run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=500, **kw)  # noqa: E731
    r = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = wheels.glob("dualmcu_emulator-*.whl")
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", str(venv)).returncode == 0
    r = run(str(venv / "bin" / "pip"), "install", "-q", str(wheel), "pytest")
    assert r.returncode == 0, r.stderr[-2000:]
    user = tmp_path / "user"
    user.mkdir()
    (user / "pytest.ini").write_text(f"[pytest]\ndualmcu_firmware = {refmcu} --port {{pty}} --flash {{flash}} "
                                     "--provision {factory}\ndualmcu_fw_type = TMPL0USER\n")
    (user / "test_ota.py").write_text(
        "def test_update(dualmcu_ncp, dualmcu_image):\n"
        "    outcome = dualmcu_ncp(dualmcu_image('1.1.0')).outcome()\n"
        "    assert outcome.verdict == 'confirmed' and outcome.version == '1.1.0', outcome\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = run(str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", cwd=user, env=env)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-3000:]
