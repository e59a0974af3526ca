"""What is in a flash file, for ``dualmcu flash show`` and for tests."""

from __future__ import annotations

from dualmcu.image.firmware import read_info_streamed

from .boot import NO_SLOT, BootStore, slot_digests, verify_slot
from .config import ConfigStore
from .flash import Flash
from .reasons import name_of


def describe(path: str) -> dict:
    flash = Flash.open(path, create=False, lock=False)
    try:
        g = flash.geometry
        store = BootStore(flash)
        copies = store.copies()
        state = store.load()
        out: dict = {
            "flash": path,
            "page_size": g.page_size,
            "slot_size": g.slot_size,
            "state_copies": [c.seq if c else None for c in copies],
            "seq": state.seq if state else None,
            "active_slot": "AB"[state.active] if state else None,
            "confirmed_slot": "AB"[state.confirmed] if state and state.confirmed != NO_SLOT else None,
            "confirmed": bool(state and not state.trial and state.confirmed == state.active),
            "trial": bool(state and state.trial),
            "attempts_left": state.attempts if state and state.trial else None,
            "hw_rev": flash.identity.hw_rev,
            "bootloader": flash.identity.bootloader,
            "counters": {"boots": state.boots if state else 0, "crash_loop": state.crash_loop if state else 0,
                         "rollbacks": state.rollbacks if state else 0},
            "rollback_index": state.security_counter if state else 0,
            "last_failure": name_of(state.last_failure) if state else "none",
            "trial_failure": name_of(state.trial_failure) if state and state.trial_failure else None,
            "config": None,
            "slots": {},
            # Erases per region (most of any one page, and in all): how close to wearing out.
            "erases": flash.erase_counts(),
        }
        for i, name in enumerate("AB"):
            rec = state.slots[i] if state else None
            entry = {"installed": bool(rec and rec.installed), "length": rec.length if rec and rec.installed else 0,
                     "version": None, "fw_type": None, "build": None, "sha256": None, "valid": False}
            if rec and rec.installed and 0 < rec.length <= g.slot_size:
                base = g.slot_offset(i)
                info = read_info_streamed(lambda pos, n: flash.read(base + pos, n), rec.length) or {}
                _, sha = slot_digests(flash, i, rec.length)
                entry.update(version=info.get("mcu"), fw_type=info.get("fw-type"), build=info.get("build"),
                             sha256=sha.hex(), valid=verify_slot(flash, state, i))
            rec = ConfigStore(flash, i).load()
            owned = bool(rec and entry["sha256"] and rec.owner == bytes.fromhex(entry["sha256"])[:8])
            entry["config"] = ({"schema": rec.schema, "seq": rec.seq, "owned": owned, "values": rec.values}
                               if rec else None)
            out["slots"][name] = entry
        if state is not None:
            # The configuration the active image runs with: its own slot's store.
            own = out["slots"]["AB"[state.active]]["config"]
            out["config"] = own if own and own["owned"] else None
        return out
    finally:
        flash.close()


REGION_NAMES = {"boot_state": "boot state", "slot_a": "slot A", "slot_b": "slot B"}


def format_description(d: dict) -> str:
    lines = [f"flash {d['flash']}: pages of {d['page_size']} bytes, two slots of {d['slot_size']} bytes"]
    if d["active_slot"] is None:
        lines.append("boot state: none (blank device)")
    else:
        status = "confirmed" if d["confirmed"] else (f"on trial, {d['attempts_left']} boot attempts left" if d["trial"] else "not confirmed")
        lines.append(f"boot state: seq {d['seq']} (copies {d['state_copies']}), active slot {d['active_slot']} {status}, "
                     f"confirmed slot {d['confirmed_slot'] or '-'}")
    c = d["counters"]
    lines.append(f"device: hardware revision {d['hw_rev']}, bootloader {d['bootloader']}; {c['boots']} boots, "
                 f"crash loop {c['crash_loop']}, {c['rollbacks']} rollbacks, rollback index {d['rollback_index']}, "
                 f"last failure {d['last_failure']}" + (f", trial failure {d['trial_failure']}" if d["trial_failure"] else ""))
    e = d["erases"]
    lines.append("erases (most on one page / in all): " + ", ".join(
        f"{REGION_NAMES.get(name, name)} {e[name]['max']}/{e[name]['total']}" for name in e))
    for name, s in d["slots"].items():
        if not s["installed"]:
            lines.append(f"slot {name}: empty")
            continue
        lines.append(f"slot {name}: version {s['version']} type {s['fw_type']} length {s['length']} "
                     f"{'verifies' if s['valid'] else 'DOES NOT VERIFY'}")
        lines.append(f"        sha256 {s['sha256']}")
        cfg = s.get("config")
        if cfg:
            lines.append(f"        config schema {cfg['schema']} seq {cfg['seq']}"
                         + ("" if cfg["owned"] else " (stale: written by another image)")
                         + ": " + ", ".join(f"{k}={v}" for k, v in sorted(cfg["values"].items())))
    return "\n".join(lines)
