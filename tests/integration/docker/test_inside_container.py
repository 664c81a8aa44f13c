"""repro inside the container, the way Dockerfile.gb10 runs it: `repro watch --serve` launches vLLM there.

Two containers of the image run the same stalled server side by side, one started without
`--cap-add SYS_PTRACE` and one with it, both under a seccomp profile that keeps ptrace and
process_vm_readv behind that capability (Docker's default did before 19.03; hardened and
Kubernetes profiles do). Without the capability the kernel refuses py-spy: the bundle's
errors.txt carries the ptrace help text and the rest of the bundle is still written. With it, the
bundle has the stacks of the injected stall.

(Docker's current default profile lets these syscalls through on kernels >= 4.8, and without Yama
a tracer needs no capability for the processes it launched: there `watch --serve` gets stacks even
without the capability. It still needs it for `docker exec ... py-spy` or `repro capture --pid`
under ptrace_scope 1, for anything under ptrace_scope 2, and under profiles like this one.)

The image's HEALTHCHECK (`repro health`, run every second here) follows repro's view: healthy
while the engine serves, unhealthy once it is stalled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from repro.errors import EXIT_STALL
from repro.server import tinymodel
from repro.bundle.reader import bundle_processes
from tests.conftest import free_port
from tests.helpers_docker import GB10_CPU, PREFIX, docker, inspect, logs, remove


@dataclass
class Run:
    name: str
    out: Path  # mounted at /bundles
    exit_code: int | None = None
    health: list[str] = field(default_factory=list)  # the health statuses seen, in order, without repeats
    health_log: list[str] = field(default_factory=list)

    @property
    def bundle(self) -> Path:
        return self.out / "run" / "bundle-001"


# ptrace and cross-process memory reads only with CAP_SYS_PTRACE; everything else allowed.
PTRACE_NEEDS_THE_CAPABILITY = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["ptrace", "process_vm_readv", "process_vm_writev"], "action": "SCMP_ACT_ERRNO",
                  "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_PTRACE"]}}],
}


def start(name: str, out: Path, ptrace: bool) -> Run:
    model = tinymodel.ensure()
    out.mkdir(parents=True)
    profile = out.parent / "seccomp-ptrace-needs-cap.json"
    profile.write_text(json.dumps(PTRACE_NEEDS_THE_CAPABILITY))
    docker("run", "-d", "--name", name, "--network", "host", "--shm-size", "1g",
           "--security-opt", f"seccomp={profile}", *(["--cap-add", "SYS_PTRACE"] if ptrace else []),
           "--health-interval", "1s", "--health-timeout", "20s", "--health-retries", "1", "--health-start-period", "0s",
           "-v", f"{model}:/models/tiny:ro", "-v", f"{out}:/bundles", GB10_CPU,
           "watch", "--serve", "--model", "/models/tiny", "--port", str(free_port()), "--inject", "stall-after=5",
           "--probe", "--probe-interval", "1", "--probe-timeout", "10", "--window", "8", "--min-bad", "2",
           "--startup-grace", "0", "--capture-samples", "2", "--capture-interval", "1", "--no-collect-env",
           "--max-restarts", "0", "--out", "/bundles/run")
    return Run(name, out)


@pytest.fixture(scope="module")
def runs(docker_images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Both containers, each until its watch gives up after the first stall (--max-restarts 0)."""
    tmp = tmp_path_factory.mktemp("inside")
    out: dict[str, Run] = {}
    try:
        for key, ptrace in (("no-ptrace", False), ("ptrace", True)):
            out[key] = start(f"{PREFIX}-inside-{key}", tmp / key, ptrace)
        deadline = time.monotonic() + 600
        while any(r.exit_code is None for r in out.values()):
            assert time.monotonic() < deadline, {k: logs(r.name) for k, r in out.items()}
            for r in out.values():
                if r.exit_code is not None:
                    continue
                st = inspect(r.name)["State"]
                h = (st.get("Health") or {})
                if h.get("Status") and (not r.health or r.health[-1] != h["Status"]):
                    r.health.append(h["Status"])
                r.health_log = [e.get("Output", "").strip() for e in h.get("Log") or []] or r.health_log
                if not st["Running"]:
                    r.exit_code = st["ExitCode"]
            time.sleep(0.5)
        yield out
    finally:
        for r in out.values():
            remove(r.name)


def test_without_sys_ptrace_errors_txt_has_the_ptrace_help_and_the_rest_is_written(runs: dict[str, Run]) -> None:
    r = runs["no-ptrace"]
    assert r.exit_code == EXIT_STALL, logs(r.name)
    b = r.bundle
    errors = (b / "errors.txt").read_text()
    assert "ptrace refused" in errors, errors
    assert "--cap-add SYS_PTRACE" in errors and "The rest of the bundle" in errors  # the help text
    for rel in ("manifest.json", "processes.json", "analysis.json", "summary.md", "context/metrics-before.txt",
                "context/metrics-after.txt", "context/server.log.tail", "context/server-env.json",
                "context/detection.json"):
        assert (b / rel).is_file(), rel
    labels = {p["label"] for p in bundle_processes(b)}
    assert {"EngineCore", "Worker"} <= labels
    assert (b.parent / "bundle-001.tar.gz").is_file()
    # the pause was refused, reading was not: the stacks were taken without pausing, with no native frames
    manifest = json.loads((b / "manifest.json").read_text())
    blocking = [c for c in manifest["collectors"] if c["name"].startswith("py-spy json ")]
    unpaused = [c for c in manifest["collectors"] if c["name"].startswith("py-spy json-nonblocking ")]
    assert blocking and all(c["error"] for c in blocking), blocking[:2]
    assert unpaused and not [c for c in unpaused if c["error"]], unpaused[:2]
    engine = json.loads(next(b.glob("stacks/EngineCore-*/sample-0.json")).read_text())
    assert engine["mode"] == "json-nonblocking" and engine["threads"]
    assert "read without pausing the process" in errors


def test_with_sys_ptrace_the_bundle_has_the_stacks_of_the_stall(runs: dict[str, Run]) -> None:
    r = runs["ptrace"]
    assert r.exit_code == EXIT_STALL, logs(r.name)
    errors = (r.bundle / "errors.txt").read_text() if (r.bundle / "errors.txt").exists() else ""
    assert "ptrace" not in errors, errors
    v = json.loads((r.bundle / "analysis.json").read_text())
    assert v["stuck_process"] == "EngineCore" and v["verdict"] == "blocked", v
    assert v["stuck_frame"].startswith("repro_injected_scheduler_stall ("), v["stuck_frame"]


def test_the_healthcheck_follows_repros_view_not_vllms_health(runs: dict[str, Run]) -> None:
    """vLLM's /health stays 200 through the stall; `repro health` turns the container unhealthy."""
    r = runs["ptrace"]
    assert "healthy" in r.health and "unhealthy" in r.health[r.health.index("healthy"):], r.health
    assert any(line.startswith("unhealthy: ") and ("stalled" in line or "gave-up" in line)
               for line in r.health_log), r.health_log
