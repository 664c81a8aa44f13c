"""The client benchmark's stand-in server does the same file work for every client (benchmarks/fast_endpoint.py).

A text prompt (what `vllm bench serve` sends) counts as --text-tokens tokens, so its hidden-state file has the
shape of a token-id prompt's of that length; --discard-files writes each file in full and deletes it (and its
.lock) before answering, so a client that reads no files leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import urllib.request

from safetensors.numpy import load_file

from tests.helpers_endpoint import endpoint_factory  # noqa: F401  (fixture)


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_a_text_prompt_counts_as_text_tokens_and_its_file_has_that_many_rows(endpoint_factory) -> None:
    """--text-tokens 128: a 40-character and a 900-character text prompt both give a [128, layers, hidden] file."""
    ep = endpoint_factory(text_tokens=128)
    for text in ("x" * 40, "a b c " * 150):
        out = post(ep.url, {"model": "fast", "prompt": text, "max_tokens": 1})
        path = out["kv_transfer_params"]["hidden_states_path"]
        tensors = load_file(path)
        assert tensors["hidden_states"].shape == (128, 2, 8)
        assert tensors["token_ids"].shape == (128,)
        assert out["usage"]["prompt_tokens"] == 128


def test_a_token_id_prompt_is_not_resized_by_text_tokens(endpoint_factory) -> None:
    """--text-tokens applies to text only: a 16-id prompt's file holds those 16 ids."""
    ep = endpoint_factory(text_tokens=128)
    ids = list(range(5, 21))
    out = post(ep.url, {"model": "fast", "prompt": ids, "max_tokens": 1})
    tensors = load_file(out["kv_transfer_params"]["hidden_states_path"])
    assert tensors["token_ids"].tolist() == ids


def test_discard_files_writes_then_deletes_every_file_and_lock(endpoint_factory) -> None:
    """--discard-files: the answer still names a path, but neither the file nor its .lock is left in storage."""
    ep = endpoint_factory(discard_files=True, text_tokens=64)
    paths = [post(ep.url, {"model": "fast", "prompt": "hello " * 20, "max_tokens": 1})
             ["kv_transfer_params"]["hidden_states_path"] for _ in range(5)]
    assert all(p for p in paths)
    assert os.listdir(ep.args.files) == []
    assert ep.state.requests == 5
