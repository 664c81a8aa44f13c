"""repro.load.loop: asyncio.run on uvloop, without asyncio.Runner (Python 3.10)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from repro.load import loop


def test_run_returns_the_coroutine_result_on_uvloop_when_installed() -> None:
    """The coroutine runs to its result, on uvloop's loop when uvloop is importable."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[int, str]:
        return 42, type(asyncio.get_running_loop()).__module__

    value, module = loop.run(main())
    assert value == 42 and module.startswith(uvloop.__name__)


def test_run_cancels_leftover_tasks_and_closes_the_loop() -> None:
    """Tasks still pending when the coroutine returns are cancelled, and the loop is closed after."""
    seen: dict[str, object] = {}

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise

    async def main() -> None:
        seen["loop"] = asyncio.get_running_loop()
        asyncio.ensure_future(forever())
        await asyncio.sleep(0)

    loop.run(main(), loop_factory=asyncio.new_event_loop)
    assert seen["cancelled"] is True
    assert seen["loop"].is_closed()  # type: ignore[attr-defined]


def test_run_propagates_the_coroutine_exception() -> None:
    """An exception raised by the coroutine reaches the caller unchanged."""
    async def main() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        loop.run(main(), loop_factory=asyncio.new_event_loop)


def test_no_module_uses_asyncio_runner() -> None:
    """asyncio.Runner is Python 3.11+: the kit (requires-python >= 3.10) does not use it."""
    root = Path(loop.__file__).resolve().parents[1]
    users = [str(p.relative_to(root)) for p in root.rglob("*.py")
             if any(isinstance(n, ast.Attribute) and n.attr == "Runner" and isinstance(n.value, ast.Name)
                    and n.value.id == "asyncio" for n in ast.walk(ast.parse(p.read_text())))]
    assert users == []
