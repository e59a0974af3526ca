"""The pytest plugin: your firmware's OTA handling, tested through an emulated NCP.

Registered through the ``pytest11`` entry point, so installing dualmcu is all it takes.  Say
once how your firmware starts, in ``pytest.ini`` (or ``[tool.pytest.ini_options]``)::

    [pytest]
    dualmcu_firmware = ./build/app --port {pty} --flash {flash} --provision {factory}
    dualmcu_fw_type = TMPL0MYPRODUCT

and a test is a few lines::

    def test_update(dualmcu_ncp, dualmcu_image):
        outcome = dualmcu_ncp(dualmcu_image("1.1.0")).outcome()
        assert outcome.ok and outcome.version == "1.1.0", outcome

``{pty}`` is the pty the firmware talks on, ``{flash}`` a flash file of the test's own,
``{factory}`` a factory image (``dualmcu_factory_version``, 1.0.0 by default, of your
``dualmcu_fw_type``).  Every process and pty a test started is ended at its teardown; each
test has its own pty and files, so ``pytest -n auto`` (pytest-xdist) runs them side by side.
When a test fails, its report carries each side's last events and the firmware's last output,
and the JUnit XML carries each outcome's facts as properties (``dualmcu_verdict`` ...).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest

from . import api

INI = {
    "dualmcu_firmware": "the firmware under test, started on a pty: a command with {pty} (and {flash}, {factory})",
    "dualmcu_fw_type": "your product's fw-type (the Blynk template id) for test images",
    "dualmcu_factory_version": "the version of the factory image {factory} stands for (default 1.0.0)",
    "dualmcu_framing": "blynk (the real Blynk.NCP framing, default) or cobs",
    "dualmcu_baud": "the UART's initial rate (default 38400)",
    "dualmcu_timeout": "seconds an update may take before the NCP gives up (default 120)",
}
DEFAULTS = {"dualmcu_factory_version": "1.0.0", "dualmcu_framing": "blynk", "dualmcu_baud": "38400",
            "dualmcu_timeout": "120", "dualmcu_fw_type": "TMPL0TEST"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dualmcu", "firmware updates through an emulated NCP (dualmcu)")
    group.addoption("--dualmcu-firmware", metavar="COMMAND", help=INI["dualmcu_firmware"] + " (overrides the ini)")
    for name, text in INI.items():
        parser.addini(name, text, default=DEFAULTS.get(name))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dualmcu: a test that updates firmware through dualmcu")


def _setting(config: pytest.Config, name: str) -> str:
    if name == "dualmcu_firmware" and config.getoption("--dualmcu-firmware"):
        return config.getoption("--dualmcu-firmware")
    return config.getini(name) or DEFAULTS.get(name, "")


def _number(config: pytest.Config, name: str, kind: type = int) -> Any:
    """A numeric ini setting, or one line naming it when it is not a number (or not positive)."""
    text = _setting(config, name)
    try:
        value = kind(text)
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError
    except ValueError:
        pytest.fail(f"{name} = {text!r} in the ini: give a positive number", pytrace=False)
    return value


@pytest.fixture(scope="session")
def dualmcu_firmware_command(pytestconfig: pytest.Config) -> str:
    """The command that starts the firmware under test (ini ``dualmcu_firmware``, or
    ``--dualmcu-firmware``). Override this fixture to build the firmware first."""
    command = _setting(pytestconfig, "dualmcu_firmware")
    if not command:
        pytest.fail("set dualmcu_firmware in pytest.ini (or give --dualmcu-firmware): the command that starts "
                    "your firmware, with {pty} where its serial port goes", pytrace=False)
    return command


@pytest.fixture
def dualmcu_image(tmp_path: Path, pytestconfig: pytest.Config) -> Callable[..., Path]:
    """Make a tagged test image of your product: ``dualmcu_image("1.1.0")``; keyword arguments
    set the fw-type (``fw_type=``), the size (``size=``) and further tag keys."""
    def make(version: str, fw_type: str | None = None, size: int = 64 * 1024, **tag: str) -> Path:
        kind = fw_type or _setting(pytestconfig, "dualmcu_fw_type")
        return api.make_image(version, kind, tmp_path / f"image-{kind}-{version}.bin", size, **tag)

    return make


@pytest.fixture
def dualmcu_firmware(dualmcu_firmware_command: str, dualmcu_image: Callable[..., Path], tmp_path: Path,
                     pytestconfig: pytest.Config) -> str:
    """The ``exec:`` URL of the firmware under test for this test: its own flash file, a factory
    image of ``dualmcu_factory_version``."""
    command = dualmcu_firmware_command
    if "{factory}" in command:
        factory = dualmcu_image(_setting(pytestconfig, "dualmcu_factory_version"), size=48 * 1024)
        command = command.replace("{factory}", shlex.quote(str(factory)))
    command = command.replace("{flash}", shlex.quote(str(tmp_path / "firmware.flash")))
    return f"exec:{command}"


class _Sides:
    """The sides a test started: ended at its teardown, shown in its report when it fails."""

    def __init__(self, node: pytest.Item) -> None:
        self.node = node
        self.sides: list[api.Side] = []

    def add(self, side: api.Side) -> api.Side:
        self.sides.append(side)
        return side

    def record(self, name: str) -> Callable[[api.Outcome], None]:
        def record(outcome: api.Outcome) -> None:
            for key, value in outcome.properties().items():
                self.node.user_properties.append((f"dualmcu_{name}_{key}" if name else f"dualmcu_{key}", value))

        return record

    def report(self) -> list[tuple[str, str]]:
        return [(f"dualmcu {side.command}", side.report()) for side in self.sides]

    def close(self) -> None:
        for side in reversed(self.sides):
            side.close()


@pytest.fixture
def _dualmcu_sides(request: pytest.FixtureRequest):
    sides = _Sides(request.node)
    request.node.stash[_SIDES] = sides
    yield sides
    sides.close()


_SIDES = pytest.StashKey[_Sides]()


@pytest.fixture
def dualmcu_ncp(_dualmcu_sides: _Sides, dualmcu_firmware: str, pytestconfig: pytest.Config,
                tmp_path: Path) -> Callable[..., api.Ncp]:
    """Start the emulated NCP on the firmware under test and offer it ``firmware`` (image or
    package paths): ``dualmcu_ncp(new).outcome()``.  ``firmware_args`` are added to the
    firmware's command (a build option, say); the other keywords are :class:`dualmcu.Ncp`'s
    (``misbehave=``, ``confirm_window=``, ``args=[...]``, ``port=`` another port)."""
    def start(firmware: Any = None, port: str | None = None, firmware_args: tuple[str, ...] | list[str] = (),
              **options: Any) -> api.Ncp:
        if port is None and firmware_args:
            port = dualmcu_firmware + " " + shlex.join(firmware_args)
        options.setdefault("framing", _setting(pytestconfig, "dualmcu_framing"))
        options.setdefault("baud", _number(pytestconfig, "dualmcu_baud"))
        options.setdefault("timeout", _number(pytestconfig, "dualmcu_timeout", float))
        n = sum(isinstance(s, api.Ncp) for s in _dualmcu_sides.sides) + 1  # this test's nth NCP
        # Kept with the test's files (pytest keeps the last runs'), for reading after a failure.
        options.setdefault("firmware_log", tmp_path / ("firmware.log" if n == 1 else f"firmware-{n}.log"))
        ncp = api.Ncp(port or dualmcu_firmware, firmware, on_outcome=_dualmcu_sides.record("" if n == 1 else f"ncp{n}"),
                      **options)
        return _dualmcu_sides.add(ncp)

    return start


@pytest.fixture
def dualmcu_primary(_dualmcu_sides: _Sides, tmp_path: Path, dualmcu_image: Callable[..., Path],
                    pytestconfig: pytest.Config) -> Callable[..., api.Primary]:
    """Start the emulated primary MCU on a port (an NCP's firmware under test, say):
    ``dualmcu_primary("exec:./ncp-fw --port {pty}")``; its flash is the test's own."""
    def start(port: str, flash: str | os.PathLike | None = None, provision: str | os.PathLike | None = None,
              **options: Any) -> api.Primary:
        options.setdefault("framing", _setting(pytestconfig, "dualmcu_framing"))
        options.setdefault("baud", _number(pytestconfig, "dualmcu_baud"))
        flash = flash or tmp_path / "primary.flash"
        if provision is None and not os.path.exists(flash):
            provision = dualmcu_image(_setting(pytestconfig, "dualmcu_factory_version"), size=48 * 1024)
        return _dualmcu_sides.add(api.Primary(port, flash, provision, on_outcome=_dualmcu_sides.record("primary"),
                                              **options))

    return start


@pytest.fixture
def dualmcu_link(_dualmcu_sides: _Sides, pytestconfig: pytest.Config) -> Callable[..., api.Link]:
    """Two new ptys joined by the simulated UART with faults: ``link = dualmcu_link("--drop",
    "1e-3", "--seed", "1")``; put the firmware on ``link.b`` and the NCP on ``link.a``."""
    def start(*args: str, baud: int | None = None, pace: bool = True) -> api.Link:
        rate = baud or _number(pytestconfig, "dualmcu_baud")
        return _dualmcu_sides.add(api.Link(rate, pace, args))

    return start


@pytest.hookimpl(hookwrapper=True)  # the old style: pytest 7 runs it too
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    result = yield
    report = result.get_result()
    sides = item.stash.get(_SIDES, None)
    if sides is not None and report.failed:
        for title, text in sides.report():
            report.sections.append((title, text))
