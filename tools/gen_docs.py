#!/usr/bin/env python3
"""Write the generated reference pages from the code itself.

    .venv/bin/python tools/gen_docs.py          # rewrite docs/interface.md, cli.md and events.md
    .venv/bin/python tools/gen_docs.py --check  # exit 1 if either is out of date (the tests do this)
"""

from __future__ import annotations

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Default paths appear in help texts as ~/...: drop per-user overrides so that every machine
# generates the same text, whatever its HOME or XDG settings.
for var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
    os.environ.pop(var, None)

import click  # noqa: E402

from dualmcu.cli import main  # noqa: E402
from dualmcu.exits import MEANING  # noqa: E402
from dualmcu.rpc.events import Event  # noqa: E402
from dualmcu.rpc.interface import EVENTS, EXTENSION_UIDS, INTERFACE, INVOKE, NCP, PREFETCH, STATES  # noqa: E402


def interface_md() -> str:
    out = [
        "# Interface reference",
        "",
        "Generated from the interface table in `rpc/interface.py` by `tools/gen_docs.py`; do not edit.",
        "",
        "Kind: INVOKE is answered by a RESULT; ONEWAY never is. Out-values come back in the RESULT",
        "before the return value, in the order shown. The timeout is the caller's.",
        "",
        f"Uids 0x{EXTENSION_UIDS.start:04X}-0x{EXTENSION_UIDS.stop - 1:04X} are reserved for this project's extensions.",
        "",
    ]
    for side, title in ((NCP, "Served by the NCP (called by the primary MCU)"),
                        ("primary", "Served by the primary MCU (called by the NCP)")):
        out += [f"## {title}", "", "| uid | name | kind | arguments | out | returns | timeout | what |",
                "|---|---|---|---|---|---|---|---|"]
        for fn in INTERFACE.served_by(side):
            args = ", ".join(f"{p.type.name} {p.name}" for p in fn.args) or "-"
            outs = ", ".join(f"{p.type.name} {p.name}" for p in fn.outs) or "-"
            ret = (fn.returns.name if fn.returns else "status only") if fn.kind == INVOKE else "-"
            timeout = f"{fn.timeout * 1000:.0f} ms" if fn.kind == INVOKE else "-"
            kind = "INVOKE" if fn.kind == INVOKE else "ONEWAY"
            out.append(f"| 0x{fn.uid:04X} | `{fn.name}` | {kind} | {args} | {outs} | {ret} | {timeout} | {fn.doc} |")
        out.append("")
    for title, table, what in (
        ("STATES", STATES, "what `blynk_getState` returns and `client_blynkStateChange` carries"),
        ("PREFETCH", PREFETCH, "what `blynk_otaUpdatePrefetch` returns"),
        ("EVENTS", EVENTS, "what `client_processEvent` carries"),
    ):
        out += [f"## {title}", "", f"Codes of {what}.", "", "| code | meaning |", "|---|---|"]
        out += [f"| {code} | {name} |" for code, name in table.items()]
        out.append("")
    return "\n".join(out)


def events_md() -> str:
    out = [
        "# Events reference",
        "",
        "Generated from the events table in `rpc/events.py` by `tools/gen_docs.py`; do not edit.",
        "",
        "With `--json`, each side writes one JSON object per line:",
        "",
        "```",
        '{"side": "primary", "event": "confirmed", "t": 4.411, "slot": "B", "version": "1.1.0"}',
        "```",
        "",
        "- `side` is `ncp` or `primary` (`dualmcu run` adds its own lines with side `run`).",
        "  `dualmcu run` passes each side's lines on as it hears them: one side's lines keep their",
        "  order, but the two sides' lines interleave in no set order (order them by `t`). Its",
        "  `result` line comes last, after every line either side printed.",
        "- `event` is one of the kinds below; the fields each carries are named in brackets.",
        "- `t` is seconds since the side started, or since `dualmcu run` started, which gives both",
        "  of its sides one origin. `port_open` names the UTC time at which `t` is 0",
        "  (`clock_origin`), to set the stream beside other logs. Events of the set-up before the",
        "  port opens carry no `t`.",
        "- Binary values are hex strings. A reader should ignore fields it does not know.",
        "- A reader that stops reading a while (a pager on its first screen) holds up no side:",
        "  on a pipe the lines (these, and the readable ones on stderr) wait in the side's memory",
        "  and go out as the reader takes them, and the side's end waits for it to take the rest.",
        "  Past 32 MiB waiting, lines are left out until the reader has caught up, and one",
        "  `events_dropped` line says how many. Lines that cannot be written at all (a full",
        "  disk) end the side with one line on stderr and exit code 3; a reader that went away",
        "  ends it quietly with 1, as a closed pipe ends any program.",
        "",
        "Without `--json` the same events are readable lines on stderr; `-v` adds the wire-level",
        "ones (`rpc_frame_dropped`, `rpc_timeout`, `rpc_stale_result`) and every progress step.",
        "",
        "Side `both` means each side emits the event with the fields it has; `shell` means the I/O",
        "shell of either side (the port, the process), not the emulated device.",
    ]
    section = None
    for kind in Event:
        if kind.section != section:
            section = kind.section
            out += ["", f"## {section}", "", "| event | side | what it means |", "|---|---|---|"]
        out.append(f"| `{kind.value}` | {kind.side} | {kind.doc} |")
    return "\n".join(out).rstrip("\n")


def _walk(cmd: click.Command, path: list[str], out: list[str]) -> None:
    ctx = click.Context(cmd, info_name=" ".join(path), max_content_width=100, terminal_width=100,
                        help_option_names=["-h", "--help"])
    if path[1:]:
        out += [f"## `{' '.join(path)}`", "", "```", cmd.get_help(ctx).rstrip(), "```", ""]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(ctx)):
            _walk(cmd.get_command(ctx, name), path + [name], out)


def cli_md() -> str:
    out = ["# CLI reference", "", "Generated from the command definitions by `tools/gen_docs.py`; do not edit.", "",
           "Every command uses the same exit codes (`dualmcu/exits.py`):", "", "| code | meaning |", "|---|---|"]
    out += [f"| {int(code)} | {text} |" for code, text in MEANING.items()]
    out += ["", "Environment: `DUALMCU_PORT` and `DUALMCU_BAUD` stand for `--port` and `--baud`; `--port auto`",
            "picks the one USB-serial port present. Default files live in the per-user data folder",
            "(`~/.local/share/dualmcu` on Linux).", ""]
    ctx = click.Context(main, info_name="dualmcu", max_content_width=100, terminal_width=100,
                        help_option_names=["-h", "--help"])
    out += ["```", main.get_help(ctx).rstrip(), "```", ""]
    _walk(main, ["dualmcu"], out)
    return "\n".join(out)


def _doc(obj) -> str:
    import inspect

    return inspect.cleandoc(obj.__doc__ or "").strip()


def _signature(name: str, obj) -> str:
    import inspect

    try:
        sig = str(inspect.signature(obj)).replace("NoneType", "None").replace("'", "")
    except (TypeError, ValueError):
        sig = "(...)"
    return f"{name}{sig}"


def api_md() -> str:
    """The public Python API (dualmcu.api.__all__) and the pytest plugin, from their docstrings."""
    import inspect

    from dualmcu import api, pytest_plugin

    out = ["# Python API and pytest plugin reference", "",
           "Generated from `dualmcu/api.py` and `dualmcu/pytest_plugin.py` by `tools/gen_docs.py`; do not edit.",
           "[testing.md](testing.md) shows them at work. Every name below is importable from `dualmcu`",
           "(`from dualmcu import Ncp`); the rest of the package is internal.", "",
           _doc(api), ""]
    for name in api.__all__:
        obj = getattr(api, name)
        kind = "class" if inspect.isclass(obj) else "function"
        out += [f"## `{name}`", "", "```python", f"{kind} {_signature(name, obj)}", "```", "", _doc(obj), ""]
        if inspect.isclass(obj):
            members = [(n, m) for n, m in vars(obj).items() if not n.startswith("_")]
            for base in obj.__mro__[1:]:
                if base.__module__ == api.__name__:
                    members += [(n, m) for n, m in vars(base).items()
                                if not n.startswith("_") and n not in dict(members)]
            for n, m in members:
                if isinstance(m, property):
                    out += [f"- `{name}.{n}` (property): {_doc(m.fget).splitlines()[0] if _doc(m.fget) else ''}"]
                elif callable(m) and _doc(m):
                    out += [f"- `{_signature(name + '.' + n, m).replace('(self, ', '(').replace('(self)', '()')}`: "
                            + " ".join(_doc(m).split())]
            if obj.__dataclass_fields__ if hasattr(obj, "__dataclass_fields__") else False:
                src = inspect.getsource(obj).splitlines()
                fields = [line.strip() for line in src if re.match(r"    \w+: ", line)]
                out += ["", "Fields:", "", "```python", *fields, "```"]
            out.append("")
    out += ["## The pytest plugin", "", _doc(pytest_plugin), "", "### ini options", "",
            "| name | what | default |", "|---|---|---|"]
    out += [f"| `{k}` | {v} | {pytest_plugin.DEFAULTS.get(k, '')} |" for k, v in pytest_plugin.INI.items()]
    out += ["", "### Fixtures", ""]
    for name in ("dualmcu_image", "dualmcu_firmware_command", "dualmcu_firmware", "dualmcu_ncp", "dualmcu_primary",
                 "dualmcu_link"):
        fn = getattr(pytest_plugin, name)
        fn = getattr(fn, "__wrapped__", getattr(fn, "_fixture_function", fn))
        out += [f"- `{name}`: " + " ".join(_doc(fn).split())]
    return "\n".join(out).rstrip("\n")


PAGES = {"docs/interface.md": interface_md, "docs/cli.md": cli_md, "docs/events.md": events_md,
         "docs/api.md": api_md}


def main_() -> int:
    check = "--check" in sys.argv
    stale = []
    for rel, make in PAGES.items():
        path = os.path.join(HERE, "..", rel)
        text = make() + "\n"
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            stale.append(rel)
            if not check:
                with open(path, "w") as f:
                    f.write(text)
    if check and stale:
        print("out of date: " + ", ".join(stale) + " (run tools/gen_docs.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main_())
