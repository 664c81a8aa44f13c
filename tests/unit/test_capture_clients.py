"""context/clients.json: what the server saw of its clients, from its own log and its hidden-state store.

Contracts (on lines a real vLLM 0.32 CPU server logged with --enable-log-requests, clients timing out during an
injected stall): every `Received request` is counted, every aborted request id is counted once, and a data file
left in the store whose id the log shows aborted is reported as such; without request lines the view says
requests were not logged instead of reporting zero aborts; a handle connector has no store to look at.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from repro.capture import clients

LOG = Path(__file__).parent / "data" / "clients" / "vllm-0.32-log-requests.log"


def aborted_ids() -> list[str]:
    return sorted({m.group(1) for m in re.finditer(r"Aborted request\(s\) (\S+)\.", LOG.read_text())})


def test_received_and_aborted_requests_and_the_files_they_left(tmp_path: Path) -> None:
    ids = aborted_ids()
    assert len(ids) == 9
    store = tmp_path / "store"
    store.mkdir()
    (store / f"{ids[0]}.safetensors").write_bytes(b"x")  # written after its client gave up
    (store / f"{ids[0]}.safetensors.lock").write_bytes(b"")
    (store / "cmpl-someone-else-0-1.safetensors").write_bytes(b"x")
    v = clients.view(LOG.read_text(), str(store))
    assert v["schema"] == "repro.clients" and v["version"] == 1
    assert v["requests"]["received"] == 11 and v["requests"]["aborted"] == 9
    assert v["store"]["data_files"] == 2 and v["store"]["of_aborted_requests"] == 1
    assert v["store"]["of_aborted_requests_sample"] == [ids[0]]


def test_without_request_logging_the_view_says_so(tmp_path: Path) -> None:
    text = "\n".join(ln for ln in LOG.read_text().splitlines() if "Avg prompt" in ln)
    v = clients.view(text, str(tmp_path))
    assert v["requests"] is None and "--enable-log-requests" in v["requests_note"]
    assert v["store"]["data_files"] == 0 and v["store"]["of_aborted_requests"] is None


def test_a_handle_connector_has_no_store_to_look_at() -> None:
    v = clients.view(LOG.read_text(), "/nowhere", transfer="handle")
    assert v["store"] is None and "Mooncake" in v["store_note"] and v["requests"]["aborted"] == 9


def test_the_bundle_gets_the_view_from_its_own_log_tail(tmp_path: Path) -> None:
    from repro.bundle.writer import BundleWriter
    from repro.secrets.redact import Redactor
    from repro.capture.request import CaptureRequest
    from repro.capture.run import _write_clients

    bw = BundleWriter(tmp_path / "bundle", Redactor())
    bw.write_text("context/server.log.tail", LOG.read_text())
    got = _write_clients(bw, CaptureRequest(out_dir=tmp_path / "bundle", storage_path=str(tmp_path)))
    assert got == {"received": 11, "aborted": 9, "store_files": 0, "of_aborted_requests": 0}
    assert json.loads((tmp_path / "bundle" / "context" / "clients.json").read_text())["requests"]["aborted"] == 9
