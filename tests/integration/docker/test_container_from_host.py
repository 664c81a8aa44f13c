"""stress and capture run on the host against a CPU vLLM in a real container.

The container is the Dockerfile.gb10 image on the host network; the fault plugin inside it stalls
the real scheduler. From the host, repro follows `docker logs -f`, finds the container's
EngineCore and Worker by their host pids (below `docker inspect`'s State.Pid), dumps them with
the host's py-spy inside the container's namespaces (native frames included), reads their
per-thread CPU time from the host's /proc, and records which container and image it was, its
`docker inspect` (redacted) and its log.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from repro.bundle.reader import bundle_processes, unpack
from tests.helpers_docker import GB10_CPU, ROOT, VllmContainer, complete, events
from tests.integration.docker.conftest import SECRET_ENV

NATIVE_FRAME = re.compile(r"\((?:lib[^)]*\.so[^)]*|ld-linux[^)]*)\)")  # e.g. `clock_nanosleep (libc.so.6)`


def repro(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "repro", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, stdin=subprocess.DEVNULL)


class Stalled:
    """An injected scheduler stall in the container, with one request in flight so the scheduler runs;
    entered once the plugin reports the stall."""

    def __init__(self, c: VllmContainer) -> None:
        self.c = c

    def stalls(self) -> int:
        return sum(1 for e in events(self.c.run_dir / "injected.jsonl") if e.get("event") == "stall")

    def __enter__(self) -> "Stalled":
        before = self.stalls()
        self.c.inject("stall-after=0")
        self.thread = threading.Thread(target=complete, args=(self.c.url, 300), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while self.stalls() <= before:
            assert time.monotonic() < deadline, "the injected stall did not happen in the container"
            time.sleep(0.3)
        time.sleep(1.0)  # settle inside the stall
        return self

    def __exit__(self, *exc: object) -> None:
        self.c.release()
        self.thread.join(60)


def samples(bundle: Path, label: str) -> list[dict[str, Any]]:
    d = next(bundle.glob(f"stacks/{label}-*"))
    return [json.loads(p.read_text()) for p in sorted(d.glob("sample-*.json"))]


@pytest.fixture(scope="module")
def captured(vllm_container: VllmContainer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`repro capture --docker NAME --url URL` of the stalled container, from the host (collect-env on)."""
    out = tmp_path_factory.mktemp("docker-capture") / "bundle"
    with Stalled(vllm_container):
        r = repro("capture", "--docker", vllm_container.name, "--url", vllm_container.url, "--samples", "3",
                  "--interval", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    yield out


def test_capture_finds_the_containers_engine_and_worker_by_host_pid(captured: Path,
                                                                    vllm_container: VllmContainer) -> None:
    procs = {p["label"]: p for p in bundle_processes(captured)}
    assert {"EngineCore", "Worker", "APIServer"} <= set(procs)
    inside = vllm_container.processes()  # host pids of the container's processes, from its init
    for label in ("EngineCore", "Worker", "APIServer"):
        assert procs[label]["pid"] in inside, (label, procs[label], inside)
    v = json.loads((captured / "analysis.json").read_text())
    assert v["stuck_process"] == "EngineCore" and v["verdict"] == "blocked", v
    assert v["stuck_frame"].startswith("repro_injected_scheduler_stall ("), v["stuck_frame"]


def test_native_frames_come_out_for_every_process_of_the_container(captured: Path) -> None:
    manifest = json.loads((captured / "manifest.json").read_text())
    native = [c for c in manifest["collectors"] if c["name"].startswith("py-spy native")]
    assert native, "no --native dump was taken"
    assert not [c for c in native if c["error"]], [c["error"] for c in native if c["error"]]
    # the host's py-spy ran inside the container's namespaces, with the pid the container knows
    assert all(c["command"][:2] == ["nsenter", "--target"] for c in native), native[0]["command"]
    for label in ("EngineCore", "Worker"):
        d = next(captured.glob(f"stacks/{label}-*"))
        texts = [p.read_text() for p in sorted(d.glob("sample-*.native.txt"))]
        assert texts and all(NATIVE_FRAME.search(t) for t in texts), (label, texts[0][:2000])
    errors = (captured / "errors.txt").read_text() if (captured / "errors.txt").exists() else ""
    assert "native" not in errors, errors


def test_every_python_thread_has_cpu_time_from_the_hosts_proc(captured: Path) -> None:
    """py-spy names threads by their tid inside the container; /proc on the host is keyed the same way."""
    for label in ("EngineCore", "Worker"):
        for s in samples(captured, label):
            assert s.get("threads"), (label, s.get("error"))
            pf = s["procfs"]
            assert pf["ns_pid"] != s["pid"]  # the container's own pid for it differs from the host's
            tids = {str(t["os_thread_id"]) for t in s["threads"]}
            assert tids <= set(pf["threads"]), (label, tids, sorted(pf["threads"]))
            assert all("host_tid" in pf["threads"][t] for t in tids)
    v = json.loads((captured / "analysis.json").read_text())
    engine = next(p for p in v["processes"] if p["label"] == "EngineCore")
    main = next(t for t in engine["threads"] if t["main"])
    assert main["cpu_seconds"] is not None and main["window_seconds"], main


def test_the_bundle_says_which_container_and_image_with_its_inspect_and_log(captured: Path,
                                                                           vllm_container: VllmContainer) -> None:
    manifest = json.loads((captured / "manifest.json").read_text())
    c = manifest["target"]["container"]
    assert c["name"] == vllm_container.name and c["image"] == GB10_CPU and len(c["id"]) == 12
    inspect = json.loads((captured / "context/docker-inspect.json").read_text())
    assert inspect["Id"].startswith(c["id"]) and inspect["Config"]["Image"] == GB10_CPU
    env = dict(e.split("=", 1) for e in inspect["Config"]["Env"])
    for name, value in SECRET_ENV.items():  # masked by the bundle's redactor (its exact mask is its own business)
        assert "REDACTED" in env[name] and value not in env[name], (name, env[name])
    log = (captured / "context/server.log.tail").read_text()
    assert "repro fault:" in log and "EngineCore" in log  # the container's own log (`docker logs`)
    logs = next(x for x in manifest["collectors"] if x["name"] == "server log tail")
    assert logs["command"][:2] == ["docker", "logs"]


def test_collect_env_ran_inside_the_container(captured: Path) -> None:
    """The container's Python (Debian's 3.11.2 in /opt/venv), not the host's."""
    text = (captured / "context/collect-env.txt").read_text()
    assert "vLLM Version" in text and "3.11.2" in text, text[:3000]
    manifest = json.loads((captured / "manifest.json").read_text())
    ce = next(x for x in manifest["collectors"] if x["name"] == "collect-env")
    assert ce["command"][1:3] == ["--target", str(manifest["target"]["root_pid"])]
    assert "/opt/venv/bin/python3" in ce["command"]


def test_no_secret_of_the_container_is_in_the_tarball(captured: Path, tmp_path: Path) -> None:
    tarball = captured.parent / f"{captured.name}.tar.gz"
    d = unpack(tarball, tmp_path)
    files = [p for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "docker-inspect.json" for p in files)
    for p in files:
        data = p.read_bytes()
        for secret in SECRET_ENV.values():
            assert secret.encode() not in data, f"{secret} leaked into {p.relative_to(d)}"


def test_stress_follows_docker_logs_and_detects_the_injected_stall(vllm_container: VllmContainer,
                                                                   tmp_path: Path) -> None:
    """`repro stress --docker NAME --url URL`: the stats lines come from `docker logs -f`; the stall is
    detected and captured from the host."""
    out = tmp_path / "stress"
    vllm_container.inject("stall-after=4")
    try:
        r = repro("stress", "--url", vllm_container.url, "--docker", vllm_container.name, "--concurrency", "4",
                  "--duration", "180s", "--prompt-len", "16-64", "--window", "20", "--min-bad", "2",
                  "--startup-grace", "0", "--samples", "2", "--sample-interval", "1", "--out", str(out))
    finally:
        vllm_container.release()
    assert r.returncode == 1, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stall"]["class"] == "engine-stall", summary["stall"]
    detection = json.loads((out / "bundle-001" / "context" / "detection.json").read_text())
    ev = detection["evidence"]
    # the stats lines (and their silence since the stall) were read from the container's log, nowhere else
    assert ev["last_stats_line"] is not None and ev["log_silent_for"] is not None, ev
    analysis = json.loads((out / "bundle-001" / "analysis.json").read_text())
    assert analysis["stuck_process"] == "EngineCore" and analysis["verdict"] == "blocked", analysis
    manifest = json.loads((out / "bundle-001" / "manifest.json").read_text())
    assert manifest["target"]["container"]["name"] == vllm_container.name
