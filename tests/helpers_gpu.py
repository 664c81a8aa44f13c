"""A stand-in `nvidia-smi` for tests: put it first on PATH with `fake_smi(dir, ...)`.

It answers the queries repro makes (``--query-gpu``, ``--query-compute-apps``, ``-q``) from the files
it is given, like an H200 with a kernel that never ends (100% utilization) unless told otherwise; the
pids holding GPU memory (70000 MiB each) come from a file, and only those still alive are listed (the
driver frees a process's memory when it is gone).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

SCRIPT = '''#!{python}
import sys
from pathlib import Path
here = Path({here!r})
args = " ".join(sys.argv[1:])
if "--query-gpu" in args:
    print((here / "gpus.csv").read_text(), end="")
elif "--query-compute-apps" in args:
    def alive(pid):  # like the driver: a process's memory is freed when it is gone
        try:
            return Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    pids = [p for p in ((here / "pids").read_text().split() if (here / "pids").exists() else []) if alive(p)]
    fields = next(a for a in sys.argv if a.startswith("--query-compute-apps=")).split("=", 1)[1].split(",")
    for pid in pids:
        row = {{"pid": pid, "gpu_uuid": "GPU-5a5f1d2c-0000-1111-2222-333344445555", "used_memory": "70000"}}
        print(", ".join(row[f] for f in fields))
elif args == "-q":
    print("==============NVSMI LOG==============\\nAttached GPUs : 1")
else:
    sys.exit(6)
'''

H200_BUSY = "0, NVIDIA H200, GPU-5a5f1d2c-0000-1111-2222-333344445555, 100, 72000, 143771, 125.30, 40\n"


def fake_smi(where: Path, gpus_csv: str = H200_BUSY, pids: list[int] | None = None) -> Path:
    """Write the fake into `where` (returned: prepend it to PATH)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "gpus.csv").write_text(gpus_csv)
    set_gpu_pids(where, pids or [])
    exe = where / "nvidia-smi"
    exe.write_text(SCRIPT.format(python=sys.executable, here=str(where)))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return where


def set_gpu_pids(where: Path, pids: list[int]) -> None:
    (where / "pids").write_text(" ".join(map(str, pids)) + "\n")


@pytest.fixture
def smi_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """make(gpus_csv=H200_BUSY, pids=[]) -> the fake's directory, first on PATH for this test."""

    def make(gpus_csv: str = H200_BUSY, pids: list[int] | None = None) -> Path:
        d = fake_smi(tmp_path / "fake-smi", gpus_csv, pids)
        monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
        return d

    return make
