"""Every option of every command, given a value outside what it takes: one error line, exit
code 2, never a traceback, and nothing started.

The options are found by walking the command tree, so a new option is covered the day it is
added. For each one the value is drawn from what its type refuses: nan, inf, out of range,
not a number, not a choice, a missing file, a directory where a file belongs, control
characters.
"""

from __future__ import annotations

import math
import os

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from dualmcu.cli import main
from dualmcu.cli.common import Number, Size


def commands(cmd: click.Command = main, path: tuple[str, ...] = ()):
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from commands(sub, path + (name,))
    else:
        yield path, cmd


def _number_refusals(t: click.ParamType) -> st.SearchStrategy:
    bad = ["nan", "inf", "-inf", "x", "", "1e400", "--1", "0x"]
    lo, hi = getattr(t, "min", None), getattr(t, "max", None)
    if lo is not None:
        bad += [repr(lo - 1), repr(lo - 1e6)] if isinstance(lo, int) else [repr(lo - 1.0), repr(-abs(lo) - 1e9)]
        if getattr(t, "min_open", False):
            bad.append(repr(lo))
    if hi is not None:
        bad += [repr(hi + 1), repr(hi + 10**9)]
        if getattr(t, "max_open", False):
            bad.append(repr(hi))
    if isinstance(t, click.IntRange) or type(t) is click.types.IntParamType:
        bad += ["1.5", "2**8"]
    return st.sampled_from(bad)


def refusals(t: click.ParamType, tmp: str) -> st.SearchStrategy | None:
    """Values the type must refuse, or None when any text is a value of it."""
    if isinstance(t, (Number, click.FloatRange, click.IntRange)) or type(t) in (click.types.IntParamType,
                                                                                  click.types.FloatParamType):
        return _number_refusals(t)
    if isinstance(t, Size):
        over = [str(t.maximum + 1)] if t.maximum is not None else []
        return st.sampled_from(["-1", "0x", "1Q", "nan", "", "1e3K", *over])
    if isinstance(t, click.Choice):
        return st.text(max_size=12).filter(lambda v: v not in t.choices and v.lower() not in
                                           [c.lower() for c in t.choices])
    if isinstance(t, click.Path):
        values = []
        if t.exists:
            values.append(os.path.join(tmp, "missing", "nothing-here"))
        if not t.dir_okay:
            values.append(tmp)  # a directory where a file belongs
        if not t.file_okay:
            values.append(os.path.join(tmp, "a-file"))
        return st.sampled_from(values) if values else None
    return None


def hostile_cases(tmp: str) -> list[tuple[tuple[str, ...], str, st.SearchStrategy]]:
    cases = []
    for path, cmd in commands():
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.is_flag or p.hidden:
                continue
            s = refusals(p.type, tmp)
            if s is not None:
                cases.append((path, max(p.opts, key=len), s))
    return cases


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    (d / "a-file").write_text("not a directory")
    return str(d)


def test_the_walk_covers_every_command_and_the_options_that_matter(tmp):
    cases = hostile_cases(tmp)
    covered = {path for path, _, _ in cases}
    names = {path for path, _ in commands()}
    # Every command with a typed option is in; the count guards against a walk that finds nothing.
    assert len(cases) > 100 and ("run",) in covered and ("fleet",) in covered and ("fuzz",) in covered
    assert covered <= names


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_every_option_refuses_a_value_outside_its_type_in_one_line(tmp, data):
    cases = hostile_cases(tmp)
    path, opt, values = data.draw(st.sampled_from(cases), label="option")
    value = data.draw(values, label="value")
    r = CliRunner().invoke(main, [*path, f"{opt}={value}"] if value.startswith("-") else [*path, opt, value])
    out = r.output
    assert r.exit_code == 2, (path, opt, value, out)
    assert isinstance(r.exception, SystemExit), (path, opt, value, r.exception)
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    assert opt in errors[0] or opt.lstrip("-") in errors[0] or any(o in errors[0] for o in ("'-", '"-')), errors[0]


@pytest.mark.parametrize("value", ["a\nforged line", "\x1b[2J", "x\x00y"])
@pytest.mark.parametrize("path,opt", [(("primary",), "--port"), (("ncp",), "--port"), (("decode",), "--framing")])
def test_control_characters_in_a_value_never_reach_the_terminal_raw(value, path, opt):
    r = CliRunner().invoke(main, [*path, opt, value])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "\x1b" not in r.output and "forged line\n" not in r.output.replace("\\n", "")
    assert math.isfinite(r.exit_code)


@pytest.mark.parametrize("args, says", [
    (["--only", "paced", "--chunk", "65535"], "with --only paced it has nothing to select"),
    (["--chunk", "7"], "the unpaced rows have chunks of"),
    (["--runs", "0"], "--runs must be at least 1"),
])
def test_the_realtime_benchmark_refuses_what_it_cannot_run_before_it_starts(args, says):
    """A benchmark's options are checked before any image is built or run: --chunk with only
    the paced rows used to be ignored without a word."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).parent.parent / "tools" / "bench_realtime.py"
    r = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
