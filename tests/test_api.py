"""The public API as a user calls it: both emulated sides and a link between them, each a
process, driven from Python; and a whole update on the virtual clock."""

import pytest

from dualmcu import Link, Misbehave, Ncp, Primary, flash_state, make_image, make_package, simulate


@pytest.mark.slow
def test_both_emulated_sides_update_over_a_link_from_python(tmp_path):
    factory = make_image("1.0.0", "TMPLAPI", tmp_path / "factory.bin", 48 * 1024)
    new = make_image("1.1.0", "TMPLAPI", tmp_path / "new.bin", 64 * 1024)
    delta = make_package(new, factory, tmp_path / "delta.pkg", "lzma")
    with Link(pace=False) as link, \
            Primary(link.b, tmp_path / "dev.flash", factory, framing="cobs") as mcu, \
            Ncp(link.a, [new, delta], framing="cobs") as ncp:
        outcome, device = ncp.outcome(timeout=60), mcu.outcome(timeout=60)
        state = mcu.flash_state()
    assert (outcome.verdict, outcome.version, device.verdict) == ("confirmed", "1.1.0", "confirmed"), outcome
    # The release's delta went to a primary running its base (random test images do not
    # compress, so it is no smaller here).
    assert [e["file_kind"] for e in outcome.events if e["event"] == "ota_offer"] == ["delta"]
    assert state["slots"]["B"]["version"] == "1.1.0" and state["confirmed"]
    assert flash_state(tmp_path / "dev.flash") == state
    assert link.stats()["a_to_b"] > outcome.bytes_sent


def test_a_whole_update_on_the_virtual_clock_with_the_cloud_lying():
    old = make_image("1.0.0", "TMPLAPI").read_bytes()
    new = make_image("1.1.0", "TMPLAPI").read_bytes()
    assert simulate(new, old).verdict == "confirmed"
    lied = simulate(new, old, misbehave=Misbehave(corrupt_chunk_at=0))
    assert (lied.verdict, lied.retries, lied.misbehaved) == ("confirmed", 1, ("corrupt_chunk",))
    assert simulate(new, old, misbehave=Misbehave(offer_version="0.1.0")).verdict == "refused"
