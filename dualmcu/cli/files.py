"""Files: flash images, firmware tags, test images."""

from __future__ import annotations

import json
import os

import click

from dualmcu.image.firmware import TEST_BEHAVIOURS
from dualmcu.image.inputs import MAX_IMAGE

from .common import DEFAULT_FLASH, FLASH_HELP_DEFAULT, JSON, InputError, Number, Size, main, read_file, write_file



class ImageCommand(click.Command):
    """``--test slow-confirm SECONDS`` as well as ``--test slow-confirm:SECONDS``: an option
    takes one value, so the seconds that follow are joined to it before parsing."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, a in enumerate(args[:-2]):
            if a == "--test" and args[i + 1] == "slow-confirm" and not args[i + 2].startswith("-"):
                args[i + 1 : i + 3] = [f"slow-confirm:{args[i + 2]}"]
                break
        return super().parse_args(ctx, args)


class TestBehaviour(click.ParamType):
    """A test behaviour; slow-confirm takes its seconds after a colon (slow-confirm:30)."""

    name = "behaviour"

    def convert(self, value, param, ctx):
        name, sep, arg = str(value).partition(":")
        if name not in TEST_BEHAVIOURS:
            self.fail(f"{value!r} is not one of {', '.join(TEST_BEHAVIOURS)}", param, ctx)
        if name != "slow-confirm":
            if sep:
                self.fail(f"{name} takes no argument", param, ctx)
            return name
        try:
            seconds = float(arg)
        except ValueError:
            seconds = float("nan")
        if not (0 < seconds < 1e6):
            self.fail(f"{value!r}: give slow-confirm SECONDS (or slow-confirm:SECONDS) with 0 < SECONDS < 1000000, e.g. slow-confirm 30",
                      param, ctx)
        return f"slow-confirm:{arg}"


@main.group()
def flash() -> None:
    """Inspect an emulated flash file."""


@flash.command("show")
@click.option("--flash", "path", type=click.Path(exists=True, dir_okay=False), default=DEFAULT_FLASH, show_default=FLASH_HELP_DEFAULT)
@JSON
def flash_show(path, as_json) -> None:
    """The boot state and, for each slot, its image: version, type, length, SHA-256, validity."""
    from dualmcu.primary.flash import FlashError
    from dualmcu.primary.inspect import describe, format_description

    try:
        d = describe(path)
    except FlashError as e:
        raise InputError(str(e)) from None
    click.echo(json.dumps(d) if as_json else format_description(d))


@main.group()
def tag() -> None:
    """Create, show, extract and append Blynk firmware info tags (blynk_tag.py compatible)."""


def _tag_info(mcu, fw_type, build, blynk, extra=()):
    from dualmcu.image.firmware import make_info

    info = make_info(mcu, fw_type, build, blynk)
    for item in extra:
        k, sep, v = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        info[k] = v
    return info


TAG_OPTIONS = [
    click.option("--mcu", required=True, help="Firmware version, e.g. 1.2.3."),
    click.option("--type", "fw_type", required=True, help="Firmware type (usually the template id)."),
    click.option("--build", help="Build date and time (default: now, as __DATE__ __TIME__)."),
    click.option("--blynk", default="0.6.4", show_default=True, help="Library version."),
    click.option("--set", "extra", multiple=True, metavar="KEY=VALUE", help="Another tag key, e.g. dualmcu-test=fail-health."),
]


def tag_options(f):
    for opt in reversed(TAG_OPTIONS):
        f = opt(f)
    return f


@tag.command("create")
@click.argument("out", type=click.Path(dir_okay=False))
@tag_options
def tag_create(out, mcu, fw_type, build, blynk, extra) -> None:
    """Write a tag alone to OUT."""
    from dualmcu.image.firmware import TagError, create_tag

    try:
        data = create_tag(_tag_info(mcu, fw_type, build, blynk, extra))
    except TagError as e:
        raise click.BadParameter(str(e)) from None
    write_file(out, data, f"a {len(data)}-byte tag")


@tag.command("show")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@JSON
def tag_show(file, as_json) -> None:
    """Show the tag found in a tag file or a firmware image."""
    from dualmcu.image.firmware import read_info, read_info_from_file

    # A file is searched where it lies; a pipe has no size to search by, and is read whole.
    info = (read_info_from_file(file) if os.path.isfile(file)
            else read_info(read_file(file, "firmware", MAX_IMAGE)))
    if info is None:
        raise InputError(f"no Blynk info tag found in {file}")
    if as_json:
        click.echo(json.dumps(info))
    else:
        for k, v in info.items():
            click.echo(f"{k:<10} {v}")


@tag.command("extract")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
def tag_extract(file, out) -> None:
    """Copy the tag found in FILE to OUT."""
    from dualmcu.image.firmware import find_tag

    t = find_tag(read_file(file, "firmware", MAX_IMAGE))
    if t is None:
        raise InputError(f"no Blynk info tag found in {file}")
    write_file(out, t, f"a {len(t)}-byte tag")


@tag.command("append")
@click.argument("firmware", type=click.Path(exists=True, dir_okay=False))
@tag_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of changing FIRMWARE in place.")
def tag_append(firmware, mcu, fw_type, build, blynk, extra, output) -> None:
    """Append a tag to a firmware image that has none (e.g. a re-packaged image)."""
    from dualmcu.image.firmware import TagError, create_tag, find_tag

    data = read_file(firmware, "firmware", MAX_IMAGE)
    if find_tag(data) is not None:
        raise InputError(f"{firmware} already has a tag (see `dualmcu tag show`); the first one found wins")
    try:
        t = create_tag(_tag_info(mcu, fw_type, build, blynk, extra))
    except TagError as e:
        raise click.BadParameter(str(e)) from None
    write_file(output or firmware, data + t, f"{len(data)} bytes of firmware + a {len(t)}-byte tag")


@main.command(cls=ImageCommand)
@click.argument("out", type=click.Path(dir_okay=False))
@tag_options
@click.option("--size", type=Size(1 << 30), default="300K", show_default=True, help="Image size.")
@click.option("--test", "behaviour", type=TestBehaviour(), metavar="BEHAVIOUR",
              help="Make an image that misbehaves on the emulated primary: " + ", ".join(
                  b + (" SECONDS" if b == "slow-confirm" else "") for b in TEST_BEHAVIOURS) + ".")
@click.option("--hw-rev", help="Hardware revisions the image runs on, e.g. 'A B' (tag key hw-rev).")
@click.option("--min-bootloader", help="Oldest bootloader version the image needs (tag key min-bootloader).")
@click.option("--config-schema", type=click.IntRange(1, 0xFFFF),
              help="Configuration schema of the image (tag key config-schema; breaking-migration: 2 by default).")
@click.option("--content", type=click.Choice(["random", "code"]), default="random", show_default=True,
              help="Filler: random bytes, or code-like bytes of one program per --type (they compress, and two versions share most of them).")
@click.option("--from", "base", type=click.Path(exists=True, dir_okay=False),
              help="Make the next build of this image instead: its program edited at scattered sites and relinked (--size is ignored).")
@click.option("--change", type=Number(min=0, max=100, min_open=True), default=1.0, show_default=True,
              help="With --from: percent of the program's bytes the edits touch.")
def image(out, mcu, fw_type, build, blynk, extra, size, behaviour, hw_rev, min_bootloader, config_schema,
          content, base, change) -> None:
    """Build a tagged test firmware image (deterministic filler after the tag).

    With --content code two versions of one --type are builds of one program; --from OLD
    --change 1 makes a plausible next build of OLD (functions shifted, constants changed),
    for trying `dualmcu package --base`.
    """
    from dualmcu.image.firmware import TEST_KEY, TagError, build_image, next_image

    info = _tag_info(mcu, fw_type, build, blynk, extra)
    if behaviour == "breaking-migration" and config_schema is None:
        config_schema = 2
    for key, value in (("hw-rev", hw_rev), ("min-bootloader", min_bootloader),
                       ("config-schema", str(config_schema) if config_schema else None)):
        if value is not None:
            info[key] = value
    if behaviour:
        info[TEST_KEY] = behaviour
    try:
        if base is not None:
            data = next_image(read_file(base, "base image", MAX_IMAGE), info, change / 100)
        else:
            data = build_image(info, size, content=content)
    except (TagError, ValueError) as e:
        raise click.BadParameter(str(e)) from None
    write_file(out, data, f"{len(data)} bytes, version {mcu}, type {fw_type}" + (f", test: {behaviour}" if behaviour else ""))


@main.command()
@click.argument("new", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where the package goes.")
@click.option("--base", type=click.Path(exists=True, dir_okay=False),
              help="Make a delta against this image (the one devices run); without it, NEW compressed.")
@click.option("--compress", "compression", type=click.Choice(["heatshrink", "lzma", "none"]), default="heatshrink",
              show_default=True, help="Compression of the patch data (detools).")
@click.option("--segment", type=Size(1 << 24), default="64K", show_default=True,
              help="Image bytes per segment, a multiple of 4K: the unit a transfer resumes at.")
@click.option("--lzma-dict", type=Size(1 << 24), default="32K", show_default=True,
              help="lzma dictionary: RAM the device needs to decompress (plus 16K of tables).")
@click.option("--heatshrink-window", type=click.IntRange(4, 14), default=8, show_default=True,
              help="heatshrink window, as a power of two (8: 256 bytes of RAM).")
@JSON
def package(new, output, base, compression, segment, lzma_dict, heatshrink_window, as_json) -> None:
    """Make an update package of NEW: compressed, or a delta against --base.

    The package carries NEW's tag, so the cloud sees NEW's version; the device checks the
    base before it applies a byte, rebuilds NEW into its inactive slot as the package arrives
    and verifies it like a full image. It is checked here by applying it once.
    """
    import time

    from dualmcu.image.package import PackageError, apply_package, build_package, decoder_ram, parse_header

    new_data = read_file(new, "image", MAX_IMAGE)
    base_data = read_file(base, "base image", MAX_IMAGE) if base else None
    if lzma_dict < 4096:
        raise click.BadParameter(f"{lzma_dict} bytes: lzma needs a dictionary of at least 4K", param_hint="--lzma-dict")
    t0 = time.process_time()
    try:
        pkg = build_package(new_data, base_data, compression, segment, lzma_dict, (heatshrink_window, min(7, heatshrink_window - 1)))
        built = time.process_time() - t0
        if apply_package(pkg, base_data) != new_data:  # pragma: no cover - a detools fault
            raise PackageError("the package does not rebuild the image")
    except PackageError as e:
        raise InputError(str(e)) from None
    h = parse_header(pkg)
    write_file(output, pkg, f"a {h.describe()['kind']} package of {len(pkg)} bytes "
               f"({100 * len(pkg) / len(new_data):.1f} % of the image)")
    summary = {**h.describe(), "package_size": len(pkg), "ratio": round(len(pkg) / len(new_data), 4),
               "build_seconds": round(built, 3),
               "device_ram": decoder_ram(h.compression, lzma_dict if compression == "lzma" else heatshrink_window)}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for k in ("version", "base_version", "compression", "image_size", "package_size", "segment", "device_ram"):
            if summary.get(k) is not None:
                click.echo(f"  {k}: {summary[k]}")
