"""Dockerfile.gb10 built for real: on a local CPU vLLM image, and for arm64 (the GB10's architecture) under QEMU.

`scripts/docker_test_image.sh` runs `docker build -f Dockerfile.gb10 --build-arg BASE_IMAGE=...` exactly as
the Dockerfile's header says. The arm64 variant is built `--platform linux/arm64` on a Debian arm64 base
(debootstrap --foreign, second stage under qemu-user-static) and runs under binfmt_misc; it takes minutes,
so it runs when REPRO_DOCKER_ARM64=1 (set by .ci/run) and is skipped otherwise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from repro import __version__
from tests.helpers_docker import GB10_ARM64, GB10_CPU, ROOT, build_images, docker, require_docker


def test_the_image_runs_repro_version_and_watch_help(docker_images: None) -> None:
    r = docker("run", "--rm", "--no-healthcheck", GB10_CPU, "--version")
    assert r.stdout.strip() == f"repro, version {__version__}"
    r = docker("run", "--rm", GB10_CPU, "watch", "--help")
    assert "--serve" in r.stdout and "--docker NAME" in r.stdout and "--state-file" in r.stdout
    assert docker("run", "--rm", GB10_CPU, "--help").stdout.count("health") >= 1


def test_the_image_has_vllm_py_spy_and_a_healthcheck_of_repros_own(docker_images: None) -> None:
    r = docker("run", "--rm", "--entrypoint", "py-spy", GB10_CPU, "--version")
    major, minor, patch = (int(x) for x in re.findall(r"\d+", r.stdout)[:3])
    assert (major, minor, patch) >= (0, 4, 2), r.stdout
    cfg = docker("image", "inspect", "--format", "{{json .Config}}", GB10_CPU).stdout
    import json

    config = json.loads(cfg)
    assert config["Healthcheck"]["Test"] == ["CMD", "repro", "health"]
    assert "REPRO_WATCH_STATE_FILE=/tmp/repro-watch-state.json" in config["Env"]
    assert config["Entrypoint"] == ["repro"]
    # without a watch running, the probe says why it is unhealthy, in one line
    r = docker("run", "--rm", GB10_CPU, "health", check=False)
    assert r.returncode == 1 and r.stdout.startswith("unhealthy: no repro watch state at /tmp/repro-watch-state.json")


def test_the_image_renders_issue_md_from_a_bundle_with_its_packaged_template(docker_images: None,
                                                                            tmp_path: Path) -> None:
    """The templates repro/templates/ links to travel into the image (no checkout there to fall back on)."""
    tmp_path.chmod(0o777)
    docker("run", "--rm", "--no-healthcheck", "-v", f"{ROOT / 'traces'}:/traces:ro", "-v", f"{tmp_path}:/out",
           GB10_CPU, "issue", "/traces/scheduler-stall", "--out", "/out/ISSUE.md")
    text = (tmp_path / "ISSUE.md").read_text()
    assert text.startswith("# [Bug]: EngineCore stops making progress") and "Your current environment" in text


@pytest.fixture(scope="module")
def arm64_image() -> None:
    if os.environ.get("REPRO_DOCKER_ARM64") != "1":
        pytest.skip("the arm64 build under QEMU takes minutes: set REPRO_DOCKER_ARM64=1 (.ci/run does)")
    require_docker()
    build_images("arm64")


def test_the_arm64_image_runs_repro_and_py_spy_under_qemu(arm64_image: None) -> None:
    arch = docker("image", "inspect", "--format", "{{.Architecture}}", GB10_ARM64).stdout.strip()
    assert arch == "arm64"
    r = docker("run", "--rm", "--platform", "linux/arm64", "--entrypoint", "uname", GB10_ARM64, "-m")
    assert r.stdout.strip() == "aarch64"
    r = docker("run", "--rm", "--platform", "linux/arm64", GB10_ARM64, "--version", timeout=300)
    assert r.stdout.strip() == f"repro, version {__version__}"
    r = docker("run", "--rm", "--platform", "linux/arm64", "--entrypoint", "py-spy", GB10_ARM64, "--version")
    assert tuple(int(x) for x in re.findall(r"\d+", r.stdout)[:3]) >= (0, 4, 2), r.stdout
    r = docker("run", "--rm", "--platform", "linux/arm64", "--entrypoint", "sh", GB10_ARM64, "-c",
               "file=$(command -v py-spy); od -An -tx1 -j18 -N2 \"$file\"")
    assert r.stdout.split() == ["b7", "00"], r.stdout  # ELF e_machine 0xb7: an aarch64 binary


def test_the_arm64_image_analyzes_a_trace_bundle(arm64_image: None) -> None:
    traces = ROOT / "traces"
    r = docker("run", "--rm", "--platform", "linux/arm64", "-v", f"{traces}:/traces:ro", GB10_ARM64,
               "analyze", "/traces/scheduler-stall", timeout=600)
    expected = _host_analysis(traces / "scheduler-stall")
    assert r.stdout == expected, (r.stdout, expected)


def _host_analysis(bundle: Path) -> str:
    """The same command on this host (x86-64): the arm64 image must say exactly the same."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "repro", "analyze", str(bundle)], capture_output=True, text=True,
                       timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    return r.stdout.replace(str(bundle), "/traces/scheduler-stall")
