"""Flash semantics, the redundant boot state and the bootloader's rules, including power cuts
at every flash operation."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dualmcu.image.firmware import build_image, make_info
from dualmcu.primary.boot import RECORD_SIZE, Bootloader, BootState, BootStore, verify_slot
from dualmcu.primary.flash import Flash, FlashError, Geometry, PowerCut

G = Geometry(4096, 64 * 1024)
OLD = build_image(make_info("1.0.0", "T", build="Jan  1 2026 00:00:00"), 20_000)
NEW = build_image(make_info("2.0.0", "T", build="Jan  1 2026 00:00:00"), 30_000)


def fresh():
    f = Flash.in_memory(G)
    Bootloader(f).provision(OLD)
    return f


def write_slot(flash, slot, image):
    base = G.slot_offset(slot)
    for off in range(0, len(image), G.page_size):
        flash.erase_page(base + off)
    flash.write(base, image)


def test_nor_program_only_clears_bits():
    f = Flash.in_memory(G)
    off = G.slot_offset(0)
    f.program(off, b"\x0f")
    f.program(off, b"\xf0")
    assert f.read(off, 1) == b"\x00"
    f.erase_page(off)
    assert f.read(off, 1) == b"\xff"
    with pytest.raises(FlashError):
        f.program(off + 4090, bytes(10))  # crosses a page
    with pytest.raises(FlashError):
        f.erase_page(off + 1)


SMALL = Geometry(256, 2048)


@example([("write", 300, b"\x0f"), ("erase", 0, 1), ("write", 250, b"\xf0" * 100)])
@given(st.lists(st.one_of(
    st.tuples(st.just("erase"), st.integers(0, 7), st.integers(1, 4)),
    st.tuples(st.just("write"), st.integers(0, 2047), st.binary(min_size=1, max_size=700))), max_size=25))
def test_the_fast_paths_give_the_bytes_and_counts_of_page_by_page(ops):
    """Erasing a range in two store writes, and writing over pages known erased in one, must
    leave what page-by-page operations leave (bits only cleared, every page's erase counted).
    A flash with an interrupt hook (that never cuts) takes the page-by-page path."""
    fast, slow = Flash.in_memory(SMALL), Flash.in_memory(SMALL, interrupt=lambda *a: None)
    base = SMALL.slot_offset(0)
    for kind, a, b in ops:
        for f in (fast, slow):
            if kind == "erase":
                start = base + a * SMALL.page_size
                f.erase(start, min(b * SMALL.page_size, f.size - start))
            else:
                f.write(base + a, b[: f.size - base - a])
    assert bytes(fast._store.buf) == bytes(slow._store.buf)
    assert fast.erases == slow.erases and fast.ops == slow.ops


def test_a_program_above_what_was_erased_still_only_clears_bits():
    f = Flash.in_memory(G)
    off = G.slot_offset(0)
    f.erase(off, 2 * G.page_size)
    f.write(off + 100, b"\x0f" * 10)      # above the erased mark: no read needed
    f.write(off + 100, b"\xf0" * 10)      # below the mark now: read, AND
    f.write(off + 4090, b"\x3c" * 12)     # across two pages, one partly programmed
    f.write(off + 4090, b"\xc3" * 12)
    f.write(off + 3 * G.page_size, b"\x0f" * 8)  # a page not erased here
    f.erase(off + 2 * G.page_size, G.page_size)
    f.write(off + 3 * G.page_size - 8, b"\xf0" * 16)  # from an erased page into that one
    assert f.read(off + 3 * G.page_size - 8, 16) == b"\xf0" * 8 + bytes(8)
    assert f.read(off + 100, 10) == bytes(10) and f.read(off + 4090, 12) == bytes(12)
    assert f.read(off + 110, 4) == b"\xff" * 4


def test_a_block_erase_in_a_flash_file_counts_every_page(tmp_path):
    f = Flash.open(tmp_path / "f.flash", G)
    off = G.slot_offset(0)
    f.write(off, b"\x00" * 8192)
    f.erase(off, 8 * G.page_size)
    f.close()
    g = Flash.open(tmp_path / "f.flash", G)
    first = off // G.page_size
    assert list(g.erases[first : first + 8]) == [1] * 8 and g.erases[first + 8] == 0
    assert g.read(off, 8192) == b"\xff" * 8192


def test_boot_state_newer_valid_copy_wins_and_a_torn_copy_is_ignored():
    f = fresh()
    store = BootStore(f)
    s1 = store.load()
    s2 = store.store(s1)
    assert s2.seq == s1.seq + 1 and store.load() == s2
    # tear the copy holding s2
    which = [c.seq if c else None for c in store.copies()].index(s2.seq)
    off = G.state_offsets[which]
    f.program(off + 20, b"\x00")
    assert store.load() == s1


def test_the_boot_state_decodes_a_copy_again_only_when_its_bytes_changed():
    # A receiver checkpoints every 64 KiB: a load and a store read both copies each time, but
    # only the copy the last store wrote has new bytes.  A copy changed by anything else (here
    # a torn bit) is decoded again, so what the store remembers never hides the flash.
    f = fresh()
    store = BootStore(f)
    decoded = []
    store.decode = lambda raw: decoded.append(raw) or BootState.decode(raw)
    state = store.load()
    assert len(decoded) == 2
    for _ in range(4):
        decoded.clear()
        state = store.store(store.load())
        assert store.load() == state and len(decoded) == 1  # six reads, one copy new
    decoded.clear()
    which = [c.seq if c else None for c in store.copies()].index(state.seq)
    f.program(G.state_offsets[which] + 20, b"\x00")
    assert store.load().seq == state.seq - 1 and len(decoded) == 1


@pytest.mark.parametrize("applied", range(0, RECORD_SIZE + 1, 7))
def test_a_torn_boot_state_write_never_loses_the_previous_state(applied):
    f = fresh()
    store = BootStore(f)
    before = store.load()
    f.interrupt = lambda op, kind, off, n: applied if kind == "program" else None
    with pytest.raises(PowerCut):
        store.store(BootState(active=1, confirmed=0, trial=True, attempts=3, slots=before.slots))
    f.interrupt = None
    after = store.load()
    assert after == before or (applied == RECORD_SIZE and after.active == 1)


def damage(f, slot, at):
    """Clear a set bit of the slot at or after ``at`` (programming can only clear bits)."""
    base = G.slot_offset(slot)
    while f.read(base + at, 1) == b"\x00":
        at += 1
    f.program(base + at, b"\x00")


def install(f, image=NEW):
    write_slot(f, 1, image)
    return Bootloader(f).install(1, len(image))


def test_trial_boot_confirm_and_attempt_counting():
    f = fresh()
    install(f)
    b = Bootloader(f, attempts=2)
    r = b.boot()
    assert (r.slot, r.trial, r.state.attempts) == (1, True, 2)  # install set 3 with the default
    b.confirm()
    r = b.boot()
    assert (r.slot, r.trial) == (1, False) and r.state.confirmed == 1


def test_unconfirmed_trial_rolls_back_after_its_attempts():
    f = fresh()
    install(f)
    b = Bootloader(f)
    slots = [b.boot().slot for _ in range(4)]
    assert slots == [1, 1, 1, 0]
    st = BootStore(f).load()
    assert st.active == 0 and st.confirmed == 0 and not st.trial


def test_a_trial_image_tampered_with_on_flash_is_never_booted():
    f = fresh()
    install(f)
    damage(f, 1, 5000)  # one byte changed after install
    r = Bootloader(f).boot()
    assert r.slot == 0 and ("verify_failed", {"slot": "B"}) in r.events


def test_a_corrupted_confirmed_image_falls_back_to_the_other_valid_slot():
    f = fresh()
    install(f)
    b = Bootloader(f)
    b.boot()
    b.confirm()
    damage(f, 1, 5000)
    r = b.boot()
    assert r.slot == 0 and r.state.confirmed == 0


def test_nothing_bootable_is_said_not_guessed():
    f = fresh()
    damage(f, 0, 5000)
    r = Bootloader(f).boot()
    assert r.slot is None and r.events[-1][0] == "no_bootable_image"


def test_flash_file_geometry_is_kept_and_checked(tmp_path):
    path = tmp_path / "f.flash"
    f = Flash.open(path, Geometry(4096, 64 * 1024))
    Bootloader(f).provision(OLD)
    f.close()
    f = Flash.open(path)
    assert f.geometry == Geometry(4096, 64 * 1024) and BootStore(f).load() is not None
    f.close()
    with pytest.raises(FlashError, match="slots of"):
        Flash.open(path, Geometry(4096, 128 * 1024))
    (tmp_path / "junk").write_bytes(b"hello")
    with pytest.raises(FlashError, match="not a dualmcu flash"):
        Flash.open(tmp_path / "junk")


def test_two_primaries_cannot_share_one_flash_file(tmp_path):
    """Two primaries on one file would interleave their erases and writes: the second is
    refused while the first has it open, in another process too, and reading it for `flash
    show` still works."""
    import subprocess
    import sys

    path = tmp_path / "f.flash"
    first = Flash.open(path, Geometry(4096, 64 * 1024))
    Bootloader(first).provision(OLD)
    with pytest.raises(FlashError, match="in use by another primary"):
        Flash.open(path)
    r = subprocess.run([sys.executable, "-m", "dualmcu", "primary", "-p", "/dev/null", "--flash", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "in use by another primary" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "dualmcu", "flash", "show", "--flash", str(path), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first.close()
    Flash.open(path).close()  # released with the file


def test_erases_are_counted_per_page_and_kept_in_the_file(tmp_path):
    path = tmp_path / "f.flash"
    f = Flash.open(path, G)
    Bootloader(f).provision(OLD)
    slot = G.slot_offset(0) // G.page_size
    assert f.erases[slot] == 1 and f.erase_counts()["slot_a"] == {"max": 1, "total": 5}
    f.erase_page(G.slot_offset(0))
    f.close()
    f = Flash.open(path)
    assert f.erases[slot] == 2 and f.erase_counts()["boot_state"] == {"max": 1, "total": 1}
    f.close()


def test_a_layout_2_file_gains_its_counters_when_a_primary_opens_it(tmp_path):
    import struct
    import zlib

    from dualmcu.primary.flash import HEADER

    path = tmp_path / "f.flash"
    f = Flash.open(path, G)
    Bootloader(f).provision(OLD)
    f.close()
    raw = bytearray(path.read_bytes()[: G.total])  # layout 2: no counters after the flash
    struct.pack_into("<H", raw, 8, 2)
    raw[HEADER.size : HEADER.size + 4] = zlib.crc32(bytes(raw[: HEADER.size])).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    f = Flash.open(path, create=False, lock=False)  # `flash show` reads it as it is
    assert path.stat().st_size == G.total and BootStore(f).load() is not None
    f.close()
    f = Flash.open(path)  # a primary upgrades it
    assert path.stat().st_size == G.file_size and sum(f.erases) == 0 and BootStore(f).load() is not None
    f.erase_page(G.slot_offset(1))
    f.close()
    f = Flash.open(path)
    assert f.erases[G.slot_offset(1) // G.page_size] == 1
    f.close()


def test_reading_a_flash_file_opens_it_read_only(tmp_path):
    """`flash show` of another user's flash file, or a read-only copy, must work: it opened
    the file for writing (refused for a non-owner; root, as in CI, is never refused, so the
    mode itself is the check)."""
    from dualmcu.primary.inspect import describe

    path = tmp_path / "f.flash"
    f = Flash.open(path, G)
    Bootloader(f).provision(OLD)
    f.close()
    before = path.read_bytes()
    path.chmod(0o444)
    f = Flash.open(path, create=False, lock=False)
    assert f._store.f.mode == "rb"
    f.close()
    assert describe(str(path))["active_slot"] == "A" and path.read_bytes() == before


def test_a_worn_out_page_fails_its_erase_and_keeps_its_bits():
    f = Flash.in_memory(G, endurance=3)
    off = G.slot_offset(1)
    for _ in range(3):
        f.erase_page(off)
    f.program(off, b"\x00" * 16)
    with pytest.raises(FlashError, match="worn out"):
        f.erase_page(off)
    assert f.read(off, 16) == bytes(16) and f.erases[off // G.page_size] == 4


def test_a_worn_boot_state_page_leaves_the_device_running_on_its_confirmed_image():
    """Every boot writes the boot state; once a copy's page wears out the record is kept in
    RAM, the previous one stays on flash, and the device still boots its image."""
    from dualmcu.framing import get_profile
    from dualmcu.primary.device import PrimaryConfig, PrimaryDevice

    f = Flash.in_memory(G, endurance=4)
    Bootloader(f).provision(OLD)
    events = []
    for _ in range(12):
        dev = PrimaryDevice(f, get_profile("cobs"), PrimaryConfig(), 0.0,
                            emit=lambda kind, **fields: events.append((kind, fields)))
        assert dev.boot.slot == 0
    unsaved = [fields["error"] for kind, fields in events if kind == "boot_state_not_saved"]
    assert unsaved and all("worn out" in e for e in unsaved)
    assert BootStore(f).load().active == 0 and f.erase_counts()["boot_state"]["max"] > 4


def count_ops(action) -> int:
    f = fresh()
    f.interrupt = None
    start = f.ops
    action(f)
    return f.ops - start


def cycle(f):
    """A whole update as the primary does it: invalidate, write, install, boot, confirm."""
    b = Bootloader(f)
    b.invalidate(1)
    write_slot(f, 1, NEW)
    b.install(1, len(NEW))
    b.boot()
    b.confirm()


@given(st.data())
def test_a_power_cut_at_any_flash_operation_never_bricks_the_device(data):
    total = count_ops(cycle)
    cut_at = data.draw(st.integers(1, total), label="cut_at")
    f = fresh()
    start = f.ops

    def interrupt(op, kind, off, n):
        if op - start == cut_at:
            return data.draw(st.integers(0, n), label="applied")
        return None

    f.interrupt = interrupt
    try:
        cycle(f)
    except PowerCut:
        pass
    f.interrupt = None
    r = Bootloader(f).boot()
    assert r.slot is not None
    assert verify_slot(f, r.state, r.slot)
    image = f.read(G.slot_offset(r.slot), r.state.slots[r.slot].length)
    assert image in (OLD, NEW)


def test_flash_endurance_reaches_the_flash_the_primary_opens(tmp_path, monkeypatch):
    """--flash-endurance is handed to the flash file the primary opens, not only parsed."""
    from click.testing import CliRunner

    from dualmcu.cli import main

    image = tmp_path / "fw.bin"
    image.write_bytes(OLD)
    # A flash file that exists is opened before the port (a new one only once the port is
    # open), so /dev/null, not a port, ends the run after the open this test looks at.
    path = tmp_path / "f.flash"
    Flash.open(path, Geometry(4096, 64 * 1024)).close()
    opened = []
    real_open = Flash.open

    def spy(*a, **kw):
        f = real_open(*a, **kw)
        opened.append(f.endurance)
        return f

    monkeypatch.setattr(Flash, "open", spy)
    r = CliRunner().invoke(main, ["primary", "-p", "/dev/null", "--flash", str(path),
                                  "--provision", str(image), "--slot-size", "64K", "--flash-endurance", "7"])
    assert opened == [7], (opened, r.output)


def test_a_flash_file_that_cannot_be_made_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk: the half-made file would keep it full after the error."""
    import builtins

    from dualmcu.primary.flash import Flash, FlashError, Geometry

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 100_000:
                raise OSError(28, "No space left on device")
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: (
        Full(real_open(p, mode, *a, **k)) if str(p).endswith(".new") else real_open(p, mode, *a, **k)))
    path = tmp_path / "dev.flash"
    with pytest.raises(FlashError) as e:
        Flash.open(path, Geometry(4096, 256 * 1024))
    assert str(e.value) == f"cannot make the flash file {path} (552960 bytes): No space left on device"
    assert list(tmp_path.iterdir()) == []
