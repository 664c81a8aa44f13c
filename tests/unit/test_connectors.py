"""Choosing the hidden-states connector: --connector NAME|module:Class -> the --kv-transfer-config vLLM gets, the
output the checker expects, and one line + exit 2 for a connector vLLM could not load.

Contracts: every named connector builds the same kv-transfer-config as its own package would (hs-connectors'
FP8Backend / FileBackend builders); auto is cpu without a GPU and stock with one; a module:Class naming one of
the known connectors gets that connector's expectations; a module that does not import in vLLM's Python, a
module without the class, and a class that is not a vLLM KV connector are refused before vLLM starts (exit 2,
one error line); the connector that ran is in scenario.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.scenario import ServerSettings
from repro.server import connectors, launcher
from tests.conftest import import_vllm
from tests.helpers_cli import one_line_error

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    return d


@pytest.fixture
def user_modules(tmp_path: Path) -> Path:
    """A directory of modules a user might name: one that fails to import, one with a plain class."""
    d = tmp_path / "mods"
    d.mkdir()
    (d / "broken_conn.py").write_text("import a_dependency_that_is_not_installed\n")
    (d / "plain_conn.py").write_text(textwrap.dedent("""
        class NotAConnector:
            pass
        value = 3
    """))
    return d


def kv_config(tmp_path: Path, model_dir: Path, connector: str, **env: str) -> dict:
    s = ServerSettings(model=str(model_dir), storage=str(tmp_path / "hs"), vllm_cmd=[sys.executable, "-m", "vllm"],
                       connector=connector, env=env)
    cmd, _ = launcher.build_launch(s, tmp_path)
    return json.loads(cmd[cmd.index("--kv-transfer-config") + 1])


def test_auto_is_cpu_without_a_gpu_and_stock_with_one() -> None:
    assert connectors.resolve("auto", gpu=False).name == "cpu"
    assert connectors.resolve("auto", gpu=True).name == "stock"
    assert connectors.resolve("fp8", gpu=False).kv_connector == "FP8HiddenStatesConnector"


def test_fp8_and_stock_configs_are_what_hs_connectors_builds() -> None:
    """hs-connectors' own backends build the config its users launch vLLM with; ours must be the same object."""
    pytest.importorskip("hs_connectors")
    from hs_connectors.transfer import FileBackend, FP8Backend

    ns = argparse.Namespace(hidden_states_path="/dev/shm/hs")
    assert connectors.resolve("fp8", False).kv_transfer_config("/dev/shm/hs") == FP8Backend.build_kv_transfer_config(ns)
    assert connectors.resolve("stock", False).kv_transfer_config("/dev/shm/hs") == FileBackend.build_kv_transfer_config(ns)


def test_a_known_connector_spelled_as_module_class_keeps_its_expectations() -> None:
    c = connectors.resolve("hs_connectors.fp8_hidden_states_connector:FP8HiddenStatesConnector", gpu=False)
    assert c.name == "fp8" and c.output is not None and c.output.hs_dtype == "F8_E4M3"
    user = connectors.resolve("my_pkg.conn:Mine", gpu=False)
    assert (user.module_path, user.kv_connector, user.source, user.output) == ("my_pkg.conn", "Mine", "user", None)


@pytest.mark.parametrize("text", ["nope", "a.b:", "a b:C", "mod:1Class"])
def test_text_that_names_no_connector_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--connector"):
        connectors.resolve(text, gpu=False)


def test_cpu_fp8_launch_line_loads_repros_module_with_the_storage(tmp_path: Path, model_dir: Path) -> None:
    pytest.importorskip("hs_connectors")
    kv = kv_config(tmp_path, model_dir, "cpu-fp8")
    assert kv == {"kv_connector": "CpuFP8HiddenStatesConnector", "kv_role": "kv_producer",
                  "kv_connector_module_path": "repro.vllm_plugins.cpu_fp8_hs_connector",
                  "kv_connector_extra_config": {"shared_storage_path": str(tmp_path / "hs")}}


def test_mooncake_launch_line_has_no_storage_directory(tmp_path: Path, model_dir: Path, monkeypatch) -> None:
    """Mooncake stores objects, not files: no shared_storage_path, the store's address instead."""
    monkeypatch.setattr(connectors, "probe", lambda *a, **k: None)  # mooncake-transfer-engine is not installed here
    kv = kv_config(tmp_path, model_dir, "mooncake")
    assert kv["kv_connector"] == "MooncakeHiddenStatesConnector"
    assert kv["kv_connector_module_path"] == "hs_connectors.mooncake_hidden_states_connector"
    assert "shared_storage_path" not in kv["kv_connector_extra_config"]
    assert kv["kv_connector_extra_config"]["mooncake"]["master_server_address"] == "127.0.0.1:50051"


def test_a_module_that_does_not_import_is_refused_with_the_error(tmp_path: Path, model_dir: Path,
                                                                 user_modules: Path) -> None:
    with pytest.raises(UsageError) as ei:
        kv_config(tmp_path, model_dir, "broken_conn:Conn", PYTHONPATH=f"{user_modules}:{REPO}")
    msg = ei.value.message
    assert "module broken_conn does not import in vLLM's Python" in msg and "a_dependency_that_is_not_installed" in msg
    assert "\n" not in msg and "PYTHONPATH" in ei.value.help


def test_a_class_that_is_not_a_connector_is_refused(tmp_path: Path, model_dir: Path, user_modules: Path) -> None:
    env = {"PYTHONPATH": f"{user_modules}:{REPO}"}
    with pytest.raises(UsageError, match=r"plain_conn.NotAConnector is not a vLLM KV connector \(the class does not "
                                         r"derive from vLLM's KVConnectorBase_V1\)"):
        kv_config(tmp_path, model_dir, "plain_conn:NotAConnector", **env)
    with pytest.raises(UsageError, match="plain_conn.value is not a vLLM KV connector"):
        kv_config(tmp_path, model_dir, "plain_conn:value", **env)
    with pytest.raises(UsageError, match="module plain_conn has no class Missing"):
        kv_config(tmp_path, model_dir, "plain_conn:Missing", **env)


def test_a_real_vllm_connector_given_as_module_class_passes_the_probe() -> None:
    """The positive case imports vLLM (slow): the MRO check must accept a real connector class."""
    import_vllm()
    mod = "vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector"
    res = connectors.probe(connectors.resolve(f"{mod}:ExampleHiddenStatesConnector", False), sys.executable)
    assert res is not None and res.ok, res
    assert any(m.endswith("KVConnectorBase_V1") for m in res.mro)


def test_a_missing_hs_connectors_says_how_to_install_it(monkeypatch) -> None:
    conn = connectors.resolve("fp8", gpu=False)
    monkeypatch.setattr(connectors, "_run_probe", lambda *a: connectors.ProbeResult(False, "missing",
                                                                                    "No module named 'hs_connectors'"))
    with pytest.raises(UsageError, match="hs_connectors is not installed in vLLM's Python") as ei:
        connectors.require(conn, "/venv/bin/python")
    assert "pip install hs-connectors==0.9.0" in ei.value.help


def test_cli_refuses_a_bad_connector_with_one_line_and_exit_2(tmp_path: Path, model_dir: Path,
                                                              user_modules: Path) -> None:
    """`repro serve` checks the connector before vLLM starts: exit 2, the reason on one line."""
    env = {"PYTHONPATH": f"{user_modules}:{REPO}", "PATH": "/usr/bin:/bin"}
    base = [sys.executable, "-m", "repro", "serve", "--model", str(model_dir), "--storage", str(tmp_path / "hs"),
            "--vllm-cmd", f"{sys.executable} -m vllm.entrypoints.cli.main serve"]
    r = subprocess.run([*base, "--connector", "plain_conn:NotAConnector"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2 and "is not a vLLM KV connector" in one_line_error(r, help_ok=True)
    r = subprocess.run([*base, "--connector", "broken_conn:X"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "does not import" in one_line_error(r, help_ok=True)
    r = subprocess.run([*base, "--connector", "nope"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "--connector" in r.stderr and "Traceback" not in r.stderr


def test_the_connector_that_ran_is_in_scenario_json(tmp_path: Path) -> None:
    """Attached with --connector fp8: scenario.json says which connector and what its files hold."""
    from repro.load.runner import run_stress
    from repro.scenario import DetectSettings, LoadSettings, Scenario

    scn = Scenario(server=ServerSettings(connector="fp8"), load=LoadSettings(requests=1), url="http://127.0.0.1:9",
                   detect=DetectSettings(), on_stall="exit")
    run_stress(scn, tmp_path / "run")  # nothing listens there: exit 3, but the scenario is written first
    rec = json.loads((tmp_path / "run" / "scenario.json").read_text())["connector"]
    assert rec["name"] == "fp8" and rec["output"]["hs_dtype"] == "F8_E4M3"
    assert rec["output"]["tensors"] == ["hidden_states", "hidden_states_scales", "token_ids"]


def test_scenario_json_with_the_connector_record_reads_back(tmp_path: Path) -> None:
    """scenario.json carries the resolved connector beside the settings; reading it back (bisect --resume) works."""
    from repro.scenario import Scenario

    d = Scenario(server=ServerSettings(connector="cpu-fp8")).to_dict()
    d["connector"] = connectors.resolve("cpu-fp8", False).to_dict()
    assert Scenario.from_dict(d).server.connector == "cpu-fp8"
