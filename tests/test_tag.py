"""Firmware tags, byte-compatible with the public blynk_tag.py."""

import subprocess
import sys

import pytest

from dualmcu.image.firmware import (
    TagError,
    build_image,
    create_tag,
    find_tag,
    is_newer,
    make_info,
    parse_tag,
    read_info,
)


def test_tag_bytes_match_the_documented_layout():
    info = {"mcu": "1.2.3", "fw-type": "TMPL123", "build": "Jan  1 2024 00:00:00", "blynk": "0.6.4"}
    expected = b"blnkinf\x00mcu\x001.2.3\x00fw-type\x00TMPL123\x00build\x00Jan  1 2024 00:00:00\x00blynk\x000.6.4\x00\x00"
    assert create_tag(info) == expected
    assert find_tag(b"junk" + expected + b"\xff" * 10) == expected
    assert parse_tag(expected) == info


@pytest.mark.parametrize("value", ["", "a/b", "1.0+git", "ümlaut"])
def test_values_the_search_would_miss_are_refused(value):
    with pytest.raises(TagError, match="would not be found"):
        create_tag({"mcu": value, "fw-type": "T"})


def test_built_images_carry_their_tag_once():
    img = build_image(make_info("3.0.0", "TT", build="b"), 50_000)
    assert len(img) == 50_000 and read_info(img)["mcu"] == "3.0.0"
    assert img.count(b"blnkinf\x00") == 1


def test_version_order():
    assert is_newer("1.10.0", "1.9.9") and is_newer("2.0", "1.99.99") and not is_newer("1.0.0", "1.0.0")


def run(*args):
    return subprocess.run([sys.executable, "-m", "dualmcu", *map(str, args)], capture_output=True, timeout=30)


def test_tag_commands(tmp_path):
    t = tmp_path / "tag.bin"
    r = run("tag", "create", t, "--mcu", "0.1.2", "--type", "TMPL0123456", "--build", "Apr 19 2023 12:01:07", "--blynk", "0.3.0")
    assert r.returncode == 0
    assert t.read_bytes() == b"blnkinf\x00mcu\x000.1.2\x00fw-type\x00TMPL0123456\x00build\x00Apr 19 2023 12:01:07\x00blynk\x000.3.0\x00\x00"
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x01\x02" * 5000)
    assert run("tag", "show", fw).returncode == 2
    r = run("tag", "append", fw, "--mcu", "2.0.0", "--type", "TMPLX", "--build", "b")
    assert r.returncode == 0 and fw.read_bytes().endswith(create_tag(make_info("2.0.0", "TMPLX", build="b")))
    assert run("tag", "append", fw, "--mcu", "2.0.1", "--type", "TMPLX").returncode == 2  # already tagged
    r = run("tag", "show", fw, "--json")
    assert b'"mcu": "2.0.0"' in r.stdout
    out = tmp_path / "x.tag"
    assert run("tag", "extract", fw, out).returncode == 0 and out.read_bytes() == create_tag(make_info("2.0.0", "TMPLX", build="b"))
    r = run("tag", "create", tmp_path / "bad", "--mcu", "1.0/beta", "--type", "T")
    assert r.returncode == 2 and b"would not be found" in r.stderr
