"""Signed images: what installs, what is refused and why, anti-rollback, target binding,
tampering on flash, key rotation; on the cores and through the commands."""

import json
import subprocess
import sys

import pytest

from dualmcu.image import signing as S
from dualmcu.image.firmware import build_image, make_info
from dualmcu.sim import Simulation
from support import active_image
from dualmcu.ncp.update import Shipment
from dualmcu.primary.boot import Bootloader, BootStore, Trust
from dualmcu.primary.device import PrimaryConfig
from dualmcu.primary.flash import Flash, Geometry

B = "Jan  1 2026 00:00:00"
OLD = build_image(make_info("1.0.0", "TMPLS", build=B), 30_000, seed=1)
NEW = build_image(make_info("1.1.0", "TMPLS", build=B), 80_000, seed=2)


def keypair():
    priv, pub = S.generate()
    public = S.load_public(pub)
    return S.load_private(priv), public, {S.key_id(public): public}


K1, P1, KEYS1 = keypair()
K2, P2, KEYS2 = keypair()


def device(keys, counter=1, target="prod/A"):
    f = Flash.in_memory(Geometry(4096, 256 * 1024))
    b = Bootloader(f, trust=Trust(keys, target))
    b.provision(S.sign(OLD, K1, counter, [target]))
    b.confirm()
    return f


def update(flash, image, keys, target="prod/A"):
    s = Simulation(flash, Shipment.from_bytes(image, "fw.bin"),
                   primary_config=PrimaryConfig(trust=Trust(keys, target)))
    return s, s.run_update()


active = active_image


def test_a_valid_signed_image_installs_and_raises_the_counter():
    f = device(KEYS1)
    signed = S.sign(NEW, K1, 5, ["prod/A"])
    s, outcome = update(f, signed, KEYS1)
    assert outcome == "success"
    st, img = active(f)
    assert img == signed and st.security_counter == 5


def test_one_flipped_byte_anywhere_is_refused():
    signed = S.sign(NEW, K1, 5, ["prod/A", "prod/B"])
    sig = S.find_block(len(signed), lambda o, n: signed[o : o + n])
    block_start = sig.body_length
    positions = {
        "firmware": 5000,
        "tag": NEW.index(b"blnkinf") + 12,
        "key id": block_start + 6,
        "counter": block_start + 13,
        "targets": block_start + 19,
        "digest": len(signed) - 6 - 64 - 5,
        "signature": len(signed) - 6 - 20,
    }
    for what, i in positions.items():
        bad = bytearray(signed)
        bad[i] ^= 0x01
        v = S.verify_bytes(bytes(bad), KEYS1, "prod/A")
        assert not v, what
    assert S.verify_bytes(signed, KEYS1, "prod/A")
    # and on the device: a flipped firmware byte arrives whole (its own digests match) but is refused
    bad = bytearray(signed)
    bad[5000] ^= 0x01
    f = device(KEYS1)
    s, outcome = update(f, bytes(bad), KEYS1)
    assert outcome == "finish_failed"
    assert s.find("ota_refused", "primary")[0]["reason"] == "signature_bad_signature" or \
        s.find("ota_refused", "primary")[0]["reason"] == "signature_digest_mismatch"
    assert active(f)[1] != bytes(bad)


@pytest.mark.parametrize("image,reason", [
    (lambda: S.sign(NEW, K2, 5, ["prod/A"]), "signature_unknown_key"),
    (lambda: S.sign(NEW, K1, 5, ["prod/B"]), "signature_wrong_target"),
    (lambda: S.sign(NEW, K1, 2, ["prod/A"]), "signature_counter_too_low"),
    (lambda: NEW, "signature_unsigned"),
])
def test_refusals(image, reason):
    f = device(KEYS1, counter=3)
    s, outcome = update(f, image(), KEYS1)
    assert outcome == "finish_failed"
    assert s.find("ota_refused", "primary")[0]["reason"] == reason
    st, img = active(f)
    assert st.security_counter == 3 and img.startswith(OLD)


def test_a_slot_tampered_with_on_flash_is_not_booted():
    f = device(KEYS1)
    signed = S.sign(NEW, K1, 5, ["prod/A"])
    update(f, signed, KEYS1)
    st = BootStore(f).load()
    # rewrite the slot's bytes and its record's digests, as an attacker with the flash could
    from dataclasses import replace

    from dualmcu.primary.boot import SlotRecord, slot_digests

    base = f.geometry.slot_offset(st.active)
    for off in range(0, 4096 * 20, 4096):
        f.erase_page(base + off)
    evil = bytearray(signed)
    evil[1000] ^= 0xFF
    f.write(base, bytes(evil[: 4096 * 20]))
    crc, sha = slot_digests(f, st.active, len(signed))
    BootStore(f).store(replace(st, slots=tuple(SlotRecord(True, len(signed), crc, sha) if i == st.active else r
                                               for i, r in enumerate(st.slots))))
    r = Bootloader(f, trust=Trust(KEYS1, "prod/A")).boot()
    assert r.slot != st.active and ("verify_failed", {"slot": "AB"[st.active]}) in r.events


def test_key_rotation():
    both = {**KEYS1, **KEYS2}
    f = device(both)
    s, outcome = update(f, S.sign(NEW, K2, 5, ["prod/A"]), both)
    assert outcome == "success"
    newer = build_image(make_info("1.2.0", "TMPLS", build=B), 60_000, seed=3)
    s, outcome = update(f, S.sign(newer, K1, 6, ["prod/A"]), KEYS2)  # the old key is retired
    assert outcome == "finish_failed"
    assert s.find("ota_refused", "primary")[0]["reason"] == "signature_unknown_key"


def test_with_no_key_trusted_unsigned_images_are_accepted_and_it_says_so():
    f = Flash.in_memory(Geometry(4096, 256 * 1024))
    Bootloader(f).provision(OLD)
    s = Simulation(f, Shipment.from_bytes(NEW))
    assert s.run_update() == "success"
    assert s.find("trust", "primary")[0]["keys"] == 0


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dualmcu", *map(str, args)], capture_output=True, timeout=120, cwd=cwd)


def test_keygen_sign_verify_and_run(tmp_path):
    key = tmp_path / "k"
    assert cli("keygen", key).returncode == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    r = cli("keygen", key)
    assert r.returncode == 2 and b"not overwriting" in r.stderr
    fw = tmp_path / "fw.bin"
    fw.write_bytes(NEW)
    assert cli("sign", fw, "--key", key, "--counter", 4, "--target", "dualmcu/1").returncode == 0
    signed = tmp_path / "fw.bin.signed"
    r = cli("verify", signed, "--pubkey", f"{key}.pub", "--target", "dualmcu/1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["counter"] == 4
    assert cli("verify", signed, "--pubkey", f"{key}.pub", "--target", "other/1").returncode == 1
    assert cli("verify", signed, "--pubkey", f"{key}.pub", "--min-counter", 5).returncode == 1
    r = cli("sign", signed, "--key", key, "--counter", 4, "--target", "x")
    assert r.returncode == 2 and b"signed already" in r.stderr
    r = cli("sign", fw, "--key", f"{key}.pub", "--counter", 4, "--target", "x")
    assert r.returncode == 2 and b"private key" in r.stderr
    # end to end: the primary process trusts the key
    flash = tmp_path / "dev.flash"
    r = cli("run", "--firmware", signed, "--trust", f"{key}.pub", "--key", key, "--flash", flash,
            "--workdir", tmp_path / "w", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("run", "--firmware", fw, "--trust", f"{key}.pub", "--key", key, "--workdir", tmp_path / "w2", "--json")
    assert r.returncode == 1
    assert any(json.loads(x).get("reason") == "signature_unsigned" for x in r.stdout.decode().splitlines() if x.startswith("{"))


# -- what a device that trusts keys refuses, from its first boot on ----------------------------

def test_an_image_signed_for_any_target_installs_only_where_that_is_allowed():
    for any_target in (False, True):
        flash = device(KEYS1)
        s = Simulation(flash, Shipment.from_bytes(S.sign(NEW, K1, 2, ["*"]), "fw.bin"),
                       primary_config=PrimaryConfig(trust=Trust(KEYS1, "prod/A", any_target)))
        s.run_update()
        installed = bool(s.find("ota_installed", "primary"))
        assert installed is any_target, any_target
        if not any_target:
            assert "signature_wrong_target" in [e["reason"] for e in s.find("ota_refused", "primary")]


def test_provisioning_records_the_factory_counter_and_it_never_drops():
    flash = Flash.in_memory(Geometry(4096, 256 * 1024))
    Bootloader(flash, trust=Trust(KEYS1, "prod/A")).provision(S.sign(OLD, K1, 5, ["prod/A"]))
    assert BootStore(flash).load().security_counter == 5
    s = Simulation(flash, Shipment.from_bytes(S.sign(NEW, K1, 2, ["prod/A"]), "fw.bin"),
                   primary_config=PrimaryConfig(trust=Trust(KEYS1, "prod/A")))
    s.run_update()
    assert not s.find("ota_installed", "primary")
    assert BootStore(flash).load().security_counter == 5


@pytest.mark.parametrize("image,why", [(OLD, "unsigned"), (None, "wrong_target")])
def test_a_factory_image_the_device_would_not_boot_is_refused_before_writing(image, why):
    flash = Flash.in_memory(Geometry(4096, 256 * 1024))
    image = image if image is not None else S.sign(OLD, K1, 1, ["other/B"])
    with pytest.raises(ValueError, match=why):
        Bootloader(flash, trust=Trust(KEYS1, "prod/A")).provision(image)
    assert flash.ops == 0 and BootStore(flash).load() is None


def test_a_tagless_factory_image_is_refused_and_a_second_provision_is_reported(tmp_path):
    from dualmcu.sides import open_flash

    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes(5000))
    with pytest.raises(ValueError, match="firmware tag"):
        open_flash(str(tmp_path / "a.flash"), Geometry(4096, 256 * 1024), str(raw), lambda *a, **k: None)
    assert not (tmp_path / "a.flash").exists()  # refused before the flash file was made
    good = tmp_path / "good.bin"
    good.write_bytes(OLD)
    seen = []
    emit = lambda kind, **f: seen.append(kind)  # noqa: E731
    open_flash(str(tmp_path / "b.flash"), Geometry(4096, 256 * 1024), str(good), emit).close()
    open_flash(str(tmp_path / "b.flash"), None, str(good), emit).close()
    assert seen == ["provisioned", "provision_ignored"]


def test_signing_with_a_key_others_can_read_warns(tmp_path):
    import os

    from click.testing import CliRunner

    from dualmcu.cli import main
    from dualmcu.image.firmware import build_image, make_info

    r = CliRunner()
    assert r.invoke(main, ["keygen", str(tmp_path / "k")]).exit_code == 0
    fw = tmp_path / "fw.bin"
    fw.write_bytes(build_image(make_info("1.0.0", "T", build="Jan  1 2026 00:00:00"), 4096))
    args = ["sign", str(fw), "--key", str(tmp_path / "k"), "--counter", "1", "--target", "dualmcu/1"]
    quiet = r.invoke(main, args + ["-o", str(tmp_path / "a")])
    assert quiet.exit_code == 0 and "warning" not in quiet.output
    os.chmod(tmp_path / "k", 0o644)
    loud = r.invoke(main, args + ["-o", str(tmp_path / "b")])
    assert loud.exit_code == 0 and "can be read by others (mode 0644)" in loud.output


def test_verify_streams_a_large_file(tmp_path):
    """`dualmcu verify` reads the file in blocks, as a bootloader reads a slot: verifying a
    160 MiB image must not take 160 MiB of memory (it read the whole file before).  The peak
    is the verifying process's own (VmHWM, which starts afresh at exec), not this one's."""
    priv, pub = S.generate()
    (tmp_path / "k.pub").write_bytes(pub)
    (tmp_path / "big.bin").write_bytes(S.sign(NEW + bytes(160 * 2**20), S.load_private(priv), 1, ["prod/A"]))
    script = ("import sys\nfrom dualmcu.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
              "    code = e.code\nhwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
              "print(int(hwm.split()[1]), code, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", script, "verify", str(tmp_path / "big.bin"), "--pubkey",
                        str(tmp_path / "k.pub"), "--target", "prod/A", "--json"], capture_output=True, text=True,
                       timeout=120)
    peak_kib, code = r.stderr.split()[-2:]
    assert code == "0" and json.loads(r.stdout)["ok"] is True, r.stderr
    assert int(peak_kib) < 100 * 1024  # well below the file's 160 MiB


def test_bootable_answers_as_the_bootloader_does_signatures_included():
    """bootable() is the bootloader's own decision, run on a copy of the flash: a device that
    trusts only another key has nothing it would boot, and asking writes nothing."""
    from dualmcu.primary.boot import bootable

    f = device(KEYS1)
    before, ops = bytes(f._store.buf), f.ops
    assert bootable(f) == 0 and bootable(f, Trust(KEYS1, "prod/A")) == 0
    assert bootable(f, Trust(KEYS2, "prod/A")) is None
    assert bytes(f._store.buf) == before and f.ops == ops


# An EC key on secp112r1, a curve the cryptography library cannot read at all: loading it
# raises its own UnsupportedAlgorithm, which reached the user as a traceback.
SECP112R1_PRIVATE = b"""-----BEGIN EC PRIVATE KEY-----
MD4CAQEEDsOdlEzlcpfg/pC8TVVwoAcGBSuBBAAGoSADHgAElO4HetszpAiFAxSh
Dta7tjo8wvFqbPqECFbG1A==
-----END EC PRIVATE KEY-----
"""
SECP112R1_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAElO4HetszpAiFAxShDta7tjo8wvFqbPqE
CFbG1A==
-----END PUBLIC KEY-----
"""


def _ec_p256():
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    return (k.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
            k.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))


@pytest.mark.parametrize("kind", ["secp112r1", "secp256r1"])
def test_a_key_of_another_type_is_one_line_naming_it_in_every_command(tmp_path, kind):
    from click.testing import CliRunner

    from dualmcu.cli import main

    private, public = (SECP112R1_PRIVATE, SECP112R1_PUBLIC) if kind == "secp112r1" else _ec_p256()
    (tmp_path / "k.pem").write_bytes(private)
    (tmp_path / "k.pub").write_bytes(public)
    fw = tmp_path / "fw.bin"
    fw.write_bytes(build_image(make_info("1.0.0", "TMPLSIG"), 4096))
    said = "cannot be read (Curve 1.3.132.0.6 is not supported)" if kind == "secp112r1" else "is an EC key on secp256r1"
    for args in (["sign", str(fw), "--key", str(tmp_path / "k.pem"), "--counter", "1", "--target", "x/1", "-o", str(tmp_path / "s.bin")],
                 ["verify", str(fw), "--pubkey", str(tmp_path / "k.pub")],
                 ["primary", "-p", "loop://", "--flash", str(tmp_path / "d.flash"), "--provision", str(fw),
                  "--trust", str(tmp_path / "k.pub")]):
        r = CliRunner().invoke(main, args)
        assert isinstance(r.exception, SystemExit) and r.exit_code == 2, (args, r.output, r.exception)
        assert said in r.output and "Ed25519 keys only" in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "d.flash").exists() and not (tmp_path / "s.bin").exists()
