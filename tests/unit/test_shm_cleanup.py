"""Stopping a server unlinks the /dev/shm/psm_* segments its processes mapped, and nothing a live process maps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from repro.server import shm

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir() or not Path("/proc/self/maps").exists(),
                                reason="needs Linux /dev/shm and /proc")

HOLDER = """
import mmap, sys, time
f = open(sys.argv[1], "r+b")
m = mmap.mmap(f.fileno(), 4096)
f.close()
print("mapped", flush=True)
time.sleep(600)
"""


def _segment() -> str:
    path = f"/dev/shm/psm_repro_test_{uuid.uuid4().hex[:8]}"
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    return path


def _holder(path: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "mapped"
    return p


def test_segments_of_a_killed_group_are_unlinked() -> None:
    path = _segment()
    holder = _holder(path)
    try:
        found = shm.segments([holder.pid])
        assert path in found
        assert shm.remove_unused(found) == []  # still mapped by a live process: kept
        assert os.path.exists(path)
        holder.kill()
        holder.wait(10)
        assert shm.remove_unused(found) == [path]
        assert not os.path.exists(path)
    finally:
        holder.kill()
        if os.path.exists(path):
            os.unlink(path)


def test_a_segment_another_live_process_maps_is_kept() -> None:
    """Two processes map one segment; only the first one is stopped: the segment stays."""
    path = _segment()
    a, b = _holder(path), _holder(path)
    try:
        found = shm.segments([a.pid])
        a.kill()
        a.wait(10)
        time.sleep(0.1)
        assert shm.remove_unused(found) == [] and os.path.exists(path)
    finally:
        for p in (a, b):
            p.kill()
            p.wait(10)
        os.unlink(path)


def test_nothing_outside_psm_names_is_ever_removed(tmp_path: Path) -> None:
    other = Path(f"/dev/shm/repro-test-not-psm-{uuid.uuid4().hex[:8]}")
    other.write_bytes(b"x")
    try:
        assert shm.remove_unused([str(other), str(tmp_path / "psm_x")]) == []
        assert other.exists()
    finally:
        other.unlink()
