"""Dockerfile.gb10: what can be checked in seconds, without a Docker engine.

The image is really built and run in tests/integration/docker/test_gb10_image.py (on a local
CPU vLLM image, and for arm64 under QEMU). These read the Dockerfile the way the builder
would: the build context is the repository root, every COPY source must exist there, the
install line must really install the package from the copied tree, py-spy is pinned to a
version with native aarch64 stacks, the entrypoint is the `repro` command and the
HEALTHCHECK asks repro, not vLLM's /health.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.gb10"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def copies(parsed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(source, destination path) of every COPY; a destination directory (`DIR/`) gets the source's name."""
    out = []
    for word, args in parsed:
        if word == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            *srcs, dest = parts
            out += [(s, dest + Path(s).name if dest.endswith("/") else dest) for s in srcs]
    return out


def test_base_image_is_the_image_where_the_stall_was_seen(parsed):
    args = [a for w, a in parsed if w == "ARG"]
    assert "BASE_IMAGE=vllm/vllm-openai:gemma4-0505-arm64-cu130" in args
    froms = [a for w, a in parsed if w == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    # The ARG must come before FROM to be usable in it.
    words = [w for w, _ in parsed]
    assert words.index("ARG") < words.index("FROM")


def test_every_copy_source_exists_in_the_build_context(parsed):
    pairs = copies(parsed)
    assert pairs, "the image must copy the package in"
    missing = [s for s, _ in pairs if not (ROOT / s).exists()]
    assert not missing, f"COPY sources missing from the repository: {missing}"


def test_no_copy_source_is_ignored_or_outside_the_context(parsed):
    for src, _ in copies(parsed):
        resolved = (ROOT / src).resolve()
        assert ROOT in resolved.parents or resolved == ROOT, src
        assert ".venv" not in Path(src).parts and "repro-runs" not in Path(src).parts


def _install_commands(parsed: list[tuple[str, str]]) -> list[str]:
    runs = [a for w, a in parsed if w == "RUN"]
    cmds = []
    for run in runs:
        cmds += re.findall(r"((?:uv pip install|python3 -m pip install)[^;&|]*)", run)
    return [c.strip() for c in cmds]


def test_both_install_branches_install_repro_and_py_spy(parsed):
    cmds = _install_commands(parsed)
    assert any(c.startswith("uv pip install") for c in cmds)
    assert any(c.startswith("python3 -m pip install") for c in cmds)
    dests = {d.rstrip("/") for s, d in copies(parsed) if s == "pyproject.toml" or s.startswith("pyproject")}
    assert dests, "pyproject.toml must be copied"
    pkg_dir = str(Path(next(iter(dests))).parent)
    for c in cmds:
        words = shlex.split(c)
        assert pkg_dir in words, f"{c!r} does not install the copied package at {pkg_dir}"
        # 0.4.2 is the first py-spy with native (--native) stacks on aarch64, the GB10's architecture
        assert "py-spy>=0.4.2" in words, f"{c!r} does not install py-spy >= 0.4.2"


def test_the_pip_install_line_installs_the_package_from_the_copied_tree(parsed, tmp_path):
    """Replay the COPY lines into a fake image root and run the Dockerfile's own pip line on it."""
    image = tmp_path / "image"
    for src, dest in copies(parsed):
        target = image / dest.lstrip("/")
        s = ROOT / src
        if s.is_dir():
            shutil.copytree(s, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, target)
    pip_line = next(c for c in _install_commands(parsed) if c.startswith("python3 -m pip install"))
    words = shlex.split(pip_line)[3:]  # after `python3 -m pip`
    # Paths point into the fake root; py-spy is already in this venv and nothing is fetched.
    words = [str(image / w.lstrip("/")) if w.startswith("/") else w for w in words if not w.startswith("py-spy")]
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", *words, "--no-deps", "--no-build-isolation", "--no-index",
           "--target", str(site), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (site / "repro" / "cli.py").is_file()
    assert (site / "repro" / "commands" / "watch.py").is_file()
    entry_points = next(site.glob("repro-*.dist-info")) / "entry_points.txt"
    text = entry_points.read_text()
    assert "repro = repro.cli:main" in text
    # The fault plugin must be registered in the image, or --inject does nothing there.
    assert "repro.vllm_plugins.fault:register" in text
    # The issue templates (repro/templates/ links to the top-level files) are in the installed package.
    for name in ("ISSUE_TEMPLATE.md", "ISSUE_TEMPLATE_STORAGE.md"):
        assert (site / "repro" / "templates" / name).read_text() == (ROOT / name).read_text(), name
    # The installed copy runs: `repro --version` from the target directory alone.
    r = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "import repro.cli; print(repro.cli.__file__)", str(site)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith(str(site))


def test_entrypoint_is_the_repro_command(parsed):
    entry = [a for w, a in parsed if w == "ENTRYPOINT"]
    assert entry == ['["repro"]']
    cmd = [a for w, a in parsed if w == "CMD"]
    assert len(cmd) == 1
    # The default command must be one repro accepts.
    args = __import__("json").loads(cmd[0])
    r = subprocess.run([sys.executable, "-m", "repro", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_documented_docker_run_line_has_the_flags_vllm_and_py_spy_need():
    text = DOCKERFILE.read_text()
    comment = "\n".join(line[1:] for line in text.splitlines() if line.startswith("#"))
    assert "docker run" in comment
    for flag in ("--gpus all", "--ipc=host", "--cap-add SYS_PTRACE"):
        assert flag in comment, flag
    volumes = re.findall(r"-v\s+(\S+)", comment)
    dests = {v.split(":")[1] for v in volumes if ":" in v}
    assert {"/models", "/hidden-states", "/bundles"} <= dests, volumes


def test_the_documented_watch_command_parses_with_repro_watch():
    """The `watch ...` arguments in the documented docker run line are ones `repro watch` accepts."""
    from repro.commands.watch import command

    text = DOCKERFILE.read_text()
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("watch "))
    joined = ""
    for line in lines[start:]:
        joined += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            break
    args = shlex.split(joined)[1:]
    ctx = command.make_context("watch", args)
    assert ctx.params["serve"] is True
    assert ctx.params["port"] == 8000
    assert ctx.params["metrics_port"] == 9400
    assert ctx.params["metrics_host"] == "0.0.0.0"  # reachable through -p 9400:9400
    assert ctx.params["vllm_args"] == ("--max-num-seqs", "32")


def test_the_healthcheck_asks_repro_about_the_engine_with_the_state_file_watch_writes(parsed):
    """HEALTHCHECK runs `repro health`, which reads the file `repro watch` keeps (ENV REPRO_WATCH_STATE_FILE for
    both): not vLLM's /health, which answers 200 while the engine is stalled."""
    checks = [a for w, a in parsed if w == "HEALTHCHECK"]
    assert len(checks) == 1
    assert checks[0].endswith('CMD ["repro", "health"]'), checks[0]
    assert "/health" not in checks[0] and "curl" not in checks[0]
    env = " ".join(a for w, a in parsed if w == "ENV")
    assert "REPRO_WATCH_STATE_FILE=" in env
    from repro.commands.health import command as health
    from repro.commands.watch import command as watch

    for cmd in (health, watch):
        opt = next(p for p in cmd.params if p.name == "state_file")
        assert opt.envvar == "REPRO_WATCH_STATE_FILE", cmd.name
