"""``dualmcu fleet``: rehearse a rollout over a fleet of emulated devices.

Every device is a real pair: the NCP and primary cores on the simulated link, on a virtual
clock of its own (dualmcu/sim.py), provisioned with the image its population group starts on.
The rollout controller stays here, in one process; each wave's devices are sharded across
Dask workers (a local cluster of this machine's cores by default, an existing scheduler with
``--scheduler``).  A device's result depends on its seed only, so the same seed gives the same
fleet and the same summary whatever the number of workers.

The population file (TOML, or YAML by its name) describes groups by share; the plan file the
rollout:

    # population.toml                       # plan.toml
    devices = 200                           channel = "stable"
    seed = 1                                canary_percent = 5
    [[group]]                               ramp_percent = [25, 50, 100]
    share = 0.7                             soak_seconds = 86400
    hw_rev = "A"                            min_version = "1.0.0"      # optional
    version = "1.0.0"                       blocklist = []
    channel = "stable"                      [gates]
    baud = 921600                           min_confirm_rate = 0.95
    ber = 0.0                               max_rollback_rate = 0.02
    drop = 0.0                              max_download_limit_rate = 0.05
    battery = [30.0, 100.0]                 [[actions]]
    slow_flash_share = 0.1                  at_seconds = 172800
    weak_flash_share = 0.01   # a worn sector
    install_window = [1, 5]   # UTC hours
                                            action = "pause"          # pause, resume, stop, blocklist
                                            build = "1.1.0"           # for blocklist

Waves: the canary, then each ramp step, each a cumulative percent of the eligible devices (on
the plan's channel and hardware targets, below the new version, in a seeded order).  A wave
starts when the one before has soaked; at its end the gates are applied to everything offered
so far, and a failed gate pauses the rollout.  Operator actions take effect at the first wave
boundary at or after their time; a live operator's (the dashboard's buttons, ``Operator``)
as they arrive between waves, or when the wave in progress ends.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import queue
import random
import time
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Callable, Iterator

from dualmcu.image.firmware import build_image, is_newer, make_info
from dualmcu.image.inputs import MAX_TEXT, InputFileError, read_input
from dualmcu.link import Faults, LinkConfig
from dualmcu.ncp.core import NcpConfig
from dualmcu.ncp.outcome import Outcome
from dualmcu.ncp.update import Catalog, Shipment
from dualmcu.primary.boot import Bootloader, BootStore
from dualmcu.primary.device import PrimaryConfig
from dualmcu.primary.flash import Flash, Geometry, Identity
from dualmcu.primary.ota import OtaConfig
from dualmcu.primary.timing import FlashTiming
from dualmcu.rpc.events import Event
from dualmcu.sim import Simulation

FW_TYPE = "TMPLFLEET"
BUILD = "Nov 21 2026 12:00:00"
DEVICE_LIMIT = 3600.0  # virtual seconds one device's update may take, once it may install
EPOCH_MS = 1_795_219_200_000  # 2026-11-21T00:00:00Z: the rollout's day 0, as getTime tells it
STATES = ("completed", "paused", "stopped")
ACTIONS = ("pause", "resume", "stop", "blocklist")


class FleetError(ValueError):
    """A population or plan that cannot be run (one line for the user)."""


# -- the population ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    share: float = 1.0
    hw_rev: str = "A"
    version: str = "1.0.0"
    channel: str = "stable"
    baud: int = 921600
    ber: float = 0.0
    drop: float = 0.0
    battery: tuple[float, float] = (100.0, 100.0)
    slow_flash_share: float = 0.0
    weak_flash_share: float = 0.0
    install_window: tuple[int, int] | None = None  # UTC hours [start, end); None: any time


@dataclass(frozen=True)
class DeviceSpec:
    id: int
    seed: int
    hw_rev: str
    version: str
    channel: str
    baud: int
    ber: float
    drop: float
    battery: float
    slow_flash: bool
    install_window: tuple[int, int] | None = None
    weak_flash: bool = False  # one sector of the update slot has used up its rated erases
    group: int = 1  # which group of the population file it was drawn from, counted from 1


def _number(d: dict, key: str, default: float, lo: float, hi: float, where: str) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise FleetError(f"{where}: {key} = {v!r} is not a number from {lo} to {hi}")
    return float(v)


POPULATION_KEYS = ("devices", "seed", "group")
GROUP_KEYS = ("share", "hw_rev", "version", "channel", "baud", "ber", "drop", "battery",
              "slow_flash_share", "weak_flash_share", "install_window")
PLAN_KEYS = ("channel", "hw_revs", "canary_percent", "ramp_percent", "soak_seconds", "min_version",
             "blocklist", "gates", "actions")
GATE_KEYS = ("min_confirm_rate", "max_rollback_rate", "max_download_limit_rate")
ACTION_KEYS = ("at_seconds", "action", "build")


def _known(d: dict, keys: tuple[str, ...], where: str) -> None:
    """A key the file format does not have is refused: a misspelt one (canary = 5) would
    otherwise leave its default in place without a word."""
    for key in d:
        if key not in keys:
            near = difflib.get_close_matches(str(key), keys, n=1)
            hint = f" (did you mean {near[0]}?)" if near else f" (known: {', '.join(keys)})"
            raise FleetError(f"{where}: unknown key {key!r}{hint}")


def parse_population(data: dict, devices: int | None = None, seed: int | None = None) -> tuple[list[Group], int, int]:
    _known(data, POPULATION_KEYS, "population")
    if not isinstance(data.get("group", []), list):
        raise FleetError("population: [[group]] must be a list of tables")
    groups = []
    for i, g in enumerate(data.get("group") or [{}]):
        where = f"population group {i + 1}"
        if not isinstance(g, dict):
            raise FleetError(f"{where}: a group is a table of keys (share, hw_rev, version, ...)")
        _known(g, GROUP_KEYS, where)
        bat = g.get("battery", [100.0, 100.0])
        if not (isinstance(bat, list) and len(bat) == 2):
            raise FleetError(f"{where}: battery is [low, high] in percent")
        lo_hi = tuple(_number({"b": b}, "b", 0, 0, 100, where) for b in bat)
        win = g.get("install_window")
        if win is not None:
            if not (isinstance(win, list) and len(win) == 2):
                raise FleetError(f"{where}: install_window is [start, end] in UTC hours, e.g. [1, 5]")
            win = tuple(int(_number({"h": h}, "h", 0, 0, 24, where)) for h in win)
            if win[0] == win[1]:
                raise FleetError(f"{where}: install_window {list(win)} is empty")
        groups.append(Group(
            share=_number(g, "share", 1.0, 0, 1e9, where), hw_rev=str(g.get("hw_rev", "A")),
            version=str(g.get("version", "1.0.0")), channel=str(g.get("channel", "stable")),
            baud=int(_number(g, "baud", 921600, 300, 10_000_000, where)), ber=_number(g, "ber", 0.0, 0, 0.01, where),
            drop=_number(g, "drop", 0.0, 0, 0.01, where), battery=(min(lo_hi), max(lo_hi)),
            slow_flash_share=_number(g, "slow_flash_share", 0.0, 0, 1, where),
            weak_flash_share=_number(g, "weak_flash_share", 0.0, 0, 1, where), install_window=win))
    if sum(g.share for g in groups) <= 0:
        raise FleetError("population: the groups' shares add up to 0")
    n = devices if devices is not None else int(_number(data, "devices", 100, 1, 10_000_000, "population"))
    s = seed if seed is not None else int(_number(data, "seed", 1, 0, 2**63, "population"))
    return groups, n, s


def draw_fleet(groups: list[Group], n: int, seed: int) -> list[DeviceSpec]:
    """N devices, by share; each device's draws come from its own seed, so the fleet is the
    same for a seed whatever else changes."""
    total = sum(g.share for g in groups)
    bounds, acc = [], 0.0
    for g in groups:
        acc += g.share / total
        bounds.append(acc)
    fleet = []
    for i in range(n):
        dseed = int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "little")
        r = random.Random(dseed)
        u = r.random()
        g = groups[next((k for k, b in enumerate(bounds) if u < b), len(groups) - 1)]
        fleet.append(DeviceSpec(i, dseed, g.hw_rev, g.version, g.channel, g.baud, g.ber, g.drop,
                                round(r.uniform(*g.battery), 1), r.random() < g.slow_flash_share,
                                g.install_window,
                                # Drawn last, so that adding the key leaves every other draw as it was.
                                r.random() < g.weak_flash_share, groups.index(g) + 1))
    return fleet


# -- the plan ----------------------------------------------------------------------------------


@dataclass
class Plan:
    channel: str = "stable"
    hw_revs: list[str] | None = None  # None: every revision
    canary_percent: float = 5.0
    ramp_percent: list[float] = field(default_factory=lambda: [25.0, 50.0, 100.0])
    soak_seconds: float = 86400.0
    min_confirm_rate: float = 0.95
    max_rollback_rate: float = 0.02
    max_download_limit_rate: float = 0.05
    min_version: str | None = None
    blocklist: list[str] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)  # {"at_seconds", "action", "build"}

    @property
    def waves(self) -> list[float]:
        return [self.canary_percent] + [p for p in self.ramp_percent if p > self.canary_percent]


def parse_plan(data: dict) -> Plan:
    gates = data.get("gates", {})
    if not isinstance(gates, dict):
        raise FleetError("plan: [gates] must be a table")
    _known(data, PLAN_KEYS, "plan")
    _known(gates, GATE_KEYS, "plan gates")
    ramp = data.get("ramp_percent", [25, 50, 100])
    if not isinstance(ramp, list) or not ramp:
        raise FleetError("plan: ramp_percent is a list of percents, e.g. [25, 50, 100]")
    ramp = [_number({"p": p}, "p", 0, 0, 100, "plan ramp_percent") for p in ramp]
    if ramp != sorted(ramp) or ramp[-1] != 100:
        raise FleetError("plan: ramp_percent must rise and end at 100")
    actions = data.get("actions", [])
    if not isinstance(actions, list):
        raise FleetError("plan: [[actions]] must be a list of tables")
    for i, a in enumerate(actions):
        if not isinstance(a, dict) or a.get("action") not in ACTIONS:
            raise FleetError(f"plan action {i + 1}: action is pause, resume, stop or blocklist")
        _known(a, ACTION_KEYS, f"plan action {i + 1}")
        _number(a, "at_seconds", 0, 0, 1e12, f"plan action {i + 1}")
        if a["action"] == "blocklist" and not isinstance(a.get("build"), str):
            raise FleetError(f"plan action {i + 1}: blocklist needs build = \"VERSION\"")
    revs = data.get("hw_revs")
    return Plan(
        channel=str(data.get("channel", "stable")), hw_revs=[str(r) for r in revs] if revs else None,
        canary_percent=_number(data, "canary_percent", 5.0, 0.001, 100, "plan"), ramp_percent=ramp,
        soak_seconds=_number(data, "soak_seconds", 86400.0, 0, 1e9, "plan"),
        min_confirm_rate=_number(gates, "min_confirm_rate", 0.95, 0, 1, "plan gates"),
        max_rollback_rate=_number(gates, "max_rollback_rate", 0.02, 0, 1, "plan gates"),
        max_download_limit_rate=_number(gates, "max_download_limit_rate", 0.05, 0, 1, "plan gates"),
        min_version=str(data["min_version"]) if data.get("min_version") else None,
        blocklist=[str(b) for b in data.get("blocklist", [])],
        actions=sorted((dict(a) for a in actions), key=lambda a: a["at_seconds"]))


def load_file(path: str, what: str) -> dict:
    """A population or plan file: YAML by a .yaml or .yml name, TOML otherwise."""
    try:
        data = read_input(path, f"the {what} file", MAX_TEXT)
    except InputFileError as e:
        raise FleetError(str(e)) from None
    if path.lower().endswith((".yaml", ".yml")):
        import yaml

        try:
            doc = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise FleetError(f"the {what} file {path} is not YAML: {' '.join(str(e).split())}") from None
    else:
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise FleetError(f"the {what} file {path} is not TOML: {e}") from None
    if not isinstance(doc, dict):
        raise FleetError(f"the {what} file {path} must hold a table (keys and values), not {type(doc).__name__}")
    return doc


# -- one device ----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def factory_image(version: str, size: int, fw_type: str = FW_TYPE) -> bytes:
    """What a device of the fleet starts on: one program per fw-type, one build per version."""
    return build_image(make_info(version, fw_type, build=BUILD), size, content="code")


def run_device(spec: DeviceSpec, build: Shipment, image_size: int, min_version: str | None,
               start_seconds: float = 0.0) -> dict:
    """One device's update, start to verdict, on its own virtual clock; the cloud's clock (what
    getTime tells the device, for its install window) reads the rollout's time of the wave."""
    new = build.source.read(0, build.size)
    geometry = Geometry(4096, max(64 * 1024, -(-max(len(new), image_size) // 4096) * 4096 + 4096))
    flash = Flash.in_memory(geometry, identity=Identity(spec.hw_rev, "1.0.0"))
    Bootloader(flash).provision(factory_image(spec.version, image_size, build.info.get("fw-type", FW_TYPE)))
    if spec.weak_flash:
        # A worn sector, as an old or marginal part has: its next erase fails (FlashError), so
        # the device abandons the update with flash_error and keeps running its image.
        # Provisioning put the factory image in slot A: the update goes to slot B.
        page = geometry.slot_offset(1) // geometry.page_size + random.Random(spec.seed).randrange(
            -(-len(new) // geometry.page_size))
        flash.erases[page] = flash.endurance
    timing = FlashTiming(0.002, 0.2, 0.6) if spec.slow_flash else FlashTiming()
    sim = Simulation(
        flash, Catalog([build]),  # a catalog per device: what failed on one is not failed on all
        link=LinkConfig(baud=spec.baud, latency=0.001, seed=spec.seed & 0xFFFF_FFFF,
                        faults=Faults(ber=spec.ber, drop=spec.drop)),
        ncp_config=NcpConfig(min_version=min_version, once=False,
                             wall_clock_ms=EPOCH_MS + int(start_seconds * 1000)),
        primary_config=PrimaryConfig(ota=OtaConfig(battery=spec.battery, timing=timing,
                                                   install_window=spec.install_window), commit_timeout=60.0),
    )
    # A device outside its window waits for it: up to a day more.
    outcome = sim.run_update(limit=DEVICE_LIMIT + (86400.0 if spec.install_window else 0.0)) or Outcome.TIMEOUT
    state = BootStore(flash).load()
    running = None
    if state is not None and state.slots[state.active].installed:
        from dualmcu.image.firmware import read_info_streamed

        base = geometry.slot_offset(state.active)
        info = read_info_streamed(lambda pos, n: flash.read(base + pos, n), state.slots[state.active].length)
        running = (info or {}).get("mcu")
    rollback = [e for e in sim.find(Event.ROLLBACK, "primary")]
    offers = sim.find("ota_offer", "ncp")
    ended = sim.find("ota_outcome", "ncp")
    # Why an update that did not install failed, as the device's telemetry told the cloud
    # (a worn sector's flash_error, say); a rollback's reason has its own field.
    told = (ended[-1].get("telemetry") or {}).get("ota_reason") if ended else None
    return {"id": spec.id, "hw_rev": spec.hw_rev, "group": spec.group, "from_version": spec.version, "outcome": outcome,
            "offered": bool(offers), "running": running,
            "confirmed": bool(state and state.confirmed == state.active and not state.trial),
            "rollback_reason": rollback[-1].get("reason") if rollback else None,
            "failure_reason": (told or None) if outcome not in (Outcome.SUCCESS, Outcome.ROLLBACK) else None,
            "update_seconds": round(sim.now - offers[0]["t"], 3) if offers else 0.0}


def run_shard(specs: list[DeviceSpec], new: bytes, image_size: int, min_version: str | None,
              start_seconds: float = 0.0) -> list[dict]:
    """What a worker runs: a shard of one wave's devices (the build is read and hashed once)."""
    build = Shipment.from_bytes(new, "fleet.bin")
    return [run_device(s, build, image_size, min_version, start_seconds) for s in specs]


def breakdown(results: list[dict], key: str) -> dict[str, dict]:
    """The devices offered the build, split by ``key`` (``hw_rev``, ``group``): how many, and their
    confirm and rollback rates.  A build that fails on one hardware revision shows there, not
    diluted in the fleet's rates."""
    out: dict[str, dict] = {}
    for r in results:
        if r["offered"]:
            part = out.setdefault(str(r[key]), {"offered": 0, "confirmed": 0, "rolled_back": 0})
            part["offered"] += 1
            part["confirmed"] += r["outcome"] == Outcome.SUCCESS
            part["rolled_back"] += r["outcome"] == Outcome.ROLLBACK
    return {k: {"offered": v["offered"], "confirm_rate": round(v["confirmed"] / v["offered"], 4),
                "rollback_rate": round(v["rolled_back"] / v["offered"], 4)} for k, v in sorted(out.items())}


def tally(results: list[dict], key: str) -> dict[str, int]:
    """How many results have each value of ``key`` (those without one left out), by value."""
    return dict(sorted(Counter(r[key] for r in results if r[key]).items()))


# -- the controller ------------------------------------------------------------------------------


class Executor:
    """Runs shards on Dask: a local cluster of this machine's cores, or a scheduler's workers."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None):
        from dask.distributed import Client, LocalCluster

        self._scattered: dict[str, Any] = {}
        if scheduler:
            self.cluster = None
            self.client = Client(scheduler, timeout="10s")
        else:
            import os

            self.cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                        processes=True, dashboard_address=None)
            self.client = Client(self.cluster)

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info()["workers"])

    def map_shards(self, shards: list[list[DeviceSpec]], *args) -> Iterator[list[dict]]:
        """Each shard's results as soon as it is done, in whatever order shards finish."""
        from dask.distributed import as_completed

        # The build goes to every worker once, and stays referenced for the whole rollout: a
        # scattered value whose future is dropped is released, even while the next wave's
        # scatter of the same bytes (the same key) still needs it.
        key = hashlib.sha256(args[0]).hexdigest()
        if key not in self._scattered:
            self._scattered[key] = self.client.scatter(args[0], broadcast=True)
        futures = [self.client.submit(run_shard, s, self._scattered[key], *args[1:], pure=False) for s in shards]
        for future in as_completed(futures):
            yield future.result()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class InProcess:
    """One process, no cluster: for tests and small fleets."""

    workers = 1

    def map_shards(self, shards, *args):
        for s in shards:
            yield run_shard(s, *args)

    def close(self) -> None:
        pass


class Operator:
    """The live operator: actions from another thread (the dashboard's buttons), taken by the
    rollout between waves.  A wave in progress always finishes: devices mid-update are never
    cut off, as a real cloud cannot recall an offer a device has taken."""

    def __init__(self) -> None:
        self._actions: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def request(self, action: str, build: str | None = None) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        self._actions.put((action, build))

    def take(self, timeout: float | None) -> tuple[str, str | None] | None:
        """The next action, waiting up to ``timeout`` seconds (None: until one comes)."""
        try:
            return self._actions.get(timeout=timeout) if timeout is None or timeout > 0 else self._actions.get_nowait()
        except queue.Empty:
            return None


@dataclass
class Rollout:
    fleet: list[DeviceSpec]
    plan: Plan
    new: bytes
    image_size: int
    executor: Any
    emit: Callable[[dict], None] = lambda event: None
    shards_per_worker: int = 4
    operator: Operator | None = None  # live actions; without one, only the plan's
    speed: float | None = None  # virtual seconds per real second while soaking; None: no waiting
    state: str = "running"
    clock: float = 0.0
    waves: list[dict] = field(default_factory=list)
    results: dict[int, dict] = field(default_factory=dict)
    actions_taken: list[dict] = field(default_factory=list)
    paused_by: str | None = None
    blocklisted: bool = False
    updating: int = 0  # devices of the running wave without a verdict yet
    wall_seconds: float = 0.0

    @cached_property
    def version(self) -> str:
        from dualmcu.image.firmware import read_info

        return (read_info(self.new) or {}).get("mcu", "")

    @cached_property
    def _eligible(self) -> list[DeviceSpec]:
        return self.eligible()

    def eligible(self) -> list[DeviceSpec]:
        p = self.plan
        out = [d for d in self.fleet if d.channel == p.channel and (p.hw_revs is None or d.hw_rev in p.hw_revs)
               and is_newer(self.version, d.version)]
        order = random.Random(len(self.fleet) * 7919 + (self.fleet[0].seed if self.fleet else 0))
        order.shuffle(out)
        return out

    def _act(self, action: str, build: str | None, source: str) -> None:
        """One operator action, from the plan or live, at the rollout's current time."""
        taken = {"action": action, "build": build, "at_seconds": round(self.clock, 3), "source": source}
        self.actions_taken.append(taken)
        if action == "pause" and self.state == "running":
            self.state, self.paused_by = "paused", "operator"
        elif action == "resume" and self.state == "paused":
            self.state, self.paused_by = "running", None
        elif action == "stop":
            self.state = "stopped"
        elif action == "blocklist":
            self.plan.blocklist.append(build or self.version)
        self.emit({"event": "operator", **taken})  # after the move: the event's watchers see its effect

    def _actions_until(self, t: float) -> None:
        while self.plan.actions and self.plan.actions[0]["at_seconds"] <= t:
            a = self.plan.actions.pop(0)
            self._act(a["action"], a.get("build"), "plan")

    def _live(self, until: float | None) -> None:
        """Take the live operator's actions: until virtual time ``until`` (in real time when
        paced), or, with None, wait for one action however long it takes."""
        assert self.operator is not None
        real0, clock0 = time.monotonic(), self.clock
        while self.state != "stopped":
            if until is None:
                timeout = None
            else:
                timeout = (until - self.clock) / self.speed if self.speed else 0.0
            taken = self.operator.take(timeout)
            if self.speed:  # paced: the virtual clock follows the real one
                self.clock = clock0 + (time.monotonic() - real0) * self.speed
                if until is not None:
                    self.clock = min(self.clock, until)
            if taken is None:
                return
            self._act(*taken, source="live")
            if until is None:
                return

    def _between_waves(self, start_at: float) -> None:
        """The soak before the next wave: the plan's actions due by then, the live operator's as
        they come; a pause by the operator holds the next wave until a resume or a stop."""
        if self.operator is not None:
            self._live(start_at)
        self.clock = max(self.clock, start_at)
        self._actions_until(self.clock)
        while self.state == "paused" and self.paused_by == "operator":
            if self.plan.actions:  # the plan says what comes next: the virtual clock jumps there
                self.clock = max(self.clock, self.plan.actions[0]["at_seconds"])
                self._actions_until(self.clock)
            elif self.operator is not None:
                self._live(None)
            else:
                break

    def rates(self) -> dict:
        done = [r for r in self.results.values() if r["offered"]]
        n = len(done) or 1
        count = lambda o: sum(r["outcome"] == o for r in done)  # noqa: E731
        return {"offered": len(done), "trial_rate": round((count(Outcome.SUCCESS) + count(Outcome.ROLLBACK)) / n, 4),
                "confirm_rate": round(count(Outcome.SUCCESS) / n, 4),
                "rollback_rate": round(count(Outcome.ROLLBACK) / n, 4),
                "download_limit_rate": round(count(Outcome.DOWNLOAD_LIMIT) / n, 4)}

    def gate(self) -> str | None:
        r, p = self.rates(), self.plan
        if r["offered"] == 0:
            return None
        if r["rollback_rate"] > p.max_rollback_rate:
            return f"rollback rate {r['rollback_rate']} above {p.max_rollback_rate}"
        if r["download_limit_rate"] > p.max_download_limit_rate:
            return f"download-limit rate {r['download_limit_rate']} above {p.max_download_limit_rate}"
        if r["confirm_rate"] < p.min_confirm_rate:
            return f"confirm rate {r['confirm_rate']} below {p.min_confirm_rate}"
        return None

    def run(self) -> dict:
        t0 = time.monotonic()
        eligible = self._eligible
        taken = 0
        start_at = 0.0
        try:
            for i, percent in enumerate(self.plan.waves):
                self._between_waves(start_at)
                if self.version in self.plan.blocklist:
                    self.state, self.blocklisted = "stopped", True
                    self.emit({"event": "blocklisted", "build": self.version, "at_seconds": round(self.clock, 3)})
                if self.state != "running":
                    break
                upto = min(len(eligible), math.ceil(len(eligible) * percent / 100))
                wave = eligible[taken:upto]
                taken = upto
                self._wave(i, percent, wave)
                start_at = self.clock + self.plan.soak_seconds
                if self.waves[-1]["gate"] == "pause":
                    self.clock = start_at
                    self.state, self.paused_by = "paused", "gate"
                    self.emit({"event": "gate", "decision": "pause", "reason": self.waves[-1]["gate_reason"],
                               "at_seconds": round(self.clock, 3)})
                    break
            else:
                self.clock = start_at  # the last wave's soak counts: it is watched like the others
        except KeyboardInterrupt:
            if self.operator is None or self.updating:
                raise
            self._act("stop", None, "interrupt")  # Ctrl-C while the live operator was awaited
        if self.state == "running":
            self.state = "completed"
        elif self.state == "paused" and self.paused_by == "operator":
            self.state = "stopped"  # paused by hand and never resumed: the operator stopped it
        self.wall_seconds = time.monotonic() - t0
        return self.summary()

    def _wave(self, i: int, percent: float, wave: list[DeviceSpec]) -> None:
        """Run one wave, shard by shard, and apply the gates to everything offered so far."""
        started = self.clock
        self.updating = len(wave)
        name = "canary" if i == 0 else f"ramp {percent:g} %"
        self.emit({"event": "wave_start", "wave": i + 1, "name": name, "devices": len(wave),
                   "start_seconds": round(started, 3)})
        results: list[dict] = []
        if wave:
            n = max(1, min(len(wave), self.executor.workers * self.shards_per_worker))
            for shard in self.executor.map_shards([wave[k::n] for k in range(n)], self.new, self.image_size,
                                                  self.plan.min_version, started):
                for r in shard:
                    r["wave"] = i + 1
                    self.results[r["id"]] = r
                results += shard
                self.updating -= len(shard)
                self.emit({"event": "progress", "wave": i + 1, "done": len(results), "devices": len(wave)})
        longest = max((r["update_seconds"] for r in results), default=0.0)
        decision = self.gate()
        self.clock = started + longest
        w = {"wave": i + 1, "name": name, "percent": percent,
             "devices": len(wave), "start_seconds": round(started, 3), "update_seconds": round(longest, 3),
             "outcomes": tally(results, "outcome"), "rollback_reasons": tally(results, "rollback_reason"),
             "failure_reasons": tally(results, "failure_reason"),
             "by_hw_rev": breakdown(results, "hw_rev"), "by_group": breakdown(results, "group"),
             **self.rates(), "gate": "pass" if decision is None else "pause", "gate_reason": decision}
        self.waves.append(w)
        self.emit({"event": "wave", **w})

    def device_states(self) -> dict:
        """Every device of the fleet in one state: not eligible, waiting for its wave, updating,
        or the outcome the cloud saw."""
        states = {"not_eligible": len(self.fleet) - len(self._eligible),
                  "waiting": len(self._eligible) - len(self.results) - self.updating, "updating": self.updating}
        for r in self.results.values():
            states[r["outcome"]] = states.get(r["outcome"], 0) + 1
        return states

    def summary(self) -> dict:
        offered = [r for r in self.results.values() if r["offered"]]
        return {"event": "summary", "state": self.state, "paused_by": self.paused_by, "version": self.version,
                "devices": len(self.fleet), "eligible": len(self._eligible), "offered": len(offered),
                "confirmed": sum(r["outcome"] == Outcome.SUCCESS for r in offered),
                "rolled_back": sum(r["outcome"] == Outcome.ROLLBACK for r in offered),
                "rolled_back_confirmed_old": sum(r["outcome"] == Outcome.ROLLBACK and r["confirmed"]
                                                 and r["running"] == r["from_version"] for r in offered),
                "outcomes": tally(offered, "outcome"),
                "by_hw_rev": breakdown(offered, "hw_rev"), "by_group": breakdown(offered, "group"),
                "device_states": self.device_states(), "blocklisted": self.blocklisted,
                "actions": list(self.actions_taken),
                "canary_percent": self.plan.canary_percent, "waves": list(self.waves),
                "rollout_seconds": round(self.clock, 3), "wall_seconds": round(self.wall_seconds, 3),
                "workers": self.executor.workers}


def starting_summary(version: str, devices: int, canary_percent: float) -> dict:
    """The summary's schema before the rollout exists (the cluster starting): state
    ``starting``, every count zero, so a page or a script reads the same keys from the first
    request on."""
    return {"event": "summary", "state": "starting", "paused_by": None, "version": version, "devices": devices,
            "eligible": 0, "offered": 0, "confirmed": 0, "rolled_back": 0, "rolled_back_confirmed_old": 0,
            "outcomes": {}, "by_hw_rev": {}, "by_group": {}, "device_states": {}, "blocklisted": False, "actions": [],
            "canary_percent": canary_percent, "waves": [], "rollout_seconds": 0.0, "wall_seconds": 0.0,
            "workers": 0}


# -- the embedded examples -----------------------------------------------------------------------


DEMO_POPULATION = {"devices": 200, "seed": 1, "group": [
    {"share": 0.6, "hw_rev": "A", "version": "1.0.0", "baud": 921600, "battery": [40.0, 100.0]},
    {"share": 0.3, "hw_rev": "B", "version": "1.0.0", "baud": 921600, "battery": [40.0, 100.0]},
    {"share": 0.1, "hw_rev": "A", "version": "0.9.0", "baud": 115200, "battery": [40.0, 100.0],
     "slow_flash_share": 0.5},
]}
DEMO_PLAN = {"channel": "stable", "canary_percent": 5, "ramp_percent": [25, 50, 100], "soak_seconds": 86400,
             "gates": {"min_confirm_rate": 0.9, "max_rollback_rate": 0.02, "max_download_limit_rate": 0.05}}
DEMO_IMAGE_SIZE = 64 * 1024


def demo_build(kind: str) -> bytes:
    """1.1.0 of the demo product: the good build, or one that fails its health check on
    hardware revision B (and runs fine on A)."""
    old = factory_image("1.0.0", DEMO_IMAGE_SIZE)
    from dualmcu.image.firmware import next_image

    extra = {"dualmcu-test": "fail-health", "dualmcu-test-hw-rev": "B"} if kind == "bad" else {}
    return next_image(old, make_info("1.1.0", FW_TYPE, build=BUILD, **extra), 0.02)


def device_rows(results: dict[int, dict]) -> list[dict]:
    """One CSV row per device offered the build, by id."""
    return [results[k] for k in sorted(results)]


def as_rows(summary: dict) -> list[dict]:
    """The time series as CSV rows: one per wave."""
    def cell(v):
        if isinstance(v, dict):  # outcomes: success=9;rollback=1
            return ";".join(f"{a}={inner(b)}" for a, b in v.items())
        return v

    def inner(v):  # by_hw_rev: A=offered:9/confirm_rate:1.0/rollback_rate:0.0;B=...
        return "/".join(f"{a}:{b}" for a, b in v.items()) if isinstance(v, dict) else v

    return [{k: cell(v) for k, v in w.items()} for w in summary["waves"]]
