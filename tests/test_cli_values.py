"""Every option value is checked before a command starts: nan, inf, zero and negative numbers
where they make no sense get one line and exit code 2, never a traceback or a hang."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from dualmcu.cli import main

# (command prefix, option) for every float option whose value must be finite and positive.
POSITIVE = [
    (["primary", "-p", "/dev/null"], "--ota-timeout"),
    (["primary", "-p", "/dev/null"], "--heartbeat"),
    (["ncp", "-p", "/dev/null"], "--net-rate"),
    (["ncp", "-p", "/dev/null"], "--write-timeout"),
    (["run"], "--timeout"),
    (["run"], "--ota-timeout"),
    (["run"], "--net-rate"),
    (["run"], "--heartbeat"),
    (["run"], "--commit-timeout"),
    (["run"], "--max-defer"),
    (["primary", "-p", "/dev/null"], "--commit-timeout"),
    (["ncp", "-p", "/dev/null"], "--max-defer"),
    (["link"], "--duration"),
    (["ncp", "-p", "/dev/null", "--once"], "--timeout"),
    (["ncp", "-p", "/dev/null"], "--confirm-window"),
    (["primary", "-p", "/dev/null", "--once"], "--timeout"),
]
NON_NEGATIVE = [(["run"], "--latency"), (["run"], "--stall-time"), (["run"], "--rx-poll"), (["link"], "--latency")]
PROBABILITIES = [(["run"], o) for o in ("--ber", "--drop", "--dup", "--garbage", "--stall")]


def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def one_line_refusal(r):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "Error: " in r.output


@pytest.mark.parametrize("cmd,opt", POSITIVE, ids=[f"{c[0]}{o}" for c, o in POSITIVE])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5", "x"])
def test_positive_numbers_refuse_nan_inf_zero_and_negatives(cmd, opt, value):
    one_line_refusal(invoke(cmd + [opt, value]))


@pytest.mark.parametrize("cmd,opt", NON_NEGATIVE + PROBABILITIES)
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_other_numbers_refuse_nan_inf_and_negatives(cmd, opt, value):
    one_line_refusal(invoke(cmd + [opt, value]))


@pytest.mark.parametrize("args", [
    ["primary", "-p", "/dev/null", "--flash-timing", "nan,1,1"],
    ["primary", "-p", "/dev/null", "--flash-timing", "1,2"],
    ["primary", "-p", "/dev/null", "--flash-timing", "-1,2,3"],
    ["run", "--flash-timing", "inf,0,0"],
    ["run", "--battery", "nan"],
    ["run", "--battery", "101"],
    ["primary", "-p", "/dev/null", "--battery", "-1"],
    ["primary", "-p", "/dev/null", "--battery-rate", "inf"],
    ["primary", "-p", "/dev/null", "--install-window", "5-5"],
    ["primary", "-p", "/dev/null", "--install-window", "25-3"],
    ["primary", "-p", "/dev/null", "--install-window", "two-five"],
    ["primary", "-p", "/dev/null", "--hw-rev", "A B"],
    ["primary", "-p", "/dev/null", "--hw-rev", "REVISION-TOO-LONG"],
    ["primary", "-p", "/dev/null", "--bootloader-version", ""],
    ["ncp", "-p", "/dev/null", "--clock", "yesterday"],
    ["ncp", "-p", "/dev/null", "--clock", "1960-01-01T00:00:00Z"],
    ["image", "x.bin", "--mcu", "1.0.0", "--type", "T", "--test", "slow-confirm"],
    ["image", "x.bin", "--mcu", "1.0.0", "--type", "T", "--test", "slow-confirm:inf"],
    ["image", "x.bin", "--mcu", "1.0.0", "--type", "T", "--test", "explode"],
    ["image", "x.bin", "--mcu", "1.0.0", "--type", "T", "--config-schema", "0"],
    ["run", "--disconnect", "b@nan:1"],
    ["run", "--disconnect", "b@1:0"],
    ["run", "--disconnect", "b@-1:1"],
    ["primary", "-p", "/dev/null", "--slot-size", "4096M"],
    ["primary", "-p", "/dev/null", "--slot-size", "0"],
    ["image", "x.bin", "--mcu", "1.0.0", "--type", "T", "--size", "-5"],
])
def test_compound_values_are_checked_too(args):
    one_line_refusal(invoke(args))


@given(st.sampled_from(["--heartbeat", "--ota-timeout"]), st.one_of(st.text(max_size=12), st.floats().map(repr)))
def test_any_text_as_a_number_is_a_value_or_a_one_line_refusal(tmp_path_factory, opt, text):
    # A valid value gets as far as the blank flash, which needs --provision: exit 2 as well.
    flash = tmp_path_factory.mktemp("f") / "blank.flash"
    r = CliRunner().invoke(main, ["primary", "-p", "/dev/null", "--flash", str(flash), opt, text])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_slow_confirm_takes_its_seconds_as_the_next_word_or_after_a_colon(tmp_path):
    from dualmcu.image.firmware import read_info_from_file

    for i, words in enumerate((["slow-confirm", "30"], ["slow-confirm:30"])):
        out = tmp_path / f"{i}.bin"
        r = invoke(["image", str(out), "--mcu", "1.1.0", "--type", "T", "--size", "8K", "--test", *words])
        assert r.exit_code == 0, r.output
        assert read_info_from_file(out)["dualmcu-test"] == "slow-confirm:30"


def test_every_command_with_a_baud_rate_has_one_default_and_reads_dualmcu_baud():
    """run and link defaulted to 115200, the sides and fuzz to 38400, and link had no -b and
    ignored DUALMCU_BAUD, which the docs say applies to every command."""
    from dualmcu.cli.common import DEFAULT_BAUD

    found = {}
    for name, cmd in main.commands.items():
        for param in cmd.params:
            if param.name == "baud":
                found[name] = (param.default, param.envvar, "-b" in param.opts)
    assert set(found) >= {"ncp", "primary", "run", "link", "fuzz"}
    assert set(found.values()) == {(DEFAULT_BAUD, "DUALMCU_BAUD", True)} and DEFAULT_BAUD == 38400


def test_link_takes_its_rate_from_b_or_the_environment_and_no_port_that_is_a_number():
    import json

    r = CliRunner().invoke(main, ["link", "--json", "-b", "921600", "--duration", "0.01"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[0])["baud"] == 921600
    r = CliRunner().invoke(main, ["link", "--json", "--duration", "0.01"], env={"DUALMCU_BAUD": "230400"})
    assert json.loads(r.output.splitlines()[0])["baud"] == 230400
    r = CliRunner().invoke(main, ["link", "--b", "115200"])
    assert r.exit_code == 2 and "'115200' is a number, not a port: the baud rate is -b/--baud" in r.output


# Options whose name is a config field's but whose default differs on purpose, with the reason.
DEFAULT_ON_PURPOSE = {
    # The sides' -b is the UART's initial rate; NcpConfig.baud is the rate it derives timeouts
    # from (None: its port's), PrimaryConfig.baud the rate it asks to switch to (None: none),
    # LinkConfig.baud the pacing (None: unpaced).
    **{(cmd, "baud"): "another meaning" for cmd in ("ncp", "primary", "run", "link")},
    # A run on a laptop waits seconds for a deferring device, not the cloud's week.
    ("run", "max_defer"): "run waits 30 s",
}


def test_every_cli_default_is_its_configs_default():
    """An option and the config field it fills are declared apart; a default changed in one
    place and not the other would make the command and the API behave differently."""
    import dataclasses

    from dualmcu.link import Faults, LinkConfig
    from dualmcu.ncp.core import NcpConfig
    from dualmcu.primary.device import PrimaryConfig
    from dualmcu.primary.ota import OtaConfig

    defaults: dict[str, list] = {}
    for cfg in (NcpConfig(), PrimaryConfig(), OtaConfig(), LinkConfig(), Faults()):
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            defaults.setdefault(f.name, []).append(getattr(value, "value", value))
    checked = 0
    for cmd in ("ncp", "primary", "run", "link"):
        command = main.commands[cmd]
        ctx = command.make_context(cmd, ["-p", "loop://"] if cmd in ("ncp", "primary") else [])
        params = dict(ctx.params)
        for group in [v for v in params.values() if dataclasses.is_dataclass(v)]:
            # An option group (the link's) arrives as the config it filled: its fields count.
            params.update({f.name: getattr(group, f.name) for f in dataclasses.fields(group) if f.name != "baud"})
            params.update({f.name: getattr(group.faults, f.name) for f in dataclasses.fields(group.faults)}
                          if hasattr(group, "faults") else {})
        for name, value in params.items():
            if name not in defaults or (cmd, name) in DEFAULT_ON_PURPOSE:
                continue
            value = getattr(value, "value", value)
            assert value in defaults[name], (cmd, name, value, defaults[name])
            checked += 1
    assert checked >= 50
