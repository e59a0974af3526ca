"""What a hostile NCP or a careless image cannot do: install what was not offered, touch the
flash with a malformed offer, crash the primary with a tag it cannot read."""

from __future__ import annotations

import hashlib

import pytest

from dualmcu.framing import get_profile
from dualmcu.image.firmware import build_image
from dualmcu.ncp.update import Shipment
from dualmcu.primary.device import PrimaryConfig, PrimaryDevice
from dualmcu.primary.ota import OtaConfig
from dualmcu.rpc import Incoming
from dualmcu.rpc.events import Event
from dualmcu.rpc.interface import INTERFACE
from dualmcu.sim import Simulation
from support import active_image, provisioned, tagged

OLD = tagged("1.0.0", "TMPL1", 30_000)


def lying(image: bytes, **claims) -> Shipment:
    """A shipment whose offer claims what the image's own tag does not say."""
    s = Shipment.from_bytes(image, "fw.bin")
    s.info.update(claims)
    return s


@pytest.mark.parametrize("image,claims,reason", [
    (tagged("0.5.0", "TMPL1", 60_000), {"mcu": "9.9.9"}, "image_not_as_offered"),  # a downgrade in disguise
    (tagged("2.0.0", "TMPLX", 60_000), {"fw-type": "TMPL1"}, "image_wrong_type"),  # another product's firmware
    (tagged("1.0.0", "TMPL1", 60_000, build="Feb  2 2026 00:00:00"), {"mcu": "1.0.1"}, "image_not_as_offered"),
])
def test_the_primary_checks_the_image_it_received_not_the_offer(image, claims, reason):
    flash = provisioned(OLD)
    s = Simulation(flash, lying(image, **claims))
    s.run_update()
    refused = [e["reason"] for e in s.find("ota_refused", "primary")]
    assert reason in refused and not s.find("ota_installed", "primary")
    st, running = active_image(flash)
    assert hashlib.sha256(running).digest() == hashlib.sha256(OLD).digest() and st.active == 0


def test_a_version_policy_applies_to_the_received_tag():
    older = tagged("0.9.0", "TMPL1", 60_000)
    s = Simulation(provisioned(OLD), lying(older, mcu="0.9.0"),
                   primary_config=PrimaryConfig(ota=OtaConfig(version_policy="newer")))
    s.run_update()
    assert not s.find("ota_installed", "primary")


def receiver():
    dev = PrimaryDevice(provisioned(OLD, 256 * 1024), get_profile("cobs"), PrimaryConfig(), 0.0)
    return dev


@pytest.mark.parametrize("field,value", [("fw_version", "1.1\udcff"), ("fw_build", "b\udc80"),
                                         ("filename", "a\nforged line"), ("fw_version", "1." * 200)])
def test_a_malformed_offer_is_refused_before_any_flash_operation(field, value):
    dev = receiver()
    before = bytes(dev.flash._store.buf)
    ops = dev.flash.ops
    args = {"filename": "f.bin", "size": 4096, "fw_type": "TMPL1", "fw_version": "1.1.0", "fw_build": "b", field: value}
    events = []
    dev.ota.emit = lambda kind, **f: events.append((kind, f))
    assert dev.ota.on_available(Incoming(INTERFACE["client_otaUpdateAvailable"], 1, args, 0.0)) is False
    assert ("ota_refused", "bad_offer") in [(k, f.get("reason")) for k, f in events]
    assert dev.flash.ops == ops and bytes(dev.flash._store.buf) == before


def test_an_image_whose_tag_lacks_its_version_boots_and_is_never_installed_by_ota():
    no_version = build_image({"fw-type": "TMPL1", "build": "Jan  1 2026 00:00:00"}, 30_000)
    flash = provisioned(no_version)
    dev = PrimaryDevice(flash, get_profile("cobs"), PrimaryConfig(), 0.0)  # no crash at boot
    assert dev.ota is not None and not dev.described
    s = Simulation(provisioned(OLD), lying(build_image({"fw-type": "TMPL1", "build": "x"}, 40_000), mcu="2.0.0"))
    s.run_update()
    assert "image_untagged" in [e["reason"] for e in s.find("ota_refused", "primary")]


def test_peer_text_never_reaches_the_terminal_as_control_characters():
    """A filename or version from a peer is shown escaped: an escape sequence in it would
    otherwise clear, recolour or rewrite the user's terminal."""
    import io

    from dualmcu.output import EventPrinter

    out = io.StringIO()
    EventPrinter("primary", as_json=False, out=out)(Event.OTA_OFFER, t=1.0, filename="a\x1b[2Jb\r\nforged", size=1)
    line = out.getvalue()
    assert "\x1b" not in line and "\r" not in line and line.count("\n") == 1
    assert "a\\x1b[2Jb\\r\\nforged" in line


def test_an_unusable_store_is_refused_at_start(tmp_path):
    import subprocess
    import sys

    from dualmcu.ncp.update import Store

    blocker = tmp_path / "file"
    blocker.write_bytes(b"")  # a file where the store's parent directory should be
    with pytest.raises(OSError):
        Store(blocker / "store").check()
    r = subprocess.run([sys.executable, "-m", "dualmcu", "ncp", "-p", "/dev/null", "--store", str(blocker / "s")],
                       capture_output=True)
    assert r.returncode == 2 and r.stderr.decode().startswith("Error: cannot use") and b"Traceback" not in r.stderr


def test_a_symlink_planted_in_the_store_is_replaced_not_followed(tmp_path):
    import os

    from dualmcu.ncp.update import Source, Store

    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    store = tmp_path / "store"
    store.mkdir()
    os.symlink(victim, store / "ota.bin.part")
    Store(store).save("ota.bin", Source(data=b"x" * 100), 100)
    assert victim.read_bytes() == b"keep me" and (store / "ota.bin").read_bytes() == b"x" * 100


def test_a_failing_store_ends_prefetch_with_the_interfaces_code():
    from dualmcu.ncp.update import Store

    class Full(Store):
        def save(self, *a, **k):
            raise OSError(28, "No space left on device")

    s = Simulation(provisioned(OLD), Shipment.from_bytes(tagged("1.1.0", "TMPL1", 30_000), "n.bin"),
                   primary_config=PrimaryConfig(ota=OtaConfig(prefetch=True)))
    s.store = s.ncp.store = Full()
    assert s.run_update() == "prefetch_failed"
    assert s.find("prefetch_failed", "ncp")[0]["reason"] == "no_fs_space"
    assert s.find("ota_cancelled", "primary")[0]["reason"] == "prefetch_failed:no_fs_space"


def test_a_download_that_did_not_land_leaves_nothing_in_the_store(tmp_path):
    """A full disk: the part written must not keep it full after the failure is reported."""
    import os

    from dualmcu.ncp.update import Source, Store

    class Failing(Source):
        def read(self, pos, n):
            if pos >= 200:
                raise OSError(28, "No space left on device")
            return b"x" * n

    store = tmp_path / "store"
    with pytest.raises(OSError):
        Store(store).save("ota.bin", Failing(data=b""), 1000, block=100)
    assert os.listdir(store) == []


class Terminal:
    """A stream that says it is a terminal of a given width, and keeps what was drawn."""

    def __init__(self, columns: int):
        import io

        self.columns, self.buf = columns, io.StringIO()
        self.write, self.flush, self.getvalue = self.buf.write, self.buf.flush, self.buf.getvalue

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("not a real terminal")


@pytest.mark.parametrize("columns", [20, 60, 132])
def test_the_progress_line_never_wraps(monkeypatch, columns):
    # A line wider than the terminal wraps, and a wrapped line is not redrawn in place: each
    # redraw adds a line (95 lines for one transfer at 60 columns).  The line is cut instead.
    import os
    import shutil

    from dualmcu.output import EventPrinter

    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: os.terminal_size((columns, 24)))
    term = Terminal(columns)
    printer = EventPrinter("ncp", as_json=False, out=term, start=100.0)
    clock = iter(range(10_000))
    monkeypatch.setattr("dualmcu.shell.time.monotonic", lambda: next(clock))  # each draw is due
    for off in range(0, 300 * 1024 + 1, 1024):
        printer(Event.OTA_PROGRESS, t=101.0, offset=off, size=300 * 1024, retries=3)
    printer(Event.OTA_FINISHED, t=130.25, outcome="success")
    drawn = term.getvalue()
    lines = drawn.split("\n")
    assert len(lines) == 3 and lines[-1] == ""  # the progress line, closed, then the event
    assert all(len(piece.replace("\x1b[K", "")) < columns for piece in lines[0].split("\r"))
    assert "300.0/300.0 KiB" in drawn or columns < 30
    assert lines[1].split()[:2] == ["ncp", "30.250"]  # seconds since the side started


def test_a_firmware_file_over_4_gib_is_refused_before_it_is_read(tmp_path):
    """otaUpdateAvailable's size is 32 bits: a 5 GiB file (sparse here) was hashed for 18 s,
    then crashed the NCP at the offer.  It is refused at once, in one line."""
    import subprocess
    import sys

    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(5 << 30)
    r = subprocess.run([sys.executable, "-m", "dualmcu", "ncp", "--port", "/dev/null", "--firmware", str(huge)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "32-bit size" in r.stderr and "Traceback" not in r.stderr


def test_an_offer_flood_costs_no_erase_work_and_no_boot_state_writes():
    """Each accepted offer used to erase up to 3 s of the slot before answering, and to write
    the boot state: 2,000 offers wore a boot-state page 1,000 times.  Now an offer is
    answered at once, the erase goes on only in the flash's idle time, and the boot state is
    written once (the slot's old image forgotten)."""
    from dualmcu.framing import get_profile
    from dualmcu.rpc import NCP, Endpoint

    prof = get_profile("cobs")
    flash = provisioned(OLD, 1 << 20)
    dev = PrimaryDevice(flash, prof, PrimaryConfig(), 0.0)
    before = flash.erase_counts()
    ncp = Endpoint(NCP, prof)
    ncp.handle("blynk_otaUpdateStart", lambda inc: True)
    now = 0.0
    for i in range(300):
        c = ncp.call("client_otaUpdateAvailable", {"filename": "f.bin", "size": 900_000, "fw_type": "TMPL1",
                                                   "fw_version": f"2.0.{i}", "fw_build": f"b{i}"}, now=now)
        dev.receive(ncp.data_to_send(), now)
        ncp.receive(dev.data_to_send(), now)
        assert c.ok and c.result is True  # answered in the same instant: no flash work before it
        now += 0.001
        dev.tick(now)
        ncp.tick(now)
        dev.receive(ncp.data_to_send(), now)
    after = flash.erase_counts()
    assert after["boot_state"]["total"] - before["boot_state"]["total"] <= 1
    # 300 ms of idle flash in all: two blocks' worth of erase ahead at most, never more.
    assert after["slot_b"]["max"] <= 1 and after["slot_b"]["total"] <= 32
