"""The GPU check's steps (marker ``gpu``): skipped unless asked for (REPRO_GPU=1, or ``-m gpu``).

They run against servers that ``scripts/gpu_check.sh start`` launched (see tests/gpu/harness.py);
``REPRO_GPU_CHECK_STATE`` names its state file. Fixtures:

``ctx``         the :class:`~tests.gpu.harness.Context` (version, profile, servers, work directory)
``gpu_server``  ``gpu_server("main")`` -> the server's record (url, model, log, storage, control, ...);
                fails the step at once when that server did not start
``step``        figures and tables for results.json / results.md, and artifacts for the tarball
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.gpu.harness import Context, step_file


def _asked(config: pytest.Config) -> bool:
    expr = str(config.getoption("-m") or "")
    return os.environ.get("REPRO_GPU") == "1" or (re.search(r"\bgpu\b", expr) is not None and "not gpu" not in expr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    if _asked(config):
        return
    skip = pytest.mark.skip(reason="GPU check: run scripts/gpu_check.sh (or REPRO_GPU=1 after gpu_check.sh start)")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ctx() -> Context:
    path = os.environ.get("REPRO_GPU_CHECK_STATE")
    if not path or not Path(path).is_file():
        pytest.fail("no GPU check state: run `scripts/gpu_check.sh start LABEL` first (REPRO_GPU_CHECK_STATE unset "
                    "or missing)")
    return Context.load(Path(path))


@pytest.fixture
def gpu_server(ctx: Context) -> Callable[[str], dict[str, Any]]:
    def get(name: str) -> dict[str, Any]:
        rec = ctx.servers.get(name)
        if rec is None:
            pytest.skip(f"server {name!r} is not started for vLLM {ctx.vllm_version} ({ctx.label})")
        if rec.get("status") != "ready":
            pytest.fail(f"server {name!r} did not start: {rec.get('status')}: {rec.get('error')} (log {rec.get('log')})")
        return rec

    return get


class StepRecord:
    """What one step reports: `put(k=v)` figures, `row(table, ...)` table rows, `artifact(path)` files to keep."""

    def __init__(self, ctx: Context, lane: str, name: str) -> None:
        self.ctx, self.lane, self.name = ctx, lane, name
        self.figures: dict[str, Any] = {}
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def put(self, **kv: Any) -> None:
        self.figures.update(kv)
        self.save()

    def row(self, table: str, **kv: Any) -> None:
        self.tables.setdefault(table, []).append(kv)
        self.save()

    def artifact(self, src: Path, name: str | None = None) -> Path | None:
        """Copy a file or directory into the artifacts of this lane (what the tarball carries)."""
        src = Path(src)
        if not src.exists():
            return None
        dst = self.ctx.artifacts / self.lane / (name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
        return dst

    def save(self) -> None:
        p = step_file(self.ctx, self.lane, self.name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"figures": self.figures, "tables": self.tables}, indent=2, default=str) + "\n")


@pytest.fixture
def step(ctx: Context, request: pytest.FixtureRequest) -> Iterator[StepRecord]:
    lane = Path(str(request.node.fspath)).stem[len("test_"):]
    rec = StepRecord(ctx, lane, request.node.name)
    yield rec
    rec.save()
