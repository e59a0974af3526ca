"""Signed images: make keys, sign, verify."""

from __future__ import annotations

import os
import sys

import click

from .common import InputError, JSON, emit_json, main, read_file, write_file


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
def keygen(out) -> None:
    """Make an Ed25519 key pair: OUT (private, PEM, readable by you alone) and OUT.pub."""
    from dualmcu.image.signing import generate, key_id, load_public

    if os.path.exists(out) or os.path.exists(out + ".pub"):
        raise InputError(f"{out} or {out}.pub exists already: not overwriting a key")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {out}: no folder {folder}")
    priv, pub = generate()
    write_file(out, priv, "the private key", mode=0o600, exclusive=True)
    write_file(out + ".pub", pub, "the public key", exclusive=True)
    click.echo(f"key id {key_id(load_public(pub)).hex()}")


@main.command("sign")
@click.argument("firmware", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="Private key (PEM) from `dualmcu keygen`.")
@click.option("--counter", required=True, type=click.IntRange(0, 0xFFFFFFFF), help="Security counter: devices refuse images below the highest they confirmed.")
@click.option("--target", "targets", multiple=True, required=True, help="product/hardware-revision it may be installed on (repeatable; * for any).")
@click.option("--min-bootloader", help="Oldest bootloader version the image needs, signed with it (a version 2 block).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the signed image (default: FIRMWARE.signed).")
def sign_cmd(firmware, key, counter, targets, min_bootloader, output) -> None:
    """Append a signature block to FIRMWARE (see `dualmcu docs signing`)."""
    from dualmcu.image.signing import SignError, load_private, sign

    from dualmcu.image.inputs import MAX_IMAGE, MAX_KEY

    private_pem = read_file(key, "private key", MAX_KEY)
    image = read_file(firmware, "firmware", MAX_IMAGE)
    mode = os.stat(key).st_mode & 0o777
    if mode & 0o077:
        # Signing still works; a key others can read is a key others can sign with.
        click.echo(f"warning: the private key {key} can be read by others (mode {mode:04o}); "
                   f"`chmod 600 {key}`", err=True)
    try:
        signed = sign(image, load_private(private_pem), counter, list(targets), min_bootloader)
    except SignError as e:
        raise InputError(str(e)) from None
    out = output or firmware + ".signed"
    write_file(out, signed, f"a signed image (counter {counter}, targets {', '.join(targets)})")


@main.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--pubkey", "pubkeys", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False), help="Trusted public key (repeatable).")
@click.option("--target", help="Check that the image may be installed on this target.")
@click.option("--min-counter", type=click.IntRange(0), default=0, help="Refuse images below this security counter.")
@click.option("--accept-any-target", "any_target", is_flag=True, help="With --target: also pass an image signed for target * (any product).")
@click.option("--bootloader", help="Check that the image runs on this bootloader version.")
@JSON
def verify_cmd(file, pubkeys, target, min_counter, any_target, bootloader, as_json) -> None:
    """Check a signed image: key, signature, digest, target, counter. Exit 0 when it passes."""
    from dualmcu.image.signing import SignError, load_keys, verify

    try:
        keys = load_keys(list(pubkeys))
    except SignError as e:
        raise click.BadParameter(str(e), param_hint="--pubkey") from None
    if os.path.isfile(file):
        # Streamed, as the bootloader reads a slot: a 1 GiB file costs 64 KiB of memory.
        try:
            with open(file, "rb") as f:
                size = os.fstat(f.fileno()).st_size

                def read(offset: int, n: int) -> bytes:
                    f.seek(offset)
                    return f.read(n)

                v = verify(size, read, keys, target, min_counter, any_target=any_target,
                           bootloader=bootloader)
        except OSError as e:
            raise InputError(f"cannot read {file}: {e.strerror}") from None
    else:  # a pipe has no size to read a slot by: it is read whole (a device is refused)
        from dualmcu.image.inputs import MAX_IMAGE
        from dualmcu.image.signing import verify_bytes

        v = verify_bytes(read_file(file, "image", MAX_IMAGE), keys, target, min_counter,
                         any_target=any_target, bootloader=bootloader)
    sig = v.signature
    info = {"file": file, "ok": v.ok, "reason": v.reason,
            "key_id": sig.key_id.hex() if sig else None, "counter": sig.counter if sig else None,
            "targets": list(sig.targets) if sig else None, "min_bootloader": sig.min_bootloader if sig else None}
    if as_json:
        emit_json(info)
    else:
        click.echo(("verified" if v.ok else f"REFUSED: {v.reason}") +
                   (f" (key {info['key_id']}, counter {info['counter']}, targets {', '.join(info['targets'])})" if sig else ""))
    sys.exit(0 if v.ok else 1)
