"""Resume after a restart: progress kept in the boot state, confirmed by the file's CRC-32."""

import pytest

from dualmcu.image.firmware import build_image, make_info
from dualmcu.link import LinkConfig
from dualmcu.sim import Simulation
from support import active_image, provisioned, tagged
from dualmcu.ncp.core import NcpConfig
from dualmcu.ncp.update import Shipment
from dualmcu.primary.boot import BootStore

B = "Jan  1 2026 00:00:00"
NEW = build_image(make_info("1.1.0", "TMPLR", build=B), 300_000, seed=5)


def device():
    return provisioned(tagged("1.0.0", "TMPLR", 30_000), 512 * 1024)


def image(flash):
    return active_image(flash)[1]


def interrupted(ship, flash=None, at=200_000, **kw):
    s = Simulation(flash or device(), ship, link=LinkConfig(baud=921600, latency=0.001), **kw)
    s.run_until(lambda s: any(e["offset"] >= at for e in s.find("ota_progress", "ncp")))
    s.restart_primary()  # a power cut: only the flash is kept
    return s


def test_a_restart_mid_transfer_resumes_at_the_persisted_offset():
    s = interrupted(Shipment.from_bytes(NEW, "new.bin"))
    assert s.run_update() == "success"
    (resumed,) = s.find("ota_resumed", "ncp")
    assert 128 * 1024 <= resumed["offset"] <= 200_000 and resumed["offset"] % 4096 == 0
    assert image(s.flash) == NEW  # the final digests still cover the whole image
    assert BootStore(s.flash).load().receiving.size == 0  # cleared at install


def test_a_different_image_starts_over():
    s = interrupted(Shipment.from_bytes(NEW, "new.bin"))
    other = build_image(make_info("1.1.0", "TMPLR", build="Feb  2 2026 00:00:00"), 300_000, seed=6)
    s.ncp.shipment = s.shipment = Shipment.from_bytes(other, "other.bin")
    s.ncp.serve_from = s.shipment.source
    assert s.run_update() == "success"
    assert not s.find("ota_resumed", "ncp")
    assert image(s.flash) == other


def test_same_version_and_build_but_other_bytes_is_caught_by_the_file_crc():
    s = interrupted(Shipment.from_bytes(NEW, "new.bin"))
    changed = bytearray(NEW)
    changed[1000] ^= 0xFF  # inside what was already written
    s.ncp.shipment = s.shipment = Shipment.from_bytes(bytes(changed), "new.bin")
    s.ncp.serve_from = s.shipment.source
    assert s.run_update() == "success"
    assert not s.find("ota_resumed", "ncp")
    assert image(s.flash) == bytes(changed)


@pytest.mark.parametrize("who", ["ncp", "primary"])
def test_a_plain_peer_starts_over(who):
    from dualmcu.primary.device import PrimaryConfig
    from dualmcu.primary.ota import OtaConfig

    kw = {"ncp_config": NcpConfig(resume=False)} if who == "ncp" else \
         {"primary_config": PrimaryConfig(ota=OtaConfig(resume=False))}
    s = interrupted(Shipment.from_bytes(NEW, "new.bin"), **kw)
    assert s.run_update() == "success"
    assert not s.find("ota_resumed", "ncp")
    assert image(s.flash) == NEW


def test_a_write_is_answered_before_its_checkpoint_is_written_and_never_after_the_next_chunk():
    """A checkpoint reads the new pages back and writes a boot-state record: a share of a
    chunk's time the NCP need not wait for.  The primary answers the write first and makes
    the checkpoint once the answer is out (idle), at the latest before the next chunk is
    programmed.  Seen from the wire: when an answer leaves, the record may lag the written
    bytes by a checkpoint's worth, never by more than that and one chunk."""
    from dualmcu.primary.device import PrimaryConfig
    from dualmcu.primary.ota import OtaConfig
    from dualmcu.primary.timing import FlashTiming

    # An instant flash: the answer is due as soon as the chunk is in (with flash timing the
    # answer waits for the program, and the checkpoint is long made when it leaves).
    cfg = OtaConfig(chunk_size=4064, timing=FlashTiming(0, 0, 0))
    lags, sim = [], []

    def to_ncp(data: bytes) -> bytes:
        t = sim[0].primary.ota.t if sim else None
        if t is not None and t.kind == "image":
            lags.append(t.written - BootStore(sim[0].flash).load().receiving.offset)
        return data

    # One write at a time, so that each answer leaves on its own (a window's answers leave
    # together, and each chunk's program makes the checkpoint of the one before it).
    s = Simulation(device(), Shipment.from_bytes(NEW, "new.bin"), link=LinkConfig(baud=921600, latency=0.001),
                   ncp_config=NcpConfig(pipeline=False), primary_config=PrimaryConfig(ota=cfg), tap_to_ncp=to_ncp)
    sim.append(s)
    assert s.run_update() == "success" and image(s.flash) == NEW
    assert max(lags) >= cfg.checkpoint_every  # answered before its checkpoint
    assert max(lags) < cfg.checkpoint_every + cfg.chunk_size + s.flash.page_size


def test_a_checkpoint_that_fails_after_the_answer_ends_the_transfer_with_flash_error():
    """The boot state's page wears out under a checkpoint made after the write was answered:
    the transfer ends as when a write's own flash operation fails, and the device runs on
    its confirmed image."""
    from dualmcu.primary.flash import Flash, Geometry
    from dualmcu.primary.boot import Bootloader

    f = Flash.in_memory(Geometry(4096, 512 * 1024), endurance=3)
    Bootloader(f).provision(tagged("1.0.0", "TMPLR", 30_000))
    s = Simulation(f, Shipment.from_bytes(NEW, "new.bin"), link=LinkConfig(baud=921600, latency=0.001))
    assert s.run_update() != "success"
    refused = [e for e in s.find("ota_refused", "primary") if e["reason"] == "flash_error"]
    assert refused and "worn out" in refused[0]["error"]
    assert [e["reason"] for e in s.find("ota_cancelled", "primary")] == ["flash_error"]
    assert active_image(s.flash)[0].active == 0 and s.primary.info["mcu"] == "1.0.0"
