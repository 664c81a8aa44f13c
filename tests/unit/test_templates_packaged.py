"""The issue templates travel with the package: a wheel install (no checkout) still renders ISSUE.md."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


NAMES = ["ISSUE_TEMPLATE.md", "ISSUE_TEMPLATE_STORAGE.md", "ISSUE_TEMPLATE_DEATH.md", "ISSUE_TEMPLATE_CLEAN.md"]


@pytest.mark.parametrize("name", NAMES)
def test_packaged_template_is_the_top_level_one(name: str) -> None:
    assert (ROOT / "repro" / "templates" / name).read_text() == (ROOT / name).read_text()


def test_wheel_carries_every_template(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("repro-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in NAMES:
        data = zipfile.ZipFile(wheel).read(f"repro/templates/{name}").decode()
        assert data == (ROOT / name).read_text(), name
    assert "repro/templates/ISSUE_TEMPLATE.md" in names
    shipped = sorted(f"repro/known/{p.name}" for p in (ROOT / "repro" / "known").glob("*.toml"))
    assert shipped and set(shipped) <= set(names)  # the known-hang catalogue travels with the package
