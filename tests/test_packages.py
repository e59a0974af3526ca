"""Compressed and delta packages: the container, the applier, and updates that use them.

The applier is checked against detools' own applier (each segment is a plain detools patch),
fed in chunks of every size; the device is checked end to end on the virtual clock: what it
installs is the new image byte for byte, a delta for another base is refused before a byte of
it is applied, and the NCP falls back to the full image.
"""

from __future__ import annotations

import io
import struct

import detools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualmcu.image.firmware import build_image, make_info, next_image
from dualmcu.image.package import (
    _SEG,
    Applier,
    PackageError,
    apply_package,
    build_package,
    parse_header,
)
from dualmcu.link import LinkConfig
from dualmcu.ncp.update import Catalog, Shipment
from dualmcu.primary.boot import BootStore
from dualmcu.sim import Simulation
from support import BUILD, active_image, provisioned

T = "TMPLPK"
OLD = build_image(make_info("1.0.0", T, build=BUILD), 200_000, content="code")
NEW = next_image(OLD, make_info("1.0.1", T, build=BUILD), 0.01)
OTHER = next_image(OLD, make_info("0.9.0", T, build=BUILD), 0.02)  # another base
DELTA = build_package(NEW, OLD, "lzma")
COMPRESSED = build_package(NEW, None, "heatshrink")


def segments(pkg: bytes):
    h = parse_header(pkg)
    at = h.length
    while at < len(pkg):
        n, plen = _SEG.unpack_from(pkg, at)
        yield n, pkg[at + 8 : at + 8 + plen]
        at += 8 + plen


@pytest.mark.parametrize("compression", ["none", "heatshrink", "lzma"])
@pytest.mark.parametrize("base", [None, OLD], ids=["full", "delta"])
def test_every_segment_is_a_detools_patch_and_the_package_rebuilds_the_image(compression, base):
    pkg = build_package(NEW, base, compression, segment=64 * 1024)
    rebuilt = b""
    for n, patch in segments(pkg):
        out = io.BytesIO()
        assert detools.apply_patch(io.BytesIO(base or b""), io.BytesIO(patch), out) == n
        rebuilt += out.getvalue()
    assert rebuilt == NEW
    assert apply_package(pkg, base) == NEW
    h = parse_header(pkg)
    assert (h.image_size, h.delta, h.info["mcu"]) == (len(NEW), base is not None, "1.0.1")


def test_a_delta_is_a_small_part_of_the_image():
    assert len(DELTA) < len(NEW) * 0.1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=400))
def test_fed_in_any_pieces_the_applier_makes_the_same_bytes(sizes):
    a = Applier(lambda pos, n: OLD[pos : pos + n], len(OLD))
    out, at, i = [], 0, 0
    while at < len(DELTA):
        n = sizes[i % len(sizes)]
        out += a.feed(DELTA[at : at + n])
        at, i = at + n, i + 1
    assert a.done and b"".join(out) == NEW
    assert all(len(p) <= 4096 for p in out)
    assert [o for _, o in a.boundaries][-1] == len(NEW)


def test_resumed_at_a_boundary_the_applier_goes_on():
    a = Applier(lambda pos, n: OLD[pos : pos + n], len(OLD))
    out = b"".join(a.feed(DELTA[:10_000]))
    assert a.boundaries
    at, image_at = a.boundaries[0]
    b = Applier.resumed(lambda pos, n: OLD[pos : pos + n], len(OLD), at, image_at, len(NEW))
    assert out[:image_at] + b"".join(b.feed(DELTA[at:])) == NEW and b.done


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "header"])
def test_a_damaged_package_is_refused_with_a_reason(damage):
    pkg = bytearray(DELTA)
    if damage == "flip":
        pkg[len(pkg) // 2] ^= 0x55
    elif damage == "truncate":
        del pkg[-100:]
    elif damage == "append":
        pkg += b"\x00" * 10
    else:
        pkg[10] ^= 1
    with pytest.raises(PackageError) as e:
        apply_package(bytes(pkg), OLD)
    assert e.value.reason in ("package_corrupt", "package_image_mismatch")


def test_a_delta_for_another_base_is_refused_before_it_is_applied():
    reads = []
    with pytest.raises(PackageError) as e:
        apply_package(DELTA, OTHER)
    assert e.value.reason == "package_base_mismatch"
    a = Applier(lambda pos, n: reads.append(pos) or OTHER[pos : pos + n], len(OTHER),
                on_header=lambda h: (_ for _ in ()).throw(PackageError("no", "package_base_mismatch")))
    with pytest.raises(PackageError):
        list(a.feed(DELTA))
    assert reads == []  # the base was never read, the image never begun


def test_a_package_needing_more_ram_than_the_device_has_is_refused():
    big = build_package(NEW, OLD, "lzma", lzma_dict=1 << 20)
    with pytest.raises(PackageError) as e:
        apply_package(big, OLD, max_ram=64 * 1024)
    assert e.value.reason == "package_needs_ram"


def test_a_segment_may_not_ask_for_more_than_its_header_declared():
    # Header says 32 KiB of dictionary; a segment asking for 1 MiB is refused.
    small, big = build_package(NEW, OLD, "lzma"), build_package(NEW, OLD, "lzma", lzma_dict=1 << 20)
    h = parse_header(small)
    forged = small[: h.length] + big[parse_header(big).length :]
    with pytest.raises(PackageError, match="declared"):
        apply_package(forged, OLD)


def test_a_size_field_that_never_ends_is_refused():
    h = parse_header(DELTA)
    forged = DELTA[: h.length] + struct.pack("<II", 4096, 20) + bytes([0x01]) + b"\xff" * 19
    with pytest.raises(PackageError):
        apply_package(forged, OLD)


# -- on the device ---------------------------------------------------------------------------


def sim(files, flash=None, **kw):
    cat = Catalog([Shipment.from_bytes(data, name) for name, data in files])
    kw.setdefault("link", LinkConfig(baud=921600, latency=0.001))
    return Simulation(flash or provisioned(OLD), cat, **kw)


@pytest.mark.parametrize("name,package", [("delta.pkg", DELTA), ("full.pkg", COMPRESSED)])
def test_the_device_installs_what_a_package_rebuilds(name, package):
    s = sim([(name, package)])
    assert s.run_update() == "success"
    st, running = active_image(s.flash)
    assert running == NEW and st.slots[st.active].length == len(NEW)
    (inst,) = s.find("ota_installed", "primary")
    assert inst["package_size"] == len(package) and inst["size"] == len(NEW)


def test_the_ncp_ships_the_delta_for_the_reported_version_and_the_image_to_others():
    files = [("new.bin", NEW), ("delta.pkg", DELTA)]
    s = sim(files)
    assert s.run_update() == "success"
    assert [o["filename"] for o in s.find("ota_offer", "ncp")] == ["delta.pkg"]
    s = sim(files, flash=provisioned(OTHER))
    assert s.run_update() == "success"
    assert [o["filename"] for o in s.find("ota_offer", "ncp")] == ["new.bin"]
    assert active_image(s.flash)[1] == NEW


def test_a_delta_the_device_refuses_falls_back_to_the_full_image():
    # The NCP believes the device runs 1.0.0 (the delta's base), but its bytes are another
    # build: the device refuses the delta before applying it, and the image follows.
    wrong = build_image(make_info("1.0.0", T, build="Feb  2 2026 00:00:00"), 200_000, content="code", seed=9)
    s = sim([("new.bin", NEW), ("delta.pkg", DELTA)], flash=provisioned(wrong))
    assert s.run_update() == "success"
    assert [o["filename"] for o in s.find("ota_offer", "ncp")] == ["delta.pkg", "new.bin"]
    (refused,) = [r for r in s.find("ota_refused", "primary") if r["reason"] == "package_base_mismatch"]
    (fb,) = s.find("ota_fallback", "ncp")
    assert fb["next"] == "new.bin" and fb["outcome"] == "device_failed"
    assert active_image(s.flash)[1] == NEW


def test_a_delta_with_no_full_image_behind_it_fails_with_the_reason():
    wrong = build_image(make_info("1.0.0", T, build="Feb  2 2026 00:00:00"), 200_000, content="code", seed=9)
    s = sim([("delta.pkg", DELTA)], flash=provisioned(wrong))
    assert s.run_update() == "device_failed"
    st, running = active_image(s.flash)
    assert running == wrong and not st.slots[1 - st.active].installed


def test_a_power_cut_mid_delta_resumes_at_a_segment_boundary():
    pkg = build_package(NEW, OLD, "none")  # big enough to be cut in the middle
    s = sim([("delta.pkg", pkg)])
    s.run_until(lambda s: any(e["offset"] >= 150_000 for e in s.find("ota_progress", "ncp")))
    rx = BootStore(s.flash).load().receiving
    assert rx.package and rx.image_offset % 4096 == 0 and rx.image_offset >= 64 * 1024
    s.restart_primary()
    assert s.run_update() == "success"
    (resumed,) = s.find("ota_resumed", "ncp")
    assert resumed["offset"] == rx.offset
    assert active_image(s.flash)[1] == NEW


# -- the command -----------------------------------------------------------------------------


def test_the_package_command_writes_a_package_that_rebuilds_the_image(tmp_path):
    from click.testing import CliRunner

    from dualmcu.cli import main

    (tmp_path / "old.bin").write_bytes(OLD)
    (tmp_path / "new.bin").write_bytes(NEW)
    r = CliRunner().invoke(main, ["package", str(tmp_path / "new.bin"), "-o", str(tmp_path / "d.pkg"),
                                  "--base", str(tmp_path / "old.bin"), "--compress", "lzma", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    pkg = (tmp_path / "d.pkg").read_bytes()
    assert apply_package(pkg, OLD) == NEW and parse_header(pkg).base_version == "1.0.0"


@pytest.mark.parametrize("args,code,says", [
    (["{d}/untagged.bin", "-o", "{d}/x.pkg"], 2, "no firmware tag"),
    (["{d}/new.bin", "-o", "{d}/x.pkg", "--segment", "5000"], 2, "multiple of 4096"),
    (["{d}/new.bin", "-o", "{d}/x.pkg", "--segment", "0"], 2, "must be positive"),
    (["{d}/new.bin", "-o", "{d}/x.pkg", "--lzma-dict", "100"], 2, "at least 4K"),
    (["{d}/new.bin", "-o", "{d}/x.pkg", "--compress", "zip"], 2, "zip"),
    (["{d}/new.bin", "-o", "{d}/nowhere/x.pkg"], 2, "cannot write"),
    (["{d}/new.bin", "-o", "{d}/x.pkg", "--base", "{d}/empty.bin"], 2, "empty"),
])
def test_bad_package_arguments_get_one_line_and_exit_2(tmp_path, args, code, says):
    from click.testing import CliRunner

    from dualmcu.cli import main

    (tmp_path / "new.bin").write_bytes(NEW)
    (tmp_path / "untagged.bin").write_bytes(b"\x00" * 5000)
    (tmp_path / "empty.bin").write_bytes(b"")
    r = CliRunner().invoke(main, ["package", *[a.format(d=tmp_path) for a in args]], catch_exceptions=False)
    assert r.exit_code == code, r.output
    assert says in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.pkg").exists()


def test_a_release_directory_is_the_newest_version_and_its_packages(tmp_path):
    (tmp_path / "old.bin").write_bytes(OLD)  # an older version: the base, not the release
    (tmp_path / "new.bin").write_bytes(NEW)
    (tmp_path / "new-from-1.0.0.pkg").write_bytes(DELTA)
    (tmp_path / "notes.txt").write_bytes(b"release notes")  # untagged: passed over
    cat = Catalog.from_paths([str(tmp_path)])
    assert cat.skipped == ["old.bin"]
    assert cat.pick("1.0.0").filename == "new-from-1.0.0.pkg"
    assert cat.pick("0.9.0").filename == "new.bin"
    cat.failed.add("new-from-1.0.0.pkg")
    assert cat.pick("1.0.0").filename == "new.bin"


def test_two_deltas_from_one_base_are_refused(tmp_path):
    (tmp_path / "a.pkg").write_bytes(DELTA)
    (tmp_path / "b.pkg").write_bytes(build_package(NEW, OLD, "heatshrink"))
    with pytest.raises(ValueError, match="two deltas from 1.0.0"):
        Catalog.from_paths([str(tmp_path)])


def test_a_piece_of_a_package_is_given_the_time_of_the_image_it_makes():
    """A few bytes of a delta can make a whole 64 KiB segment (a copy from the base), which the
    primary programs, erasing blocks, before it answers. The write timeout counted the chunk's
    own bytes: at 115200 a delta of a 1 MiB image got a spurious timeout and resend at offset
    6144, with no fault injected. Every segment a window of writes touches now counts whole."""
    from dualmcu.image.package import segment_spans

    spans = segment_spans(parse_header(DELTA), lambda at, n: DELTA[at:at + n], len(DELTA))
    assert [out for _, _, out in spans] == [n for n, _ in segments(DELTA)]
    assert spans[-1][1] == len(DELTA)
    ship = Shipment.from_bytes(DELTA, "delta.pkg")
    assert ship.image_bytes(0, len(DELTA)) == len(NEW)
    assert ship.image_bytes(spans[1][0], 1) == spans[1][2]  # one byte: its segment, whole
    big_old = build_image(make_info("1.0.0", T, build=BUILD), 1 << 20, content="code")
    big_new = next_image(big_old, make_info("1.0.1", T, build=BUILD), 0.01)
    flash = provisioned(big_old, slot=2 << 20)
    s = Simulation(flash, Catalog([Shipment.from_bytes(build_package(big_new, big_old, "lzma"), "d.pkg")]),
                   link=LinkConfig(baud=115200, latency=0.001))
    assert s.run_update(limit=600) == "success"
    assert not s.find("ota_retry", "ncp") and not s.find("rpc_timeout", "ncp")
    assert active_image(s.flash)[1] == big_new
