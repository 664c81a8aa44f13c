"""Shared test helpers."""

from __future__ import annotations

import socket

import pytest


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
