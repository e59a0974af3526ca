"""The emulators as programs: each side alone on a port, the link between two ports, and a
whole update between two processes."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace

import click

from .common import (
    IOFailure,
    BAUD,
    DEFAULT_FLASH,
    FIRMWARE_LOG,
    FLASH_HELP_DEFAULT,
    FRAMING,
    HOLD_BUFFER,
    JSON,
    PROGRESS_INTERVAL,
    WRITE_ANSWER,
    PORT,
    PROBABILITY,
    VERBOSE,
    Number,
    Size,
    emit_json,
    main,
    option_group,
    seconds,
)

from dualmcu.ncp.core import MISBEHAVIOURS, NcpConfig
from dualmcu.primary.device import DEFAULT_COMMIT_TIMEOUT
from dualmcu.primary.ota import DEFAULT_CHUNK, VersionPolicy
from dualmcu.primary.timing import FlashTiming

ONCE_TIMEOUT = click.option("--timeout", type=seconds(), help="With --once: give up after this many seconds without a verdict (exit 4).")
MAX_SLOT = 1 << 30  # a slot of up to 1 GiB; image lengths travel as u32
MAX_PAGE = 1 << 16


@main.command()
@PORT
@BAUD
@FRAMING
@click.option("--firmware", multiple=True, type=click.Path(exists=True), help="What to offer: a tagged image, packages of it (`dualmcu package`), or a directory of them; repeatable. A delta goes to a primary running its base, the image to the others and after a package failed.")
@click.option("--store", type=click.Path(file_okay=False), help="The NCP's own store for prefetched images.")
@click.option("--retries", type=click.IntRange(0, 1000), default=5, show_default=True, help="Resends of a failed or timed-out write before cancelling.")
@click.option("--max-chunk", type=click.IntRange(1, 0xFFFF), help="Largest chunk the NCP serves (default: what one frame carries).")
@click.option("--write-timeout", type=seconds(0.001, False), help="Fixed seconds to wait for a write's answer (default: the driver's 5 s for a plain peer; derived from the link and the primary's flash timing for one that offers the extension).")
@click.option("--pipeline/--no-pipeline", default=True, show_default=True, help="Keep several writes in flight when the primary offers the extension.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Go on from where an interrupted transfer of the same file stopped, when the primary offers it.")
@click.option("--offers", type=click.IntRange(1, 100), default=3, show_default=True, help="How often one shipment is offered (an interrupted transfer is offered again).")
@click.option("--net-rate", type=Number(min=0, min_open=True), help="Simulated download rate from the cloud, bytes/s (default: instant).")
@click.option("--net-fail-at", type=click.IntRange(0), help="The simulated download fails at this byte offset.")
@click.option("--answer-unknown", is_flag=True, help="Answer unknown uids with status 0x13 (the real NCP stays silent).")
@click.option("--mandatory", is_flag=True, help="Mark the shipment mandatory: it passes the primary's version policy and install window.")
@click.option("--min-version", help="The lowest version the cloud allows: a primary below it must update.")
@click.option("--max-defer", type=seconds(), default=7 * 86400.0, show_default=True, help="Seconds of deferral by the primary the cloud waits for before the outcome is 'deferred'.")
@click.option("--clock", "clock", metavar="UTC", help="The time getTime reports at start, ISO 8601 (e.g. 2026-11-21T01:00:00Z; default: now).")
@click.option("--once", is_flag=True, help="Exit on the update's final verdict: 0 once the primary has confirmed the new version (or, sending no telemetry, ran it through --confirm-window), 1 for a rollback or a failure, 4 for no verdict.")
@click.option("--confirm-window", type=seconds(), default=NcpConfig.confirm_window, show_default=True,
              help="With --once: seconds after the new version reports in to wait for the primary's confirmation or rollback.")
@ONCE_TIMEOUT
@click.option("--misbehave", multiple=True, metavar="KEY[=VALUE]", callback=lambda c, p, v: parse_misbehave(v),
              help="Make the cloud lie on purpose, to test the firmware's own checks; repeatable. "
                   + "; ".join(f"{k}: {doc}" for k, (_, _, doc) in MISBEHAVIOURS.items()) + ".")
@FIRMWARE_LOG
@JSON
@PROGRESS_INTERVAL
@VERBOSE
def ncp(port, baud, framing, firmware, store, retries, max_chunk, write_timeout, pipeline, resume, offers, net_rate, net_fail_at,
        answer_unknown, mandatory, min_version, max_defer, clock, once, confirm_window, timeout, misbehave,
        firmware_log, as_json, progress_interval, verbose) -> None:
    """Run the emulated NCP on a port: it serves the NCP interface and offers --firmware.

    Given several files of one release (the newest version among them), it offers the delta
    whose base is the version the primary reported, else a compressed package, else the
    image; a package that fails on the primary is followed by the next of these.

    Prefetch is served whenever the primary asks for it: the image is "downloaded" at
    --net-rate into --store before the first write.

    It stands in for the cloud too: the update is offered once the primary has reported its
    firmware and its version differs, and the outcome is judged as the cloud would (success,
    rollback, refused, download_limit, download_failed, prefetch_failed, finish_failed).

    The port may be the firmware under test itself: -p 'exec:./app --port {pty}' starts it on a
    fresh pty, again after each reboot (docs/testing.md). A running NCP takes `kill -USR1` as
    "reboot now" (state gone, UART back at --baud) and `kill -USR2` as a power cut of its
    exec: target.
    """
    from dualmcu.sides import NcpOptions, run_ncp

    check_once(once, timeout)
    cfg = NcpConfig(retries=retries, max_chunk=max_chunk, write_timeout=write_timeout, pipeline=pipeline, resume=resume, offers=offers, once=once, answer_unknown=answer_unknown,
                    wall_clock_ms=parse_clock(clock), mandatory=mandatory, min_version=min_version, max_defer=max_defer,
                    confirm_window=confirm_window, misbehave=misbehave)
    sys.exit(run_ncp(NcpOptions(port=port, baud=baud, framing=framing, firmware=firmware, prefetch_store=store,
                                net_rate=net_rate, net_fail_at=net_fail_at, config=cfg, as_json=as_json,
                                verbose=verbose, progress_interval=progress_interval, timeout=timeout,
                                firmware_log=firmware_log)))


def parse_misbehave(items: tuple[str, ...]):
    """KEY=VALUE (a flag alone for the yes/no ones) into one Misbehave; one line when not."""
    import dataclasses

    from dualmcu.ncp.core import Misbehave

    values: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if key not in MISBEHAVIOURS:
            raise click.BadParameter(f"{key!r} is not one of {', '.join(MISBEHAVIOURS)}", param_hint="--misbehave")
        field_name, kind, _ = MISBEHAVIOURS[key]
        if kind is bool:
            if sep:
                raise click.BadParameter(f"{key} takes no value", param_hint="--misbehave")
            values[field_name] = True
            continue
        try:
            value = kind(text, 0) if kind is int else text
            if not sep or (kind is str and not text) or (field_name.endswith("_at") and value < 0):
                raise ValueError
        except ValueError:
            what = "an offset from 0" if field_name.endswith("_at") else "a number" if kind is int else "a value"
            raise click.BadParameter(f"{key} takes {what}: {key}=VALUE", param_hint="--misbehave") from None
        values[field_name] = value
    return dataclasses.replace(Misbehave(), **values)


def check_once(once: bool, timeout: float | None) -> None:
    if timeout is not None and not once:
        raise click.UsageError("--timeout bounds the wait for a verdict: give it with --once")


OTA_OPTIONS = [
    click.option("--chunk-size", type=click.IntRange(1, 0xFFFF), default=DEFAULT_CHUNK, show_default=True, help="Chunk size the primary asks for in otaUpdateStart."),
    click.option("--ota-timeout", type=seconds(), default=60.0, show_default=True, help="Seconds without a chunk before the primary cancels."),
    click.option("--version-policy", type=click.Choice([v.value for v in VersionPolicy]), default=VersionPolicy.NEWER.value, show_default=True, help="Accept only newer versions, any, or only what the cloud marks mandatory."),
    click.option("--battery", type=Number(min=0, max=100), default=100.0, show_default=True, help="The primary's battery level at start, percent."),
    click.option("--battery-rate", type=Number(min=-1000, max=1000), default=0.0, show_default=True, help="Percent per hour the battery gains (charging) or, negative, loses."),
    click.option("--min-battery", type=click.IntRange(0, 100), default=20, show_default=True, help="Below this battery level an update is deferred until it has recovered."),
    click.option("--install-window", metavar="START-END", callback=lambda c, p, v: parse_window(v),
                 help="UTC hours an update may install in, e.g. 2-5 or 22-4 (time from the NCP's getTime); outside, it is deferred."),
    click.option("--prefetch", is_flag=True, help="The primary asks the NCP to download the whole image before the transfer."),
    click.option("--window", type=click.IntRange(1, 255), default=8, show_default=True, help="Writes the primary takes in flight (offered through an extension uid); 1 turns the extension off."),
    HOLD_BUFFER,
    WRITE_ANSWER,
    click.option("--package-ram", type=Size(1 << 26), default="64K", show_default=True, help="RAM for applying a package: decompressor state, one chunk and a 4K output buffer must fit, or the package is refused."),
    click.option("--flash-timing", default=FlashTiming().text, show_default=True, metavar="PROG,SECTOR,BLOCK",
                 callback=lambda c, p, v: FlashTiming(*parse_flash_timing(v)),
                 help="The primary's flash: milliseconds per 256-byte program, 4 KiB sector erase and 64 KiB block erase (W25Q128JV typical); 0,0,0 for an instant flash."),
]


def ota_config(chunk_size, ota_timeout, version_policy, battery, battery_rate, min_battery, install_window, prefetch,
               window, rx_hold, write_answer, package_ram, flash_timing):
    """The OTA group's values as the OtaConfig they fill (its resume is the command's)."""
    from dualmcu.primary.ota import OtaConfig

    return OtaConfig(chunk_size=chunk_size, ota_timeout=ota_timeout, version_policy=version_policy, battery=battery,
                     battery_rate=battery_rate, min_battery=min_battery, install_window=install_window,
                     prefetch=prefetch, window=window, buffer=rx_hold, write_answer=write_answer,
                     package_ram=package_ram, timing=flash_timing)


# The primary's OTA receiver, one group for primary and run: its policy, its buffers, its flash.
ota_options = option_group("ota", OTA_OPTIONS, ota_config)


@main.command()
@PORT
@BAUD
@FRAMING
@click.option("--flash", type=click.Path(dir_okay=False), default=DEFAULT_FLASH, show_default=FLASH_HELP_DEFAULT, help="The emulated flash file; a missing one is made with --provision's factory image.")
@click.option("--provision", type=click.Path(exists=True, dir_okay=False), help="Factory image written to slot A of a blank flash.")
@click.option("--slot-size", type=Size(MAX_SLOT), default="1M", show_default=True, help="Slot size when the flash file is made.")
@click.option("--page-size", type=Size(MAX_PAGE), default="4K", show_default=True, help="Flash page size when the flash file is made.")
@ota_options
@click.option("--commit-timeout", type=seconds(), default=DEFAULT_COMMIT_TIMEOUT, show_default=True, help="Seconds a new image on trial has to confirm before the bootloader rolls it back.")
@click.option("--hw-rev", help="Hardware revision, fixed when the flash file is made (default A).")
@click.option("--bootloader-version", help="Bootloader version (default 1.0.0 for a new flash file; given for an existing one, it updates the bootloader).")
@click.option("--attempts", type=click.IntRange(1, 255), default=3, show_default=True, help="Boot attempts of a trial image before rollback.")
@click.option("--heartbeat", type=seconds(), default=10.0, show_default=True, help="Seconds between pings of the NCP.")
@click.option("--answer-unknown", is_flag=True, help="Answer unknown uids with status 0x13 (the real driver stays silent).")
@click.option("--switch-baud", type=click.IntRange(300, 10_000_000), help="After initialising, ask the NCP to switch to this baud rate.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Keep transfer progress in the boot state and offer resume (an extension uid).")
@click.option("--flash-endurance", type=click.IntRange(1), default=100_000, show_default=True, metavar="CYCLES",
              help="Erases a flash page takes before it wears out; past it, erasing the page fails (W25Q128JV: 100,000).")
@click.option("--power-cut-at", type=click.IntRange(1), help="Cut the power at this flash operation of the process (exit code 75).")
@click.option("--power-cut-seed", type=int, help="Cut the power at an operation and torn part drawn from this seed.")
@click.option("--power-cut-within", type=click.IntRange(1), default=2000, show_default=True, help="With --power-cut-seed: draw the operation from 1..N.")
@click.option("--trust", "trust_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A public key (PEM) whose signed images this device installs; repeat for rotation. Unsigned images are then refused.")
@click.option("--target", "device_target", default="dualmcu/1", show_default=True, help="This device's identity (product/hardware revision) for signed images.")
@click.option("--accept-any-target", "any_target", is_flag=True, help="Also install images signed for target * (any product); off by default.")
@click.option("--blocking-calls", "blocking", is_flag=True, help="Serve nothing while an own call waits for its answer, as the Blynk C driver does.")
@click.option("--once", is_flag=True, help="Exit when an update ends (0 once a new image is confirmed).")
@ONCE_TIMEOUT
@FIRMWARE_LOG
@JSON
@PROGRESS_INTERVAL
@VERBOSE
def primary(port, baud, framing, flash, provision, slot_size, page_size, ota, commit_timeout, hw_rev, bootloader_version,
            attempts, heartbeat, answer_unknown, switch_baud, resume, flash_endurance, power_cut_at,
            power_cut_seed, power_cut_within, trust_keys, device_target, any_target, blocking, once, timeout,
            firmware_log, as_json, progress_interval, verbose) -> None:
    """Run the emulated primary MCU on a port, booting from its flash file.

    A blank flash needs --provision IMAGE (its factory firmware). The process reboots into
    its bootloader whenever the device reboots; a killed process boots from the same file.
    A power cut (--power-cut-at, --power-cut-seed) ends the process with exit code 75 in the
    middle of a flash operation; start it again to see the device come back. A running primary
    takes `kill -USR1` as "reboot now", and `kill -USR2` as a power cut of an exec: target on
    its port (an NCP's firmware under test).
    """
    from dualmcu.sides import PrimaryOptions, run_primary
    from dualmcu.primary.device import PrimaryConfig
    from dualmcu.primary.flash import FlashError, Geometry, Identity
    check_once(once, timeout)
    try:
        geometry = Geometry(page_size, slot_size)
    except FlashError as e:
        raise click.BadParameter(str(e)) from None
    identity = None
    if hw_rev is not None or bootloader_version is not None:
        try:
            identity = Identity("A" if hw_rev is None else hw_rev,
                                "1.0.0" if bootloader_version is None else bootloader_version)
        except FlashError as e:
            raise click.BadParameter(str(e), param_hint="--hw-rev/--bootloader-version") from None
    if os.path.exists(flash):
        geometry = None  # an existing file keeps its own geometry

    trust = load_trust(trust_keys, device_target, any_target)
    cfg = PrimaryConfig(ota=replace(ota, resume=resume), attempts=attempts, heartbeat=heartbeat, answer_unknown=answer_unknown, baud=switch_baud, blocking=blocking,
                        trust=trust, commit_timeout=commit_timeout)
    sys.exit(run_primary(PrimaryOptions(port=port, flash=flash, baud=baud, framing=framing, geometry=geometry,
                                        provision=provision, config=cfg, once=once, as_json=as_json, verbose=verbose,
                                        power_cut_at=power_cut_at, power_cut_seed=power_cut_seed,
                                        power_cut_within=power_cut_within, identity=identity,
                                        endurance=flash_endurance, progress_interval=progress_interval,
                                        timeout=timeout, firmware_log=firmware_log)))


def not_a_rate(value: str | None, name: str) -> str | None:
    """A port name that is a number is a baud rate given to the wrong option (--b 115200)."""
    if value is not None and value.isdigit():
        raise click.BadParameter(f"{value!r} is a number, not a port: the baud rate is -b/--baud", param_hint=name)
    return value


def parse_window(text: str | None) -> tuple[int, int] | None:
    """START-END in whole UTC hours (0-23, 1-24), START != END; END < START wraps midnight."""
    if text is None:
        return None
    try:
        start, end = (int(x) for x in text.split("-"))
        if not (0 <= start <= 23 and 1 <= end <= 24 and start != end % 24):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{text!r} is not START-END in UTC hours, e.g. 2-5 or 22-4 (START and END differ)",
                                 param_hint="--install-window") from None
    return start, end


def parse_clock(text: str | None) -> int:
    """An ISO 8601 UTC time as ms since the epoch (None: now)."""
    import datetime

    if text is None:
        return int(time.time() * 1000)
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=datetime.timezone.utc)
        ms = int(t.timestamp() * 1000)
        if not 0 < ms <= 253402300799999:
            raise ValueError
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time after 1970, e.g. 2026-11-21T01:00:00Z",
                                 param_hint="--clock") from None
    return ms


def parse_disconnect(text: str) -> tuple[str, float, float]:
    """SIDE@AT:SECONDS, e.g. b@2.5:1 cuts the primary's end off 2.5 s in, for 1 s."""
    try:
        side, rest = text.split("@")
        at, length = (float(x) for x in rest.split(":"))
        if side not in ("a", "b", "ncp", "primary") or not (math.isfinite(at) and math.isfinite(length)):
            raise ValueError
        if at < 0 or length <= 0:
            raise ValueError
        return ({"ncp": "a", "primary": "b"}.get(side, side), at, length)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not SIDE@AT:SECONDS with AT >= 0 and SECONDS > 0 (e.g. b@2.5:1)",
                                 param_hint="--disconnect") from None


def parse_flash_timing(text: str) -> tuple[float, float, float]:
    """PROG,SECTOR,BLOCK in milliseconds -> seconds; each finite and not negative."""
    try:
        values = tuple(float(x) / 1000 for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise click.BadParameter(f"{text!r}: give three finite, non-negative numbers, e.g. {FlashTiming().text}",
                                 param_hint="--flash-timing")
    return values  # type: ignore[return-value]


def load_trust(trust_keys, device_target, any_target=False):
    if not trust_keys:
        return None
    from dualmcu.image.signing import SignError, load_keys
    from dualmcu.primary.boot import Trust

    try:
        return Trust(load_keys(list(trust_keys)), device_target, any_target)
    except SignError as e:
        raise click.BadParameter(str(e), param_hint="--trust") from None


LINK_OPTIONS = [
    click.option("--latency", type=seconds(0, False), default=0.0, show_default=True, help="Seconds added to every byte (a USB bridge adds ~1 ms)."),
    click.option("--ber", type=PROBABILITY, default=0.0, help="Bit error rate."),
    click.option("--drop", type=PROBABILITY, default=0.0, help="Probability that a byte is lost."),
    click.option("--dup", type=PROBABILITY, default=0.0, help="Probability that a byte arrives twice."),
    click.option("--garbage", type=PROBABILITY, default=0.0, help="Probability, per byte, of a burst of noise after it."),
    click.option("--stall", type=PROBABILITY, default=0.0, help="Probability, per byte, that the line stalls."),
    click.option("--stall-time", type=seconds(0, False), default=0.05, show_default=True, help="Seconds of a stall."),
    click.option("--rx-buffer", type=click.IntRange(1), help="Receive buffer size in bytes; with --rx-poll, what overflows it is lost."),
    click.option("--rx-poll", type=seconds(0, False), default=0.0, help="How often a receiver reads its buffer, seconds (0: at once)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random fault: the same seed, the same faults."),
]
DISCONNECT = click.option("--disconnect", "disconnects", multiple=True, metavar="SIDE@AT:SECONDS",
                          callback=lambda c, p, v: [parse_disconnect(d) for d in v],
                          help="Cut side a (ncp) or b (primary) off AT seconds in, for SECONDS. Repeatable.")


def link_config(latency, ber, drop, dup, garbage, stall, stall_time, rx_buffer, rx_poll, seed):
    """The link group's values as the LinkConfig they fill (its pacing is the command's)."""
    from dualmcu.link import Faults, LinkConfig

    faults = Faults(ber=ber, drop=drop, dup=dup, garbage=garbage, stall=stall, stall_time=stall_time)
    return LinkConfig(latency=latency, rx_buffer=rx_buffer, rx_poll=rx_poll, faults=faults, seed=seed)


# Adding a fault: a Faults field and its counter (dualmcu/link.py), its option above and its
# place in link_config: one command-line group, shared by link and run.
link_options = option_group("link_cfg", LINK_OPTIONS, link_config)


@main.command()
@click.option("--port-a", "--a", "port_a", callback=lambda c, p, v: not_a_rate(v, "--port-a"),
              help="Port of side a (pyserial path or URL); a new pty when omitted.")
@click.option("--port-b", "--b", "port_b", callback=lambda c, p, v: not_a_rate(v, "--port-b"),
              help="Port of side b; a new pty when omitted.")
@BAUD
@click.option("--pace/--no-pace", default=True, show_default=True, help="Pace bytes at the baud rate (10 bit times each).")
@link_options
@DISCONNECT
@click.option("--duration", type=seconds(), help="Stop after this many seconds (default: until Ctrl-C).")
@JSON
def link(port_a, port_b, baud, pace, link_cfg, disconnects, duration, as_json) -> None:
    """Relay between two ports through the simulated UART: pacing, latency, buffer, faults.

    Put it between a real device and an emulator, or between two emulators: with no --port-a
    or --port-b it makes ptys and prints their paths. What it injected is counted and printed when it
    stops (every second too, with --json).

    Each pty it makes keeps the rate its process set (termios): when the two ends disagree,
    bytes arrive as a UART at the other rate would hear them (counted as misheard), and when
    they agree a paced link paces at their rate, after a baud switch too.
    """
    from dualmcu.relay import Relay
    from dualmcu.ports import PortError, open_port

    cfg = replace(link_cfg, baud=baud if pace else None)
    seed = cfg.seed
    plan = disconnects
    ports = []
    try:
        for url in (port_a, port_b):
            ports.append(open_port(url, baud) if url else None)
        relay = Relay.between(*ports, link=cfg, disconnects=plan)
    except (PortError, ValueError) as e:
        for p in ports:
            if p is not None:
                p.close()
        raise IOFailure(str(e)) from None
    out = (lambda obj: emit_json(obj)) if as_json else (lambda obj: click.echo(
        " ".join(f"{k}={v}" for k, v in obj.items()), err=True))
    t0 = time.monotonic()
    # SIGTERM ends the relay as Ctrl-C does, with its summary: a script that started it in the
    # background stops it with `kill` and still learns what it injected.  The exit code still
    # says it was stopped (130, 143); 0 is for a relay that ran its --duration.
    stopped = None
    try:
        with relay:
            # Said once the relay runs, inside the try: a script that stops it as soon as it
            # has read this line still gets the summary.
            out({"event": "link", "a": relay.paths["a"], "b": relay.paths["b"],
                 "baud": baud if pace else None, "seed": seed})
            while duration is None or time.monotonic() - t0 < duration:
                time.sleep(1.0 if duration is None else min(1.0, max(0.0, duration - (time.monotonic() - t0))))
                if as_json:
                    out({"event": "stats", **relay.stats})
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM: the summary still follows
        stopped = e
    finally:
        for p in ports:
            if p is not None:
                p.close()
    out({"event": "summary", "seconds": round(time.monotonic() - t0, 3), **relay.stats})
    if stopped is not None:
        from dualmcu.exits import stopped_code

        sys.exit(stopped_code(stopped))


@main.command()
@click.option("--firmware", multiple=True, type=click.Path(exists=True), help="What to deliver: an image, packages, or a directory of them, as for `dualmcu ncp` (default: a demo image built on the spot).")
@click.option("--factory", type=click.Path(exists=True, dir_okay=False), help="The primary's factory image (default: one built on the spot; a delta needs its base here).")
@FRAMING
@click.option("--flash", type=click.Path(dir_okay=False), help="The primary's flash file (default: a fresh one in the work directory).")
@click.option("--link", type=click.Choice(["pty", "socket"]), default="pty", show_default=True, help="Virtual UART: a pty pair or two connected loopback sockets; with --pace each side paces what it sends.")
@BAUD
@click.option("--retries", type=click.IntRange(0, 1000), default=5, show_default=True)
@click.option("--net-rate", type=Number(min=0, min_open=True), help="Simulated download rate, bytes/s.")
@click.option("--net-fail-at", type=click.IntRange(0), help="The simulated download fails at this offset.")
@click.option("--commit-timeout", type=seconds(), default=DEFAULT_COMMIT_TIMEOUT, show_default=True, help="Seconds a new image has to confirm before the bootloader rolls it back.")
@click.option("--max-defer", type=seconds(), default=30.0, show_default=True, help="Seconds of deferral the NCP waits for before the outcome is 'deferred'.")
@click.option("--slot-size", type=Size(MAX_SLOT), default="1M", show_default=True)
@click.option("--kill-primary-at", type=click.IntRange(0), help="Kill the primary process once this many bytes are written, and start it again.")
@click.option("--kill-ncp-at", type=click.IntRange(0), help="Kill the NCP process once this many bytes are written, and start it again.")
@click.option("--power-cut-at", type=click.IntRange(1), help="Cut the primary's power at this flash operation (torn: half of it applied); it is restarted.")
@click.option("--power-cut-random", is_flag=True, help="Cut the power once, at an operation and a torn part drawn from --seed.")
@click.option("--pace/--no-pace", default=False, show_default=True, help="Pace the link at --baud, as a real wire.")
@click.option("--heartbeat", type=seconds(), default=10.0, show_default=True, help="Seconds between the primary's checks of the NCP (a restarted NCP is noticed at the next one).")
@click.option("--write-timeout", type=seconds(0.001, False), help="Fixed seconds the NCP waits for a write's answer (default: derived).")
@click.option("--pipeline/--no-pipeline", default=True, show_default=True, help="Writes in flight through the extension (off: one at a time, as the real protocol).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Resume an interrupted transfer of the same file (extension).")
@ota_options
@click.option("--trust", "trust_keys", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Public key the primary trusts (repeatable); signed images only.")
@click.option("--target", "device_target", default="dualmcu/1", show_default=True, help="The primary's target identity for signed images.")
@click.option("--key", "sign_key", type=click.Path(exists=True, dir_okay=False), help="Private key that signs the factory image (and the demo shipment) when --trust is given.")
@link_options
@DISCONNECT
@click.option("--timeout", type=seconds(), default=300.0, show_default=True,
              help="Give up after this many seconds. A paced run whose wire alone needs longer "
                   "is refused at once.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where the demo image, flash and logs go (default: a new temporary directory, removed after a successful run).")
@click.option("--keep", is_flag=True, help="Keep the temporary work directory after a successful run (a failed run always keeps it): the flash, and ncp.log and primary.log with each side's event lines and errors.")
@JSON
@click.option("--progress-interval", type=Number(min=0), metavar="SECONDS",
              help="Progress events at most this often, and the last one (default: every chunk with --json, "
                   "0.1 s for the progress line; --kill-*-at needs every chunk).")
def run(firmware, factory, framing, flash, link, baud, retries, net_rate, net_fail_at, commit_timeout, max_defer,
        slot_size, kill_primary_at, kill_ncp_at, power_cut_at, power_cut_random, pace, heartbeat, write_timeout,
        pipeline, resume, ota, trust_keys, device_target, sign_key, link_cfg, disconnects, timeout, workdir, keep,
        as_json, progress_interval) -> None:
    """Run a complete update between an NCP process and a primary process.

    Exits 0 only when the primary has booted and confirmed the new version; otherwise 1 (the
    update failed: the reason is printed), 3 (a process or port failed) or 4 (timeout).
    """
    from dualmcu.runner import Run, RunOptions

    if trust_keys and not sign_key:
        raise click.UsageError("with --trust the primary boots signed images only: give --key to sign its factory image")
    if progress_interval is None:
        # A person watches a progress line: a step per chunk would cost the sides more than it
        # shows.  The kill options act on an exact offset, so they keep every step.
        exact = as_json or kill_primary_at is not None or kill_ncp_at is not None
        progress_interval = 0.0 if exact else 0.1
    elif progress_interval and (kill_primary_at is not None or kill_ncp_at is not None):
        raise click.UsageError("--kill-primary-at and --kill-ncp-at need every progress step: leave out --progress-interval")
    from dualmcu.primary.device import PrimaryConfig
    from dualmcu.primary.flash import FlashError, Geometry

    try:
        geometry = Geometry(slot_size=slot_size)
    except FlashError as e:
        raise click.BadParameter(str(e), param_hint="--slot-size") from None
    ncp_cfg = NcpConfig(retries=retries, write_timeout=write_timeout, pipeline=pipeline, resume=resume,
                        max_defer=max_defer, once=True)
    primary_cfg = PrimaryConfig(ota=ota, heartbeat=heartbeat, commit_timeout=commit_timeout,
                                trust=load_trust(trust_keys, device_target))
    o = RunOptions(firmware=list(firmware), factory=factory, framing=framing, flash=flash, link=link, baud=baud,
                   ncp=ncp_cfg, primary=primary_cfg, geometry=geometry, net_rate=net_rate, net_fail_at=net_fail_at,
                   timeout=timeout, kill_primary_at=kill_primary_at, kill_ncp_at=kill_ncp_at,
                   power_cut_at=power_cut_at, power_cut_seed=link_cfg.seed if power_cut_random else None,
                   link_config=replace(link_cfg, baud=baud if pace else None),
                   disconnects=disconnects, workdir=workdir, keep=keep, as_json=as_json,
                   sign_key=sign_key, target=device_target, progress_interval=progress_interval)
    sys.exit(Run(o).run())
