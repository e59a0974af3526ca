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
