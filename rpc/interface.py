"""The interface table: every function of the Blynk.NCP RPC, as data.

This one table drives the argument codec, the endpoint's dispatch and deadlines, the decoder
tool, the reference page in docs/ and the Hypothesis strategies.  Nothing in the project
encodes or decodes a function's arguments by hand.

Each line reads

    uid   name   kind   (params)   -> returns   [timeout]   | description

* kind ``I`` is an INVOKE, answered by a RESULT; ``O`` is a ONEWAY, never answered.
* params are ``Type name``; ``out Type name`` marks a value that comes back in the RESULT,
  before the return value, in the order listed.
* ``-> ()`` means the RESULT carries its status alone.
* the timeout is the caller's (the real driver's client timeouts); 1 s when none is given.

Uids 0xE000-0xEFFF are this project's extensions.  The real interface groups its uids by the
high byte 0x01-0x04, so that range can never collide with it; a real peer answers ``hasUID``
with false for them, and the emulators then fall back to the plain protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from . import types as T
from .types import ArgsError

NCP = "ncp"
PRIMARY = "primary"
INVOKE = "invoke"
ONEWAY = "oneway"
DEFAULT_TIMEOUT = 1.0
EXTENSION_UIDS = range(0xE000, 0xF000)
RETURN = "return"  # the key of the return value among a RESULT's fields

# Served by the NCP (called by the primary MCU).
_NCP_TABLE = """
0x0101 ncp_ping                 I ()                                             -> ()      100ms | liveness check
0x0102 ncp_reboot               I ()                                             -> Bool          | reboot the NCP
0x0103 ncp_hasUID               I (UInt16 uid)                                   -> Bool          | does the NCP serve this uid
0x0201 hw_setUartBaudRate       I (UInt32 baud)                                  -> Bool          | answer at the old rate, then both sides switch
0x0211 hw_initUserButton        I (UInt16 gpio, Bool active_low)                 -> Bool          | configure the user button
0x0221 hw_initLED               I (UInt16 gpio, Bool active_low)                 -> Bool          | configure a status LED
0x0222 hw_initRGB               I (UInt16 gpio_r, UInt16 gpio_g, UInt16 gpio_b, Bool common_anode) -> Bool | configure an RGB LED
0x0223 hw_initARGB              I (UInt16 gpio, UInt8 mode, UInt8 count)         -> Bool          | configure an addressable RGB LED
0x0224 hw_setLedBrightness      I (UInt8 value)                                  -> Bool          | LED brightness 0-255
0x0231 hw_getWiFiMAC            I (out String mac)                               -> Bool          | Wi-Fi MAC address
0x0232 hw_getEthernetMAC        I (out String mac)                               -> Bool          | Ethernet MAC address
0x0301 blynk_initialize         I (String template_id, String template_name)     -> Bool    5s    | start Blynk with a template
0x0302 blynk_setVendorPrefix    I (String name)                                  -> Bool          | vendor prefix for the hotspot name
0x0303 blynk_setVendorServer    I (String host)                                  -> Bool          | vendor cloud server
0x0304 blynk_setFirmwareInfo    I (String type, String version, String build, String blynk) -> Bool | report the primary's firmware tag
0x0305 blynk_getNcpVersion      I (out String version)                           -> Bool          | NCP firmware version
0x0306 blynk_getState           I ()                                             -> UInt8         | connection state (see STATES)
0x0307 blynk_getHotspotName     I (out String name)                              -> Bool          | configuration hotspot name
0x0311 blynk_virtualWrite       O (UInt16 vpin, Binary value)                                     | send a virtual pin value
0x0312 blynk_syncAll            O ()                                                              | ask the cloud for all pin values
0x0313 blynk_syncVirtual        O (Binary vpins)                                                  | ask the cloud for some pin values
0x0314 blynk_setProperty        O (UInt16 vpin, String property, Binary value)                    | set a widget property
0x0315 blynk_beginGroup         O (Int64 timestamp)                                               | start a group of writes
0x0316 blynk_endGroup           O ()                                                              | end a group of writes
0x0317 blynk_logEvent           O (String code, String description)                               | log an event
0x0318 blynk_resolveEvent       O (String code)                                                   | resolve an event
0x0319 blynk_resolveAllEvents   O (String code)                                                   | resolve all events of a code
0x031A blynk_setMetadata        O (String field, String value)                                    | set a metadata field
0x0321 blynk_configStart        I ()                                             -> Bool          | enter configuration mode
0x0322 blynk_configStop         I ()                                             -> Bool          | leave configuration mode
0x0323 blynk_configReset        I ()                                             -> Bool          | forget the configuration
0x0324 blynk_isConfigured       I ()                                             -> Bool          | is the NCP configured
0x0325 blynk_setConfigTimeout   I (UInt16 timeout)                               -> Bool          | configuration mode timeout, s
0x0326 blynk_setConfigSkipLimit I (UInt8 count)                                  -> Bool          | connection failures before config mode
0x0331 blynk_factoryReset       I ()                                             -> Bool          | factory reset
0x0332 blynk_factoryTestWiFi    I (String ssid, String pass, out Int16 rssi)     -> UInt8   30s   | factory test: join a network
0x0333 blynk_factoryTestWiFiAP  I (UInt16 channel)                               -> UInt8   5s    | factory test: start an access point
0x033A blynk_factoryTestConnect I ()                                             -> UInt8   10s   | factory test: reach the cloud
0x0341 blynk_otaUpdateStart     I (UInt16 chunk_size)                            -> Bool          | start sending the offered image
0x0342 blynk_otaUpdateGetCRC32  I (out UInt32 crc32)                             -> Bool          | CRC-32 of the whole image
0x0343 blynk_otaUpdateGetMD5    I (out Binary md5)                               -> Bool          | MD5 of the whole image (16 bytes)
0x0344 blynk_otaUpdateGetSHA256 I (out Binary sha256)                            -> Bool          | SHA-256 of the whole image (32 bytes)
0x0345 blynk_otaUpdatePrefetch  I ()                                             -> UInt8   30s   | download the image into the NCP first (see PREFETCH)
0x0346 blynk_otaUpdateSuspend   I (UInt16 seconds)                               -> Bool          | pause the update (0 resumes)
0x0351 blynk_setTime            I (Int64 time)                                   -> Bool          | set the time, ms since the epoch
0x0352 blynk_getTime            I (out String iso8601, out Int64 time, out Int16 offset, out String tz_abbr, out UInt8 dst_status) -> Bool | local time
0x0353 blynk_getLocationInfo    I (out String lat, out String lon, out String olson_id, out String posix_tz) -> Bool | location and time zone
"""

# Served by the primary MCU (called by the NCP).
_PRIMARY_TABLE = """
0x0181 mcu_ping                  I ()                                            -> ()      100ms | liveness check
0x0182 mcu_reboot                I ()                                            -> Bool          | reboot the primary MCU
0x0183 mcu_hasUID                I (UInt16 uid)                                  -> Bool          | does the primary serve this uid
0x0411 client_blynkStateChange   O (UInt8 state)                                                  | the NCP's state changed
0x0412 client_blynkVPinChange    O (UInt16 vpin, Binary value)                                    | a virtual pin changed
0x0421 client_processEvent       O (UInt8 event)                                                  | an NCP event (see EVENTS)
0x0441 client_otaUpdateAvailable I (String filename, UInt32 size, String fw_type, String fw_version, String fw_build) -> Bool 5s | an update is offered
0x0442 client_otaUpdateWrite     I (UInt32 offset, Binary chunk, UInt32 crc32)   -> Bool    5s    | one chunk of the image
0x0443 client_otaUpdateFinish    I ()                                            -> Bool    5s    | all chunks sent: verify and apply
0x0444 client_otaUpdateCancel    I ()                                            -> ()      1s    | abandon the update
"""

# This project's extensions (uids in EXTENSION_UIDS), by the side that serves them.  A side
# uses them only with a peer that says yes to hasUID for them.
_NCP_EXTENSIONS = """
"""
_PRIMARY_EXTENSIONS = """
0xE002 dualmcu_otaResume        I (UInt32 crc32, out UInt32 offset)             -> Bool          | where to go on with the offered image (its file crc32 identifies it); 0: from the start
0xE001 dualmcu_otaCapabilities  I (out UInt16 window, out UInt32 buffer, out UInt32 program_us_per_kib, out UInt32 erase_us_per_64kib) -> Bool | writes the primary takes in flight, its buffer for them, its flash timing
"""

# Conventions of this project on the real interface (docs/device.md): the virtual pin the
# cloud writes a shipment's policy to just before it offers it, and the metadata field the
# primary reports its telemetry in.  One place, because both sides must agree.
POLICY_VPIN = 250
TELEMETRY_FIELD = "dualmcu_telemetry"

STATES = {
    0: "unknown",
    1: "idle",
    2: "config",
    3: "connecting_net",
    4: "connecting_cloud",
    5: "connected",
    10: "not_initialized",
    11: "ncp_upgrade",  # the NCP updating its own firmware ("NCP Upgrade" in the driver's examples)
    12: "error",
}
EVENTS = {
    1: "ncp_rebooting",
    10: "button_click",
    11: "button_dblclick",
    12: "button_long_press",
    13: "button_long_release",
    16: "reset_start",
    17: "reset_cancel",
    18: "reset_done",
    20: "provisioned",
    21: "time_sync",
    22: "time_changed",
}
PREFETCH = {
    1: "ok",
    2: "generic",
    3: "connect_fail",
    4: "request_fail",
    5: "download_timeout",
    6: "no_fs_space",
    7: "fs_write_fail",
    8: "finalize_fail",
}


SCALARS = (bool, int, type(None))
_RESULTS: dict[int, dict[tuple[type, Any], bytes]] = {}  # Function.encode_result's encodings, by uid


@dataclass(frozen=True)
class Param:
    name: str
    type: T.Type


@dataclass(frozen=True)
class Function:
    uid: int
    name: str
    server: str  # NCP or PRIMARY: the side that serves it
    kind: str  # INVOKE or ONEWAY
    args: tuple[Param, ...]
    outs: tuple[Param, ...] = ()
    returns: T.Type | None = None
    timeout: float = DEFAULT_TIMEOUT
    doc: str = ""
    results: tuple[Param, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ret = (Param(RETURN, self.returns),) if self.returns else ()
        object.__setattr__(self, "results", self.outs + ret)

    @property
    def extension(self) -> bool:
        return self.uid in EXTENSION_UIDS

    def encode_args(self, values: Mapping[str, Any] | Iterable[Any] | None = None) -> bytes:
        return encode_fields(self.args, values, self.name)

    def decode_args(self, data: bytes) -> dict[str, Any]:
        return decode_fields(self.args, data, self.name)

    def encode_result(self, values: Any = None) -> bytes:
        if type(values) in SCALARS:
            # The same few answers over and over (a write's True, a state's number): each is
            # encoded once.  A refused value raises and is not kept.
            cache = _RESULTS.setdefault(self.uid, {})
            key = (type(values), values)
            if key not in cache:
                if len(cache) >= 64:
                    cache.clear()
                cache[key] = encode_fields(self.results, self.result_values(values), self.name)
            return cache[key]
        return encode_fields(self.results, self.result_values(values), self.name)

    def decode_result(self, data: bytes) -> dict[str, Any]:
        return decode_fields(self.results, data, self.name)

    def result_values(self, ret: Any) -> dict[str, Any]:
        """What a handler returned, as a mapping of result fields.

        A handler may return a mapping by field name, the bare return value when the function
        has no out-values, or a tuple (outs..., return) in table order.
        """
        if isinstance(ret, Mapping):
            return dict(ret)
        names = [p.name for p in self.results]
        if not names:
            return {}
        if len(names) == 1:
            return {names[0]: ret}
        if isinstance(ret, tuple) and len(ret) == len(names):
            return dict(zip(names, ret))
        raise ArgsError(f"{self.name} returns ({', '.join(names)}); got {ret!r}")

    def signature(self) -> str:
        parts = [f"{p.type.name} {p.name}" for p in self.args]
        parts += [f"out {p.type.name} {p.name}" for p in self.outs]
        text = f"{self.name}({', '.join(parts)})"
        if self.kind == INVOKE:
            text += f" -> {self.returns.name if self.returns else '()'}"
        return text


def encode_fields(params: tuple[Param, ...], values: Any, where: str) -> bytes:
    if values is None:
        values = {}
    if isinstance(values, Mapping):
        unknown = set(values) - {p.name for p in params}
        if unknown:
            raise ArgsError(f"{where} has no argument {', '.join(sorted(unknown))}")
        missing = [p.name for p in params if p.name not in values]
        if missing:
            raise ArgsError(f"{where} needs {', '.join(missing)}")
        ordered = [values[p.name] for p in params]
    else:
        ordered = list(values)
        if len(ordered) != len(params):
            raise ArgsError(f"{where} takes {len(params)} values, got {len(ordered)}")
    return b"".join(p.type.encode(p.type.check(v)) for p, v in zip(params, ordered))


def decode_fields(params: tuple[Param, ...], data: bytes, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pos = 0
    for p in params:
        out[p.name], pos = p.type.decode(data, pos)
    if pos != len(data):
        raise ArgsError(f"{where}: {len(data) - pos} bytes left over after the last field")
    return out


_LINE = re.compile(
    r"^(?P<uid>0x[0-9A-Fa-f]{4})\s+(?P<name>\w+)\s+(?P<kind>[IO])\s+\((?P<params>[^)]*)\)"
    r"(?:\s*->\s*(?P<ret>\(\)|\w+))?\s*(?P<timeout>\d+m?s)?\s*(?:\|\s*(?P<doc>.*))?$"
)


def _parse_table(text: str, server: str) -> list[Function]:
    functions = []
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        m = _LINE.match(line.strip())
        if not m:
            raise ValueError(f"bad interface table line: {line!r}")
        args, outs = [], []
        for spec in filter(None, (s.strip() for s in m["params"].split(","))):
            words = spec.split()
            target = outs if words[0] == "out" else args
            tname, pname = words[-2:]
            target.append(Param(pname, T.BY_NAME[tname]))
        ret = m["ret"]
        timeout = DEFAULT_TIMEOUT
        if m["timeout"]:
            t = m["timeout"]
            timeout = int(t[:-2]) / 1000 if t.endswith("ms") else float(t[:-1])
        kind = INVOKE if m["kind"] == "I" else ONEWAY
        if kind == ONEWAY and (ret or outs):
            raise ValueError(f"{m['name']}: a ONEWAY has no result")
        functions.append(
            Function(
                uid=int(m["uid"], 16),
                name=m["name"],
                server=server,
                kind=kind,
                args=tuple(args),
                outs=tuple(outs),
                returns=None if ret in (None, "()") else T.BY_NAME[ret],
                timeout=timeout,
                doc=(m["doc"] or "").strip(),
            )
        )
    return functions


class Interface:
    """A set of functions, looked up by uid or name."""

    def __init__(self, functions: Iterable[Function]):
        self.functions = tuple(functions)
        self.by_uid: dict[int, Function] = {}
        self.by_name: dict[str, Function] = {}
        for fn in self.functions:
            if fn.uid in self.by_uid or fn.name in self.by_name:
                raise ValueError(f"duplicate uid or name in the interface: {fn.name}")
            self.by_uid[fn.uid] = fn
            self.by_name[fn.name] = fn

    def __iter__(self):
        return iter(self.functions)

    def __getitem__(self, key: int | str) -> Function:
        try:
            return self.by_uid[key] if isinstance(key, int) else self.by_name[key]
        except KeyError:
            shown = f"0x{key:04X}" if isinstance(key, int) else repr(key)
            raise KeyError(f"no function {shown} in the interface") from None

    def get(self, key: int | str) -> Function | None:
        return self.by_uid.get(key) if isinstance(key, int) else self.by_name.get(key)

    def served_by(self, side: str) -> list[Function]:
        return [fn for fn in self.functions if fn.server == side]

    def extend(self, functions: Iterable[Function]) -> Interface:
        extra = list(functions)
        for fn in extra:
            if not fn.extension:
                raise ValueError(f"{fn.name}: extension uids must lie in 0xE000-0xEFFF")
        return Interface(self.functions + tuple(extra))


BLYNK_FUNCTIONS = _parse_table(_NCP_TABLE, NCP) + _parse_table(_PRIMARY_TABLE, PRIMARY)
EXTENSION_FUNCTIONS = _parse_table(_NCP_EXTENSIONS, NCP) + _parse_table(_PRIMARY_EXTENSIONS, PRIMARY)
INTERFACE = Interface(BLYNK_FUNCTIONS).extend(EXTENSION_FUNCTIONS)
