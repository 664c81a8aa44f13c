"""Answers that carry a Mooncake `handle` instead of a file path (hs-connectors' MooncakeHiddenStatesConnector).

Contracts: each handle is recorded in requests.jsonl and counted in summary.json (files: handles / bad_handles);
no file is looked for; the storage section says that no census applies (never "0 orphans" as a fact), even when
a storage path was given; a manifest whose token count differs from the prompt is a bad handle; the stress
command says so on its summary line; a bundle of such a run writes no census either. The manifests are the ones
hs-connectors' connector builds (``packed_layout`` from hs_connectors.mooncake_store).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from repro.load.runner import run_stress
from repro.scenario import DetectSettings, LoadSettings, Scenario, ServerRecord, ServerSettings
from tests.helpers_http import ThreadedApp


def manifest(key: str, n_tokens: int) -> dict:
    """What MooncakeHiddenStatesConnector.request_finished returns as kv_transfer_params."""
    torch = pytest.importorskip("torch")
    store = pytest.importorskip("hs_connectors.mooncake_store")
    spec, total = store.packed_layout({"hidden_states": ([n_tokens, 2, 128], torch.float32),
                                       "token_ids": ([n_tokens], torch.int64)})
    return {"handle": key, "version": store.VERSION, "tensors": spec,
            "metadata": {"num_tokens": n_tokens, "total_aligned_bytes": total, "extract_mode": "prompt_only"}}


class HandleServer:
    def __init__(self, off_by: int = 0) -> None:
        self.n, self.off_by = 0, off_by
        self.server = ThreadedApp(self._app)
        self.url = self.server.url

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m", "root": None}]})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=f'vllm:num_requests_running{{model_name="m"}} 0\nvllm:num_requests_waiting{{model_name="m"}} 0\n'
                                 f'vllm:prompt_tokens_total{{model_name="m"}} {self.n}\n'
                                 f'vllm:generation_tokens_total{{model_name="m"}} {self.n}\n')

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        ids = body["prompt"]
        self.n += 1
        kv = manifest(f"cmpl-{self.n}-0", len(ids) + self.off_by)
        return web.json_response({"id": f"cmpl-{self.n}", "choices": [{"prompt_token_ids": ids, "text": "x"}],
                                  "usage": {"prompt_tokens": len(ids), "completion_tokens": 1},
                                  "kv_transfer_params": kv})

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def handle_server():
    made: list[HandleServer] = []

    def make(off_by: int = 0) -> HandleServer:
        made.append(HandleServer(off_by))
        return made[-1]

    yield make
    for s in made:
        s.close()


def scenario(url: str, **kw: object) -> Scenario:
    return Scenario(load=LoadSettings(concurrency=4, requests=40, prompt_len=(8, 32), vocab_size=500),
                    detect=DetectSettings(window=600, startup_grace=600), url=url, on_stall="exit", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("workload", ["hidden-states", "speculators"])
def test_handles_are_recorded_and_counted_and_no_census_is_claimed(handle_server, tmp_path: Path,
                                                                   workload: str) -> None:
    srv = handle_server()
    store = tmp_path / "store"
    store.mkdir()
    scn = scenario(srv.url, storage_path=str(store))  # a store given: still no census of handles
    scn.load.workload = workload
    res = run_stress(scn, tmp_path / "run")
    assert res.exit_code == 0, res.summary.get("error")
    assert res.files["handles"] == 40 and res.files["bad_handles"] == 0 and res.files["verified"] == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["storage"]["applies"] is False and s["storage"]["census"] is None and "Mooncake" in s["storage"]["why"]
    assert "orphan_files" not in s["storage"]
    recs = [json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    assert all(r["handle"]["transfer"] == "handle" and r["handle"]["handle"].startswith("cmpl-") for r in recs)
    assert all("file" not in r for r in recs) and all(r["handle"]["bytes"] > 0 for r in recs)


def test_a_manifest_for_another_token_count_is_a_bad_handle(handle_server, tmp_path: Path) -> None:
    srv = handle_server(off_by=1)
    res = run_stress(scenario(srv.url), tmp_path / "run")
    assert res.files["handles"] == 40 and res.files["bad_handles"] == 40
    rec = json.loads((tmp_path / "run" / "requests.jsonl").read_text().splitlines()[0])
    assert rec["handle"]["error"] == "bad-handle" and "tokens" in rec["handle"]["detail"]


def test_mooncake_connector_means_no_census_even_before_any_answer(handle_server, tmp_path: Path) -> None:
    """Said with --connector mooncake: the summary explains the missing census from the start."""
    srv = handle_server()
    scn = scenario(srv.url, server=ServerSettings(connector="mooncake"))
    scn.load.requests = 4
    run_stress(scn, tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["storage"]["applies"] is False and s["connector"]["name"] == "mooncake"


def test_stress_cli_says_there_is_no_census(handle_server, tmp_path: Path) -> None:
    srv = handle_server()
    r = subprocess.run([sys.executable, "-m", "repro", "stress", "--url", srv.url, "--requests", "8", "-c", "2",
                        "--prompt-len", "8", "--vocab-size", "500", "--window", "600", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "handles 8 (bad 0)" in r.stderr and "storage: no census (the connector hands back handles" in r.stderr


def test_a_bundle_of_a_mooncake_run_has_no_census(tmp_path: Path) -> None:
    from repro.bundle.writer import BundleWriter
    from repro.secrets.redact import Redactor
    from repro.capture.request import CaptureRequest
    from repro.capture.run import _write_storage
    from repro.server import connectors

    scn = Scenario(server=ServerSettings(extract=True, storage=str(tmp_path)))
    rec = ServerRecord(connector=connectors.resolve("mooncake", False).to_dict())
    bw = BundleWriter(tmp_path / "bundle", Redactor())
    assert _write_storage(bw, CaptureRequest(out_dir=tmp_path / "bundle", scenario=scn, server_record=rec)) is None
    info = json.loads((tmp_path / "bundle" / "context" / "storage.json").read_text())
    assert info["census"] is None and "Mooncake" in info["why"]
