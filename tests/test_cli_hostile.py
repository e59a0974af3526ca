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


# Every option or argument that names a file to read, with a device in its place: {dev}.
# {img} is a tagged image, {key}/{pub} a key pair, {out} a path to write, {new} a missing one.
SIGNED = ["--counter", "1", "--target", "x", "-o", "{out}"]
DEVICE_CASES = [  # (command, parameter, arguments)
    ("decode", "other", ["decode", "00", "--other", "{dev}"]),
    ("decode", "spy", ["decode", "--spy", "{dev}"]),
    ("flash show", "path", ["flash", "show", "--flash", "{dev}"]),
    ("fleet", "population", ["fleet", "--population", "{dev}", "--demo", "good"]),
    ("fleet", "plan", ["fleet", "--plan", "{dev}", "--demo", "good"]),
    ("fleet", "firmware", ["fleet", "--firmware", "{dev}"]),
    ("fuzz", "replay", ["fuzz", "--replay", "{dev}", "--target", "primary", "-p", "/dev/null"]),
    ("image", "base", ["image", "--mcu", "1", "--type", "T", "--from", "{dev}", "--change", "1",
                       "{out}"]),
    ("ncp", "firmware", ["ncp", "-p", "/dev/null", "--firmware", "{dev}"]),
    ("package", "new", ["package", "-o", "{out}", "{dev}"]),
    ("package", "base", ["package", "-o", "{out}", "--base", "{dev}", "{img}"]),
    ("primary", "provision", ["primary", "-p", "/dev/null", "--flash", "{new}",
                              "--provision", "{dev}"]),
    ("primary", "trust_keys", ["primary", "-p", "/dev/null", "--trust", "{dev}"]),
    ("primary", "flash", ["primary", "-p", "/dev/null", "--flash", "{dev}"]),
    ("run", "firmware", ["run", "--firmware", "{dev}"]),
    ("run", "factory", ["run", "--factory", "{dev}"]),
    ("run", "flash", ["run", "--flash", "{dev}"]),
    ("run", "trust_keys", ["run", "--trust", "{dev}", "--key", "{key}"]),
    ("run", "sign_key", ["run", "--key", "{dev}", "--trust", "{pub}"]),
    ("sign", "firmware", ["sign", "{dev}", "--key", "{key}", *SIGNED]),
    ("sign", "key", ["sign", "{img}", "--key", "{dev}", *SIGNED]),
    ("tag append", "firmware", ["tag", "append", "{dev}", "--mcu", "1", "--type", "T",
                                "-o", "{out}"]),
    ("tag extract", "file", ["tag", "extract", "{dev}", "{out}"]),
    ("tag show", "file", ["tag", "show", "{dev}"]),
    ("verify", "file", ["verify", "{dev}", "--pubkey", "{pub}"]),
    ("verify", "pubkeys", ["verify", "{img}", "--pubkey", "{dev}"]),
]
# Read on purpose from a device: decode -f streams a logger's FIFO, or any device but a
# terminal or serial port (refused there: opened as a file it echoes into the device).
STREAMED = {("decode", "path")}


def test_every_input_file_parameter_is_tried_with_a_device():
    """A new option that reads a file must join DEVICE_CASES: the walk finds it."""
    readers = set()
    for path, cmd in commands():
        for p in cmd.params:
            t = p.type
            if (isinstance(t, click.File) and "r" in t.mode) or (
                    isinstance(t, click.Path) and t.exists and t.file_okay):
                readers.add((" ".join(path), p.name))
    assert len(readers) > 20
    assert readers - STREAMED <= {(cmd, name) for cmd, name, _ in DEVICE_CASES}


def test_a_device_named_as_an_input_file_is_refused_in_one_line(tmp_path):
    """/dev/zero never ends: every reader once read it whole, to a MemoryError traceback (or
    until the machine ran out).  Run in a child whose memory is capped, so that a reader that
    does it again fails here, not the machine."""
    import json
    import subprocess
    import sys

    from dualmcu.image.firmware import build_image, make_info

    (tmp_path / "img.bin").write_bytes(build_image(make_info("1.0.0", "T"), 8192))
    assert CliRunner().invoke(main, ["keygen", str(tmp_path / "k.pem")]).exit_code == 0
    names = {"dev": "/dev/zero", "img": str(tmp_path / "img.bin"), "key": str(tmp_path / "k.pem"),
             "pub": str(tmp_path / "k.pem.pub"), "out": str(tmp_path / "out.bin"),
             "new": str(tmp_path / "new.flash")}
    cases = [[a.format(**names) for a in args] for _, _, args in DEVICE_CASES]
    child = (
        "import json, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))\n"
        "from click.testing import CliRunner\n"
        "from dualmcu.cli import main\n"
        "out = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    r = CliRunner().invoke(main, args)\n"
        "    out.append([r.exit_code, r.output, repr(r.exception)])\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([sys.executable, "-c", child, json.dumps(cases)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for args, (code, output, exc) in zip(cases, json.loads(r.stdout)):
        errors = [line for line in output.splitlines() if line.lower().startswith("error")]
        assert code == 2, (args, output, exc)
        assert "a device" in output and "Traceback" not in output, (args, output)
        assert len(errors) == 1, (args, output)
    assert not os.path.exists(names["new"])  # nothing was made for a factory image refused


def test_a_fifo_is_read_whole_where_it_can_be_and_refused_where_it_is_read_twice(tmp_path):
    """A pipe (a FIFO, or `--key <(pass show key)`) is read once, bounded; `run --factory`
    hands the path to the primary process, which reads it again, so a pipe is refused there
    at once instead of leaving the primary waiting for a writer."""
    import threading

    from dualmcu.image.firmware import build_image, make_info
    from dualmcu.image.inputs import InputFileError, read_input

    image = build_image(make_info("1.0.0", "T"), 8192)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed(data: bytes) -> threading.Thread:
        def write():
            with open(fifo, "wb") as w:
                w.write(data)
        t = threading.Thread(target=write, daemon=True)
        t.start()
        return t

    t = feed(image)
    r = CliRunner().invoke(main, ["tag", "show", "--json", str(fifo)])
    t.join(10)
    assert r.exit_code == 0 and '"mcu": "1.0.0"' in r.output, r.output
    t = feed(image + b"x")
    with pytest.raises(InputFileError, match="more than the 8,192 bytes"):
        read_input(fifo, "image", 8192)
    t.join(10)
    r = CliRunner().invoke(main, ["run", "--factory", str(fifo), "--timeout", "5"])
    assert r.exit_code == 2 and "is a pipe, not a file" in r.output, r.output
    r = CliRunner().invoke(main, ["flash", "show", "--flash", str(fifo)])
    assert r.exit_code == 2 and "is a pipe, not a flash file" in r.output, r.output
    with pytest.raises(InputFileError, match="is a directory"):
        read_input(tmp_path, "image", 8192)


@pytest.mark.parametrize("workdir", ["/dev/null/x", "/proc"])
def test_a_work_directory_that_cannot_be_used_says_so_in_one_line(workdir, capfd):
    """It gave Python's own '[Errno 20] Not a directory: ...' line."""
    r = CliRunner().invoke(main, ["run", "--workdir", workdir])
    err = capfd.readouterr().err + r.output
    assert r.exit_code == 2, err
    assert f"Error: cannot use the work directory {workdir}: " in err and "[Errno" not in err


@pytest.mark.parametrize("args", [["--slot-size", "4K"], ["--slot-size", "64K", "--factory", "{big}"]])
def test_a_factory_image_no_slot_holds_is_refused_before_anything_starts(args, tmp_path, capfd):
    """The primary process found it, after the link and both processes had started (exit 3,
    and a 'flash: ... inspect with' line for a flash that was never made)."""
    from dualmcu.image.firmware import build_image, make_info

    big = tmp_path / "big.bin"
    big.write_bytes(build_image(make_info("1.0.0", "T"), 200 * 1024))
    r = CliRunner().invoke(main, ["run", "--workdir", str(tmp_path / "w"),
                                  *[a.format(big=big) for a in args]])
    err = capfd.readouterr().err + r.output
    assert r.exit_code == 2, err
    assert "more than a slot holds (--slot-size" in err and "inspect with" not in err
    assert not os.path.exists(tmp_path / "w" / "primary.flash")


def test_a_file_run_cannot_read_is_not_blamed_on_the_work_directory(tmp_path):
    """Every OSError of the preparation was once printed raw; the work directory's message
    must not take the blame for an input file elsewhere (root reads any file, so the error
    is made by hand)."""
    from dualmcu.runner import Run, RunOptions

    run = Run(RunOptions(workdir=str(tmp_path / "w")))
    run.workdir = str(tmp_path / "w")
    fw = str(tmp_path / "fw.bin")
    assert run._os_error(PermissionError(13, "Permission denied", fw)) == \
        f"cannot read {fw}: Permission denied"
    made = str(tmp_path / "w" / "demo.bin")
    assert run._os_error(OSError(28, "No space left on device", made)) == \
        f"cannot use the work directory {run.workdir}: {made}: No space left on device"


def test_a_file_written_midway_into_a_full_disk_keeps_the_old_one_whole(tmp_path, monkeypatch):
    """`dualmcu tag append fw.bin` writes over the firmware it read. Written in place, a full
    disk cut the user's firmware short; now the old file stays as it was and no part is left,
    and a key that could not be written leaves no empty file to refuse the next try."""
    import os

    import click

    from dualmcu.cli import common

    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"old firmware")
    os.chmod(fw, 0o640)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:3])
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    for path, exclusive in ((fw, False), (tmp_path / "k.pem", True)):
        with pytest.raises(click.ClickException) as e:
            common.write_file(str(path), b"new firmware and its tag", "x", exclusive=exclusive)
        assert e.value.message == f"cannot write {path}: No space left on device"
    assert fw.read_bytes() == b"old firmware" and sorted(os.listdir(tmp_path)) == ["fw.bin"]
    monkeypatch.undo()
    common.write_file(str(fw), b"new", "x")
    assert fw.read_bytes() == b"new" and os.stat(fw).st_mode & 0o777 == 0o640  # its mode kept
    common.write_file(str(tmp_path / "k.pem"), b"key", "x", mode=0o600, exclusive=True)
    with pytest.raises(click.ClickException, match="exists already"):
        common.write_file(str(tmp_path / "k.pem"), b"other", "x", exclusive=True)
    assert (tmp_path / "k.pem").read_bytes() == b"key" and os.stat(tmp_path / "k.pem").st_mode & 0o777 == 0o600


def test_a_file_in_a_folder_that_takes_no_new_file_is_written_in_place(tmp_path, monkeypatch):
    """Another user's folder holding a firmware file this user may write: no file can be made
    beside it, so it is written in place, as it was before whole-or-nothing writes."""
    import tempfile

    import click

    from dualmcu.cli import common

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"old")
    common.write_file(str(fw), b"new firmware", "x")
    assert fw.read_bytes() == b"new firmware"
    with pytest.raises(click.ClickException) as e:
        common.write_file(str(tmp_path / "other.bin"), b"x", "x")
    assert e.value.message == f"cannot write {tmp_path / 'other.bin'}: Permission denied"


def test_a_file_written_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    import os

    from dualmcu.cli import common

    (tmp_path / "fw-1.2.bin").write_bytes(b"old")
    os.symlink("fw-1.2.bin", tmp_path / "latest.bin")
    common.write_file(str(tmp_path / "latest.bin"), b"tagged", None)
    assert os.readlink(tmp_path / "latest.bin") == "fw-1.2.bin"
    assert (tmp_path / "fw-1.2.bin").read_bytes() == b"tagged"
    assert sorted(os.listdir(tmp_path)) == ["fw-1.2.bin", "latest.bin"]


def test_any_command_stopped_by_sigterm_or_ctrl_c_says_so_in_one_line_with_its_exit_code():
    """A command killed by `kill`, `timeout` or a CI job's end runs its clean-up and exits 143
    with one line; Ctrl-C alike with 130 (click alone said "Aborted!" and exited 1). Here a
    decode that streams a pipe nobody closes, stopped while it waits for more."""
    import signal
    import subprocess
    import sys

    frame = "00 04 12 a5 01 01 05 ff b0 75 a7 00".replace(" ", "")  # one native-framed frame
    stops = ((signal.SIGTERM, 143, b"terminated"), (signal.SIGINT, 130, b"interrupted"))
    for sig, code, word in stops:
        p = subprocess.Popen([sys.executable, "-m", "dualmcu", "decode", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdin.write(bytes.fromhex(frame))
        p.stdin.flush()
        assert p.stdout.readline()  # the frame was decoded: the command is at work, waiting
        p.send_signal(sig)
        p.wait(timeout=30)  # stdin still open: only the signal can have ended it
        err = p.stderr.read()
        p.stdin.close()
        p.stdout.close()
        p.stderr.close()
        assert p.returncode == code and err.strip() == word, err


def test_a_new_file_where_hard_links_fail_is_renamed_into_place(tmp_path, monkeypatch):
    """A key must never replace a file, so it takes its name with a hard link, which fails if
    one exists. A FAT stick has no hard links (EPERM): there the name is checked, then the
    file renamed. Nothing half-made stays either way."""
    import errno

    from dualmcu import paths

    def no_links(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(paths.os, "link", no_links)
    key = tmp_path / "ota.key"
    assert paths.write_whole(str(key), b"secret", mode=0o600, exclusive=True) is False
    assert key.read_bytes() == b"secret" and (key.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ota.key"]
    # A file that took the name meanwhile (after the first check) is kept, never replaced.
    part = tmp_path / ".other.part"
    part.write_bytes(b"new")
    with pytest.raises(FileExistsError):
        paths._link_new(str(part), str(key))
    assert key.read_bytes() == b"secret" and part.exists()


def test_one_error_style_whoever_refuses(tmp_path):
    """click said `Error:` and the project's own refusals `error:`: a script grepping for one
    missed the other."""
    import subprocess
    import sys

    click_refusal = subprocess.run([sys.executable, "-m", "dualmcu", "run", "--timeout", "nan"],
                                   capture_output=True, text=True, timeout=60)
    own_refusal = subprocess.run([sys.executable, "-m", "dualmcu", "primary", "-p", "loop://",
                                  "--flash", str(tmp_path / "none.flash")], capture_output=True, text=True, timeout=60)
    for r in (click_refusal, own_refusal):
        assert r.returncode == 2
        assert [line for line in r.stderr.splitlines() if "rror" in line][0].startswith("Error: "), r.stderr
