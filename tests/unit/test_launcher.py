"""How `repro serve` turns settings into a vLLM command line, and what it refuses before launching."""

import json
import socket
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.scenario import ServerSettings
from repro.server import launcher


@pytest.fixture
def model_dir(tmp_path):
    """A stand-in local model: only config.json is read before launch."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": 32}))
    return d


def settings(tmp_path, model_dir, **kw):
    return ServerSettings(model=str(model_dir), storage=str(tmp_path / "hs"), vllm_cmd=["vllm", "serve"], **kw)


def arg(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def test_default_layers_follow_speculators_and_clip_to_the_model():
    assert launcher.default_layers(32) == [2, 16, 29, 32]
    assert launcher.default_layers(2) == [1, 2]
    assert launcher.default_layers(1) == [1]


def test_extraction_config_names_layers_storage_and_connector(tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr(launcher, "has_gpu", lambda: False)
    cmd, env = launcher.build_launch(settings(tmp_path, model_dir), tmp_path)
    spec = json.loads(arg(cmd, "--speculative-config"))
    assert spec["method"] == "extract_hidden_states" and spec["num_speculative_tokens"] == 1
    assert spec["draft_model_config"]["hf_config"]["eagle_aux_hidden_state_layer_ids"] == [2, 16, 29, 32]
    kv = json.loads(arg(cmd, "--kv-transfer-config"))
    assert kv["kv_connector"] == "CpuHiddenStatesConnector"
    assert kv["kv_connector_module_path"] == "repro.vllm_plugins.cpu_hs_connector"
    assert kv["kv_connector_extra_config"]["shared_storage_path"] == str(tmp_path / "hs")
    assert (tmp_path / "hs").is_dir()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_with_a_gpu_the_stock_connector_is_used(tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr(launcher, "has_gpu", lambda: True)
    cmd, _ = launcher.build_launch(settings(tmp_path, model_dir), tmp_path)
    kv = json.loads(arg(cmd, "--kv-transfer-config"))
    assert kv["kv_connector"] == "ExampleHiddenStatesConnector" and "kv_connector_module_path" not in kv


def test_toggles_passthrough_and_injection_reach_vllm(tmp_path, model_dir):
    s = settings(tmp_path, model_dir, async_scheduling=False, chunked_prefill=True, max_num_seqs=16,
                 inject="stall-after=30", extra_args=["--seed", "7"])
    cmd, env = launcher.build_launch(s, tmp_path)
    assert "--no-async-scheduling" in cmd and "--enable-chunked-prefill" in cmd
    assert arg(cmd, "--max-num-seqs") == "16" and cmd[-2:] == ["--seed", "7"]
    assert env["REPRO_INJECT"] == "stall-after=30"
    assert env["REPRO_INJECT_EVENTS"] == str(tmp_path / "injected.jsonl")


def test_plain_serving_has_no_extraction(tmp_path, model_dir):
    cmd, _ = launcher.build_launch(settings(tmp_path, model_dir, extract=False), tmp_path)
    assert "--speculative-config" not in cmd and "--kv-transfer-config" not in cmd


def test_an_inherited_injection_never_leaks_into_a_clean_server(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("REPRO_INJECT", "stall-after=0")
    _, env = launcher.build_launch(settings(tmp_path, model_dir), tmp_path)
    assert "REPRO_INJECT" not in env


@pytest.mark.parametrize("kw, words", [
    ({"layers": [0, 2]}, "layer ids are 1-based"),
    ({"layers": [33]}, "has 32 layers"),
    ({"inject": "stall-soon"}, "--inject"),
    ({"port": 70000}, "between 1 and 65535"),
])
def test_bad_settings_are_refused_before_launch(tmp_path, model_dir, kw, words):
    with pytest.raises(UsageError, match=words):
        launcher.build_launch(settings(tmp_path, model_dir, **kw), tmp_path)


def test_storage_that_is_a_file_is_refused(tmp_path, model_dir):
    f = tmp_path / "file"
    f.write_text("x")
    s = settings(tmp_path, model_dir)
    s.storage = str(f)
    with pytest.raises(UsageError, match="not a directory"):
        launcher.build_launch(s, tmp_path)


def test_missing_model_path_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        launcher.resolve_model(str(tmp_path / "nope"))
    assert launcher.resolve_model("meta-llama/Llama-3.1-8B") == ("meta-llama/Llama-3.1-8B", False)


def test_port_in_use_is_detected():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not launcher.port_free("127.0.0.1", s.getsockname()[1])


def test_dtype_reaches_vllm_for_any_model(tmp_path, model_dir):
    """GIVEN --dtype bfloat16 WHEN a server is launched THEN vllm serve gets --dtype bfloat16 (once)."""
    cmd, _ = launcher.build_launch(settings(tmp_path, model_dir, dtype="bfloat16"), tmp_path)
    assert arg(cmd, "--dtype") == "bfloat16" and cmd.count("--dtype") == 1


def test_the_tiny_model_is_float32_unless_a_dtype_is_given(tmp_path, monkeypatch):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (tiny / "repro-tiny-model.json").write_text("{}")
    base = dict(model=str(tiny), storage=str(tmp_path / "hs"), vllm_cmd=["vllm", "serve"])
    cmd, _ = launcher.build_launch(ServerSettings(**base), tmp_path)
    assert arg(cmd, "--dtype") == "float32"
    cmd, _ = launcher.build_launch(ServerSettings(**base, dtype="float16"), tmp_path)
    assert arg(cmd, "--dtype") == "float16" and cmd.count("--dtype") == 1


def test_the_ready_check_uses_the_api_key_the_server_was_given(tmp_path, model_dir):
    """A server started with `-- --api-key K` (or VLLM_API_KEY) answers /v1/models only with K: the ready check
    sends it, or the server would never count as ready."""
    for extra, env, key in ((["--api-key", "k1k1"], {}, "k1k1"), (["--api-key=k2k2"], {}, "k2k2"),
                            ([], {"VLLM_API_KEY": "k3k3"}, "k3k3"), ([], {}, None)):
        srv = launcher.VllmServer(settings(tmp_path, model_dir, extra_args=extra, env=env), tmp_path)
        srv.command, srv.env = launcher.build_launch(srv.settings, tmp_path)
        assert srv.api_key == key
