"""The pieces of `--workload speculators`, each against what speculators 0.9's client does.

Contracts: the back-off after attempt n is 2**n s (2, 4, 8); a 200 answer without prompt ids, with other
prompt ids, without kv_transfer_params or without a path/handle is rejected (not retried); the lock wait takes
LOCK_EX, gives up after its timeout leaving lock and file, and removes the lock once it holds it; the failure
tracker trips at its threshold and resets on a success; chat bodies leave the final turn open only for Mistral
models; text prompts are refused (speculators sends token ids); a `speculators prepare-data` directory gives
its input_ids in order; --max-consecutive-errors belongs to this workload only.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.load import speculators as sp
from repro.load.prompts import CHAT, TEXT, TOKENS, Prompt, load_prompts_file
from repro.scenario import LoadSettings


def test_backoff_is_two_to_the_attempt() -> None:
    assert [sp.backoff(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


def ok_answer(ids: list[int], chat: bool = False, kv: dict | None = None) -> dict:
    kv = {"hidden_states_path": "/x.safetensors"} if kv is None else kv
    if chat:
        return {"prompt_token_ids": ids, "choices": [{}], "kv_transfer_params": kv}
    return {"choices": [{"prompt_token_ids": ids}], "kv_transfer_params": kv}


def test_valid_answers_give_the_handle_or_path() -> None:
    assert sp.validate(ok_answer([1, 2]), [1, 2], chat=False)[0] == "/x.safetensors"
    assert sp.validate(ok_answer([1, 2], chat=True, kv={"handle": "k1", "version": 1}), [1, 2], chat=True)[0] == "k1"


@pytest.mark.parametrize("data, words", [
    ({"choices": [{}], "kv_transfer_params": {"hidden_states_path": "/x"}}, "missing prompt_token_ids"),
    (ok_answer([2, 1]), "mismatch"),
    ({"choices": [{"prompt_token_ids": [1, 2]}]}, "missing kv_transfer_params"),
    (ok_answer([1, 2], kv={"other": 1}), "missing both"),
])
def test_answers_speculators_rejects(data: dict, words: str) -> None:
    with pytest.raises(sp.InvalidResponse, match=words):
        sp.validate(data, [1, 2], chat=False)


def test_lock_released_late_is_waited_for_and_removed(tmp_path: Path) -> None:
    lock = tmp_path / "f.safetensors.lock"
    fd = os.open(lock, os.O_CREAT | os.O_WRONLY, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(0.4, os.close, args=(fd,)).start()
    w = sp.wait_for_lock(str(lock), timeout=5.0)
    assert not w.timed_out and w.removed and w.seconds >= 0.35 and not lock.exists()


def test_lock_held_past_the_timeout_leaves_both_files(tmp_path: Path) -> None:
    data = tmp_path / "f.safetensors"
    data.write_bytes(b"x")
    lock = tmp_path / "f.safetensors.lock"
    fd = os.open(lock, os.O_CREAT | os.O_WRONLY, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        t0 = time.monotonic()
        w = sp.wait_for_lock(str(lock), timeout=0.5, poll=0.1)
        assert w.timed_out and not w.removed and time.monotonic() - t0 >= 0.5
        assert lock.exists() and data.exists()
    finally:
        os.close(fd)


def test_failure_tracker_trips_at_the_threshold_and_a_success_resets_it() -> None:
    t = sp.FailureTracker(3)
    assert not t.failure() and not t.failure()
    t.success()
    assert not t.failure() and not t.failure() and t.failure()
    assert t.peak == 3


def test_request_bodies_key_for_key() -> None:
    path, body = sp.request_body(Prompt(TOKENS, tokens=(5, 6)), "m")
    assert path == "/v1/completions" and list(body) == ["model", "prompt", "max_tokens", "return_token_ids"]
    chat = Prompt(CHAT, messages=({"role": "user", "content": "hi"},), tokens=(5, 6))
    path, body = sp.request_body(chat, "mistralai/Mistral-7B-Instruct")
    assert path == "/v1/chat/completions" and body["continue_final_message"] is True
    assert list(body) == ["model", "messages", "max_tokens", "add_generation_prompt", "continue_final_message",
                          "return_token_ids"]
    assert sp.request_body(chat, "meta-llama/Llama-3.1-8B")[1]["continue_final_message"] is False
    assert sp.dumps({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()


def test_text_prompts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="line 3: --workload speculators sends token ids"):
        sp.check_prompts([Prompt(TOKENS, tokens=(1,), line=1), Prompt(CHAT, messages=(), line=2),
                          Prompt(TEXT, text="hello", line=3)], "p.jsonl")


def test_a_prepare_data_directory_gives_its_input_ids_in_order(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [[7, 8, 9], [10, 11], [12]]
    datasets.Dataset.from_dict({"input_ids": rows}).with_format("torch").save_to_disk(str(tmp_path / "d"))
    got = load_prompts_file(tmp_path / "d")
    assert [list(p.tokens or ()) for p in got] == rows and all(p.kind == TOKENS for p in got)


def test_chat_lines_may_carry_their_token_ids(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "hi"}], "prompt_token_ids": [3, 4]}\n')
    (p,) = load_prompts_file(f)
    assert p.kind == CHAT and p.tokens == (3, 4)


def test_max_consecutive_errors_goes_with_the_speculators_workload_only() -> None:
    with pytest.raises(UsageError, match="goes with --workload speculators"):
        LoadSettings(max_consecutive_errors=4).validate()
    with pytest.raises(UsageError, match="at least 1"):
        LoadSettings(workload="speculators", max_consecutive_errors=0).validate()
    LoadSettings(workload="speculators", max_consecutive_errors=4).validate()
