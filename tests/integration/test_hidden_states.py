"""A real vLLM (CPU, tiny model, bfloat16 as on GPUs) in hidden-state mode returns files that hold what the prompt produced."""

import fcntl
import json
import os
import urllib.request
from pathlib import Path

import numpy as np

from repro.hsfiles import hsfile

from tests.integration.conftest import complete

HIDDEN = 128  # the tiny model's hidden size
LAYERS = 2  # default layers for a 2-layer model: [1, 2]


def read_and_delete(path: str) -> dict:
    """Read like a client of vLLM >= 0.22: LOCK_SH on <file>.lock waits for the writer, then load, then clean up."""
    p = Path(path)
    lock = Path(path + ".lock")
    if lock.exists():
        with open(lock) as lf:
            fcntl.flock(lf, fcntl.LOCK_SH)
    assert p.is_file(), f"vLLM returned {path} but it is not there"
    f = hsfile.read(str(p))
    p.unlink()
    Path(path + ".lock").unlink(missing_ok=True)
    return {"hidden_states": f.values(), "token_ids": f.token_ids, "dtype": f.dtype}


def test_completion_with_token_ids_returns_a_file_of_prompt_by_layers_by_hidden(vllm_server):
    """GIVEN a token-id prompt WHEN completed with max_tokens=1 THEN the file is [tokens, layers, hidden] and echoes the ids."""
    prompt = [1, 17, 42, 99, 256, 300, 7, 8]
    resp = complete(vllm_server.url, vllm_server.model, prompt)
    path = resp["kv_transfer_params"]["hidden_states_path"]
    assert os.path.dirname(path) == str(vllm_server.storage)
    data = read_and_delete(path)
    assert data["hidden_states"].shape == (len(prompt), LAYERS, HIDDEN)
    assert data["token_ids"].tolist() == prompt
    assert data["dtype"] == "BF16"  # the shared server runs --dtype bfloat16, the dtype of GPU users
    assert np.isfinite(data["hidden_states"]).all()


def test_text_prompt_file_matches_the_tokens_vllm_reports(vllm_server):
    resp = complete(vllm_server.url, vllm_server.model, "the quick brown fox 你好世界")
    ids = resp["choices"][0]["prompt_token_ids"]
    data = read_and_delete(resp["kv_transfer_params"]["hidden_states_path"])
    assert data["token_ids"].tolist() == ids
    assert data["hidden_states"].shape == (len(ids), LAYERS, HIDDEN)


def test_chat_request_also_returns_a_hidden_state_file(vllm_server):
    body = {"model": vllm_server.model, "max_tokens": 1,
            "messages": [{"role": "user", "content": "tell me a story about cats"}]}
    req = urllib.request.Request(vllm_server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        resp = json.loads(r.read())
    n_prompt = resp["usage"]["prompt_tokens"]
    data = read_and_delete(resp["kv_transfer_params"]["hidden_states_path"])
    assert data["hidden_states"].shape == (n_prompt, LAYERS, HIDDEN)
    assert data["token_ids"].shape == (n_prompt,)


def test_same_prompt_gives_the_same_hidden_states(vllm_server):
    """Extraction is deterministic: two requests with one prompt give equal tensors (no cross-request mixing)."""
    prompt = list(range(10, 60))
    a = read_and_delete(complete(vllm_server.url, vllm_server.model, prompt)["kv_transfer_params"]["hidden_states_path"])
    b = read_and_delete(complete(vllm_server.url, vllm_server.model, prompt)["kv_transfer_params"]["hidden_states_path"])
    np.testing.assert_allclose(a["hidden_states"], b["hidden_states"], rtol=1e-5, atol=1e-6)
