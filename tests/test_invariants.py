"""The emulated pair under every fault at once, driven by Hypothesis.

A state machine runs an update between the real NCP and primary cores on the simulated link,
on a virtual clock, while rules damage the link, cut the power at any flash operation (with
any part of that operation applied), restart either side and cut the wire. After every step:

* the primary can always boot, and what it would boot verifies: never a partial, corrupted
  or unverified image (no sequence of faults bricks it);
* every slot the boot state records as installed holds exactly the old or the new image: no
  corrupted byte ever reaches a slot that is marked bootable;
* each image runs with its own configuration: the old image's store is never written by the
  update (a rollback finds it as it was), and a store its image owns has that image's schema.

The file shipped is drawn too: the image, a delta package against the old image, a
compressed package, or a release of the delta and the image (the NCP falls back to the image
when the delta fails).  Packages have 8 KiB segments, so resume points fall inside them.

The new image is drawn from three builds: a good one with a newer configuration schema (a
migration on its trial boot), one whose migration breaks the old schema and then fails its
health check, and one that hangs until the commit timer rolls it back.  The battery may
drop below the deferral threshold at any step and recovers within a minute.

At the end the faults stop, and the update must end, within bounded virtual time, in exactly
one outcome: installed and confirmed, rolled back, or cancelled with a reason.

    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_invariants.py   # the longer hunt
"""

import hashlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from dualmcu.image.firmware import build_image, make_info
from dualmcu.link import Faults, LinkConfig
from dualmcu.sim import Simulation
from dualmcu.ncp.core import NcpConfig
from dualmcu.image.package import build_package
from dualmcu.ncp.update import Catalog, Shipment
from dualmcu.primary.boot import Bootloader, BootStore, bootable, verify_slot
from dualmcu.primary.config import ConfigStore
from dualmcu.primary.device import PrimaryConfig
from dualmcu.primary.flash import Flash, Geometry
from dualmcu.primary.ota import OtaConfig

G = Geometry(1024, 96 * 1024)
OLD = build_image(make_info("1.0.0", "TMPLINV", build="Jan  1 2026 00:00:00"), 20_000, seed=1)
NEWS = {kind: build_image(make_info("1.1.0", "TMPLINV", build="Jan  1 2026 00:00:00", **{"config-schema": "2"},
                                   **({"dualmcu-test": kind} if kind != "good" else {})), 40_000, seed=2)
        for kind in ("good", "breaking-migration", "hang")}
PACKAGES = {kind: {"delta": build_package(new, OLD, "heatshrink", segment=8192),
                   "compressed": build_package(new, None, "lzma", segment=8192)} for kind, new in NEWS.items()}
SCHEMA = {hashlib.sha256(OLD).digest(): 1, **{hashlib.sha256(n).digest(): 2 for n in NEWS.values()}}
ENDINGS = {"success", "up_to_date", "rollback", "refused", "download_limit", "download_failed", "finish_failed",
           "interrupted", "offer_failed", "prefetch_failed", "start_timeout", "no_report", "device_failed"}

rates = st.sampled_from([0.0, 1e-5, 1e-4, 1e-3])


class UpdateUnderFire(RuleBasedStateMachine):
    @initialize(framing=st.sampled_from(["cobs", "blynk"]), seed=st.integers(0, 2**16),
                prefetch=st.booleans(), kind=st.sampled_from(sorted(NEWS)),
                file=st.sampled_from(["image", "delta", "compressed", "release"]))
    def start(self, framing, seed, prefetch, kind, file):
        self.flash = Flash.in_memory(G)
        Bootloader(self.flash).provision(OLD)
        self.new = NEWS[kind]
        self.good = {hashlib.sha256(OLD).digest(), hashlib.sha256(self.new).digest()}
        files = {"image": [("new.bin", self.new)], "delta": [("new.pkg", PACKAGES[kind]["delta"])],
                 "compressed": [("new.pkg", PACKAGES[kind]["compressed"])],
                 "release": [("new.bin", self.new), ("new.pkg", PACKAGES[kind]["delta"])]}[file]
        self.sim = Simulation(
            self.flash, Catalog([Shipment.from_bytes(data, name) for name, data in files]), framing=framing,
            link=LinkConfig(baud=921600, latency=0.001, seed=seed),
            ncp_config=NcpConfig(retries=5, offers=4),
            primary_config=PrimaryConfig(ota=OtaConfig(chunk_size=512, ota_timeout=5.0, prefetch=prefetch,
                                                       battery_rate=3600.0),  # 1 % a second
                                         heartbeat=2.0, commit_timeout=10.0),
        )
        # The old image's configuration, as its first boot wrote it: no update may change it.
        self.old_config = ConfigStore(self.flash, 0).load()

    @rule(level=st.floats(0, 19))
    def battery_drops(self, level):
        ota = self.sim.primary_config.ota
        ota.battery = level - ota.battery_rate * self.sim.now / 3600

    @rule(dt=st.floats(0.001, 3.0))
    def run_for(self, dt):
        self.sim.run_until(lambda s: False, limit=self.sim.now + dt)

    @rule(ber=rates, drop=rates, dup=rates, garbage=rates, stall=rates)
    def damage_the_link(self, ber, drop, dup, garbage, stall):
        self.sim.link.cfg.faults = Faults(ber=ber, drop=drop, dup=dup, garbage=garbage, stall=stall)

    @rule()
    def quiet_link(self):
        self.sim.link.cfg.faults = Faults()

    @rule(after=st.integers(1, 60), part=st.floats(0, 1))
    def power_cut_soon(self, after, part):
        target = self.flash.ops + after

        def interrupt(op, kind, offset, length):
            if op == target:
                self.flash.interrupt = None
                return int(length * part)
            return None

        self.flash.interrupt = interrupt

    @rule()
    def restart_primary(self):
        self.sim.restart_primary()

    @rule()
    def restart_ncp(self):
        self.sim.restart_ncp()

    @rule(side=st.sampled_from(["a", "b"]), seconds=st.floats(0.01, 8.0))
    def cut_the_wire(self, side, seconds):
        self.sim.link.disconnect(side, self.sim.now, seconds)

    @invariant()
    def never_bricked(self):
        if not hasattr(self, "sim"):
            return
        slot = bootable(self.flash)
        assert slot is not None, "no bootable image"
        assert self.sim.halted is None

    @invariant()
    def only_whole_images_are_installed(self):
        if not hasattr(self, "sim"):
            return
        state = BootStore(self.flash).load()
        for i, rec in enumerate(state.slots):
            if rec.installed:
                assert rec.sha256 in self.good, f"slot {'AB'[i]} is recorded with a foreign digest"
                if verify_slot(self.flash, state, i):
                    image = self.flash.read(G.slot_offset(i), rec.length)
                    assert image in (OLD, self.new)

    @invariant()
    def each_image_keeps_its_own_configuration(self):
        if not hasattr(self, "sim"):
            return
        assert ConfigStore(self.flash, 0).load() == self.old_config, "the old image's configuration changed"
        state = BootStore(self.flash).load()
        for i, rec in enumerate(state.slots):
            cfg = ConfigStore(self.flash, i).load()
            if rec.installed and cfg is not None and cfg.owner == rec.sha256[:8]:
                assert cfg.schema == SCHEMA[rec.sha256], f"slot {'AB'[i]} runs with schema {cfg.schema}"

    def teardown(self):
        if not hasattr(self, "sim"):
            return
        s = self.sim
        s.link.cfg.faults = Faults()
        self.flash.interrupt = None
        limit = s.now + 900

        def ended(sim):
            ota = sim.primary.ota
            return (sim.ncp.outcome is not None and not sim.in_flight() and sim.primary.ready
                    and not sim.primary.boot.trial and (ota is None or ota.state.value == "idle"))

        assert s.run_until(ended, limit=limit), f"no end by {limit:.0f} s: ncp {s.ncp.tx}, outcome {s.ncp.outcome}"
        outcome = s.ncp.outcome
        assert outcome in ENDINGS, outcome
        state = BootStore(self.flash).load()
        image = self.flash.read(G.slot_offset(state.active), state.slots[state.active].length)
        assert state.confirmed == state.active and not state.trial
        if outcome in ("success", "up_to_date"):
            assert image == self.new and self.new == NEWS["good"]
        else:
            # rolled back, or cancelled: the outcome is the reason code, and the device runs a
            # whole image it had confirmed
            assert image in (OLD, self.new)
        if image == OLD:
            assert ConfigStore(self.flash, 0).load() == self.old_config


UpdateUnderFire.TestCase.settings = settings(settings(), stateful_step_count=25, deadline=None)
TestUpdateUnderFire = UpdateUnderFire.TestCase
