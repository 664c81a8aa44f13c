"""hs-connectors' FP8HiddenStatesConnector on a GPU vLLM (0.26.0): the stock connector's async path with FP8 files.

Runs alone (it starts its own server through the kit's launcher) or inside the GPU check. Needs, in the
Python that runs vLLM: vLLM with CUDA, hs-connectors 0.9.0 installed in the same ``--target`` as vLLM (vLLM
imports ``hs_connectors.fp8_hidden_states_connector`` in EngineCore), the kit (``pip wheel --no-deps .``
into that target too, or on PYTHONPATH), py-spy not needed. Asked for with ``REPRO_GPU=1``; the server's
command can be given as ``REPRO_GPU_VLLM_CMD`` (e.g. ``python -m vllm.entrypoints.cli.main serve``);
figures go to ``$REPRO_GPU_OUT/fp8-connector.json`` when that is set.

    PYTHONPATH=/tmp/site-0.26.0 PATH=/tmp/site-0.26.0/bin:$PATH REPRO_GPU=1 \
        python -m pytest tests/gpu/test_fp8_connector.py -q -p no:cacheprovider

Contracts: the server starts with ``--connector fp8`` (kv_connector FP8HiddenStatesConnector from
hs_connectors.fp8_hidden_states_connector, ``--no-enable-chunked-prefill`` as the stock connector needs from
0.22 on); under 32 concurrent requests every file is verified as that connector's format (F8_E4M3 hidden
states with per-token amax scales, float32 ``[T, 1, 1]``, token ids equal to the prompt) and holds about half
the bytes a bf16 file would; under client timeouts short enough to abort requests after the engine took them,
the files of aborted requests are counted as orphans exactly as for the stock connector (claimed vs unclaimed
files in the store, written after the abort), and those orphans are FP8 files too.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from repro.hsfiles import hsfile
from repro.load.runner import run_stress
from repro.scenario import DetectSettings, LoadSettings, Scenario, ServerSettings
from repro.server.launcher import VllmServer, has_gpu
from tests.conftest import free_port

# Client timeout of the abort storm: long enough for the engine to take a request first, short enough to abort it
# after that; below 0.2 s, vLLM 0.24-0.26 dies of requests aborted before they were scheduled (#56841), with the
# stock connector as with this one (it inherits request_finished).
ABORT_AFTER = 0.2
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(os.environ.get("REPRO_GPU") != "1", reason="GPU check: REPRO_GPU=1 asks for it")]


def record(name: str, figures: dict) -> None:
    out = os.environ.get("REPRO_GPU_OUT")
    print(f"repro-gpu {name}: {json.dumps(figures, sort_keys=True)}")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def fp8_server(tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get("REPRO_GPU_CHECK_STATE"):  # inside scripts/gpu_check.sh: the server its `start` launched
        from tests.gpu.harness import Context, started_server, wait_marker

        ctx = Context.load(Path(os.environ["REPRO_GPU_CHECK_STATE"]))
        started = started_server(ctx, "fp8")
        if started is None:
            pytest.skip(f"no fp8 server for vLLM {ctx.vllm_version}: it needs a GPU, vLLM 0.22+ and hs-connectors "
                        f"beside vLLM")
        wait_marker(ctx, "fidelity-done", 420)  # this lane's load must not fall into the other lanes' readings
        yield started
        return
    if not has_gpu():
        pytest.fail("REPRO_GPU=1 but no NVIDIA GPU is visible")
    run_dir = tmp_path_factory.mktemp("fp8-server")
    storage = Path(f"/dev/shm/repro-gpu-fp8-{os.getpid()}")
    cmd = os.environ.get("REPRO_GPU_VLLM_CMD")
    s = ServerSettings(port=free_port(), storage=str(storage), connector="fp8", chunked_prefill=False,
                       dtype="bfloat16", startup_timeout=600.0, vllm_cmd=shlex.split(cmd) if cmd else None,
                       extra_args=["--gpu-memory-utilization", "0.15"])  # beside the GPU check's other servers
    server = VllmServer(s, run_dir)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        shutil.rmtree(storage, ignore_errors=True)


def test_fp8_files_are_verified_under_load(fp8_server: VllmServer, tmp_path: Path) -> None:
    kv = json.loads(fp8_server.command[fp8_server.command.index("--kv-transfer-config") + 1])
    assert kv["kv_connector"] == "FP8HiddenStatesConnector"
    assert kv["kv_connector_module_path"] == "hs_connectors.fp8_hidden_states_connector"
    assert "--no-enable-chunked-prefill" in fp8_server.command
    scn = Scenario(server=fp8_server.settings, url=fp8_server.url, storage_path=fp8_server.settings.storage,
                   load=LoadSettings(concurrency=32, duration=60.0, prompt_len=(128, 1024)), on_stall="exit",
                   detect=DetectSettings(window=60.0))
    res = run_stress(scn, tmp_path / "run")
    s = res.summary
    n = res.files["verified"]
    per_file = res.files["bytes"] / max(1, n + res.files["bad"])
    record("fp8-connector-load", {"requests_ok": res.counts["ok"], "files_verified": n, "files_bad": res.files["bad"],
                                  "file_errors": res.files["errors"], "dtypes": res.files["dtypes"],
                                  "requests_per_s": s["throughput"]["requests_per_s"],
                                  "fidelity_mean": s["fidelity"]["mean"], "bytes_per_file": round(per_file)})
    assert res.exit_code == 0, s.get("error")
    assert n > 100 and res.files["bad"] == 0, res.files
    assert res.files["dtypes"] == {"F8_E4M3": n}


def test_orphans_from_aborts_are_counted_as_for_the_stock_connector(fp8_server: VllmServer, tmp_path: Path) -> None:
    store = Path(fp8_server.settings.storage)
    scn = Scenario(server=fp8_server.settings, url=fp8_server.url, storage_path=str(store), orphan_grace=0.0,
                   load=LoadSettings(concurrency=64, duration=30.0, prompt_len=(512, 2048), request_timeout=ABORT_AFTER,
                                     retries=0), on_stall="exit", detect=DetectSettings(window=120.0))
    res = run_stress(scn, tmp_path / "run")
    st = res.summary["storage"]
    orphans = sorted(p for p in store.iterdir() if p.name.endswith(".safetensors"))
    sample = hsfile.read(str(orphans[0])) if orphans else None
    record("fp8-connector-aborts", {"timeouts": res.counts["timeouts"], "ok": res.counts["ok"],
                                    "orphan_files": st.get("orphan_files"), "orphan_bytes": st.get("orphan_bytes"),
                                    "lock_files": st.get("lock_files"), "claimed_files": st.get("claimed_files"),
                                    "orphan_dtype": sample.dtype if sample else None,
                                    "abort_storm": bool(res.summary.get("abort_storm")), "outcome": res.outcome,
                                    "request_timeout_s": ABORT_AFTER})
    if not fp8_server.alive():
        from tests.gpu.helpers import log_shows_56841

        if log_shows_56841(fp8_server.log_path):  # the stock connector's bug, which the FP8 one inherits
            record("fp8-connector-aborts-engine-death", {"upstream": "#56841", "request_timeout_s": ABORT_AFTER})
            pytest.skip("EngineCore died of upstream #56841 (KeyError in request_finished, inherited from the stock "
                        "connector) under the abort storm: no orphans to count")
    assert fp8_server.alive(), "EngineCore died under the abort storm (see the server log)"
    assert res.counts["timeouts"] > 0
    assert 0 < st["orphan_files"] <= len(orphans), st  # failed files kept for inspection are claimed ones
    assert sample is not None and sample.dtype == "F8_E4M3" and hsfile.SCALES in sample.tensors
    for p in store.iterdir():  # leave the store empty for the next step
        p.unlink()
