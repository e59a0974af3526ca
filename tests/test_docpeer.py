"""dualmcu against a peer written from its docs alone (tests/docpeer.py), in real processes.

Both of dualmcu's sides agreeing with each other proves little about the docs: these tests put
each side, as a user runs it, on a pty whose other end is the docs' peer, in both framings.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
import tty

import pytest

import docpeer
from support import tagged

TIMEOUT = 60


@pytest.fixture
def pty_pair():
    """A raw pty: the peer keeps the master, the dualmcu side opens the slave by its path. The
    test keeps the slave open too, so that the pair outlives the side's last close."""
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def side(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dualmcu", *map(str, args), "--once", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, list[dict], str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return proc.returncode, lines, err.decode()


@pytest.mark.slow
@pytest.mark.parametrize("framing,chunk", [("cobs", 1024), ("cobs", 65535), ("blynk", 1024)])
def test_docs_ncp_updates_the_dualmcu_primary(tmp_path, pty_pair, framing, chunk):
    master, path = pty_pair
    old, new = tagged("1.0.0", "TMPLDOC", 40_000), tagged("1.1.0", "TMPLDOC", 150_000)
    (tmp_path / "old.bin").write_bytes(old)
    proc = side("primary", "--port", path, "--framing", framing, "--flash", tmp_path / "f.flash",
                "--provision", tmp_path / "old.bin", "--flash-timing", "0,0,0",
                "--chunk-size", chunk)
    try:
        # The peer serves until the primary exits: it confirms the new image once its health
        # check (ping, version, setFirmwareInfo, initialize, getState) has passed.
        seen = docpeer.run_ncp(master, framing, new, "fw-1.1.0.bin", time.monotonic() + TIMEOUT,
                               done=lambda: proc.poll() is not None)
        code, events, err = finish(proc)
    finally:
        proc.kill()
    assert seen["offer"] is True and seen["finish"] is True, seen
    assert seen["reported"][0] == ("TMPLDOC", "1.0.0")
    assert seen["reported"][-1] == ("TMPLDOC", "1.1.0")
    assert seen["chunk_size"] == chunk
    limit = 1520 if framing == "blynk" else 65535
    assert seen["writes"] == -(-len(new) // min(chunk, limit))
    # The plain protocol: the primary asked for nothing but documented uids the peer serves.
    assert seen["unserved"] == [], [hex(u) for u in seen["unserved"]]
    assert code == 0, err[-2000:]
    confirmed = [e for e in events if e["event"] == "confirmed"]
    assert confirmed and confirmed[-1]["version"] == "1.1.0"


@pytest.mark.slow
@pytest.mark.parametrize("framing,chunk", [("cobs", 1024), ("cobs", 65535), ("blynk", 1024),
                                           ("blynk", 4096)])
def test_dualmcu_ncp_updates_the_docs_primary(tmp_path, pty_pair, framing, chunk):
    master, path = pty_pair
    new = tagged("2.0.0", "TMPLDOC", 150_000)
    (tmp_path / "fw.bin").write_bytes(new)
    proc = side("ncp", "--port", path, "--framing", framing, "--firmware", tmp_path / "fw.bin",
                "--store", tmp_path / "store")
    try:
        seen = docpeer.run_primary(master, framing, "TMPLDOC", "1.0.0", chunk,
                                   time.monotonic() + TIMEOUT)
        code, events, err = finish(proc)
    finally:
        proc.kill()
    assert seen["offer"] == {"filename": "fw.bin", "size": len(new), "fw_type": "TMPLDOC",
                             "version": "2.0.0", "build": docpeer.read_tag(new)["build"]}
    assert seen["good"] is True
    assert hashlib.sha256(bytes(seen["image"])).digest() == hashlib.sha256(new).digest()
    # A blynk frame carries at most 1520 bytes of chunk: a larger ask gets chunks of that size.
    assert seen["writes"] == -(-len(new) // min(chunk, 1520 if framing == "blynk" else 65535))
    assert seen["unserved"] == [] and not seen.get("cancelled")
    assert code == 0, err[-2000:]
    assert [e["outcome"] for e in events if e["event"] == "ota_outcome"] == ["success"]


def test_the_docs_peer_shares_no_code_with_dualmcu():
    """The peer stands for firmware written from the docs: it may import the standard library and
    the cobs codec the docs name, nothing of this project."""
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(docpeer.__file__).read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    assert names <= set(sys.stdlib_module_names) | {"__future__", "cobs"}, names
