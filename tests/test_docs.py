"""The generated reference pages must say what the code does."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generated_docs_are_current():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_docs.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def test_generated_docs_do_not_depend_on_who_generates_them(tmp_path):
    """Another user's HOME (and XDG folders) must give the same pages: no machine paths in docs."""
    env = dict(os.environ, HOME=str(tmp_path / "alice"), XDG_DATA_HOME=str(tmp_path / "xdg"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_docs.py"), "--check"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout
    for name in os.listdir(os.path.join(ROOT, "docs")):
        if not name.endswith(".md"):
            continue  # docs/ is also a package: its __init__.py, and byte code a run compiled
        text = open(os.path.join(ROOT, "docs", name), errors="replace").read()
        assert "/root/" not in text and "/home/" not in text, name


def test_every_command_is_documented():
    text = open(os.path.join(ROOT, "docs", "cli.md")).read()
    for cmd in ("ports", "decode", "encode", "ncp", "primary", "run", "flash show", "tag create", "tag show",
                "tag extract", "tag append", "image"):
        assert f"## `dualmcu {cmd}`" in text


def test_every_reason_code_is_documented_and_nothing_else():
    import re

    from dualmcu.primary.reasons import REASONS

    text = open(os.path.join(ROOT, "docs", "device.md")).read()
    table = {int(c): n for c, n in re.findall(r"^\| (\d+) \| `([a-z_0-9]+)` \|$", text, re.M)}
    assert table == REASONS


def test_wire_doc_states_the_largest_chunk_of_each_framing():
    """An independent peer sizes its buffers from docs/wire.md: its figures are the code's."""
    import pathlib

    from dualmcu.framing import get_profile
    from dualmcu.ncp.core import WRITE_OVERHEAD

    text = " ".join(pathlib.Path(__file__).parent.parent.joinpath("docs", "wire.md").read_text().split())
    for name in ("cobs", "blynk"):
        p = get_profile(name)
        assert f"**{getattr(p, 'send_limit', p.max_message) - WRITE_OVERHEAD} bytes in {name}**" in text or \
            f"**{getattr(p, 'send_limit', p.max_message) - WRITE_OVERHEAD} in {name}**" in text


def test_help_names_every_exit_code_by_its_own_meaning():
    """`dualmcu --help` is where a script writer looks up an exit code: each code needs its
    own phrase there (the fleet's two codes once both read only "`dualmcu fleet`")."""
    from click.testing import CliRunner

    from dualmcu.cli import main
    from dualmcu.exits import MEANING, SHORT, ExitCode

    assert set(SHORT) == set(MEANING) == set(ExitCode)
    assert len(set(SHORT.values())) == len(SHORT)
    out = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for code, text in SHORT.items():
        assert f"{int(code)} {text}" in out


def test_docs_help_names_every_page_and_the_list_shows_each():
    from pathlib import Path

    from click.testing import CliRunner

    from dualmcu.cli import main

    pages = sorted(p.stem for p in (Path(__file__).parents[1] / "docs").glob("*.md"))
    assert len(pages) >= 12
    help_text = " ".join(CliRunner().invoke(main, ["docs", "--help"]).output.split())
    listed = CliRunner().invoke(main, ["docs"]).output
    for page in pages:
        assert page in help_text and any(line.startswith(page + " ") for line in listed.splitlines()), page
