"""Prompts and request bodies.

Contract: a prompts file accepts text (English and Chinese), chat messages and
token ids; the first bad line raises UsageError naming the file and the line;
synthetic prompts are deterministic for a seed and stay inside the length range
and the vocabulary; request bodies are the hidden-state request speculators sends.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.load.prompts import CHAT, TEXT, TOKENS, PromptSource, load_prompts_file
from repro.load.workloads import CHAT_WL, HIDDEN_STATES, Workload, prepare


def write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_file_with_english_chinese_chat_and_token_ids(tmp_path: Path) -> None:
    p = write(tmp_path, [
        '{"prompt": "The quick brown fox"}',
        '{"prompt": "你好，世界。今天天气很好。"}',
        '# a comment', '',
        '{"messages": [{"role": "user", "content": "请用中文回答"}]}',
        '{"prompt_token_ids": [1, 2, 3]}',
        '"bare text"',
        '[7, 8, 9]',
    ])
    ps = load_prompts_file(p)
    assert [x.kind for x in ps] == [TEXT, TEXT, CHAT, TOKENS, TEXT, TOKENS]
    assert ps[1].text == "你好，世界。今天天气很好。"
    assert ps[2].line == 5
    body = json.loads(prepare(0, ps[1], HIDDEN_STATES, "m", 16).body.decode("utf-8"))
    assert body["prompt"] == "你好，世界。今天天气很好。"  # UTF-8 on the wire, not mangled
    chat = json.loads(prepare(1, ps[2], HIDDEN_STATES, "m", 16).body)
    assert chat["messages"][0]["content"] == "请用中文回答" and chat["max_tokens"] == 1


@pytest.mark.parametrize("bad, what", [
    ('{"prompt": "ok"', "not valid JSON"),
    ('{"prompt_token_ids": [1, -2]}', "token ids"),
    ('{"prompt_token_ids": []}', "token ids"),
    ('{"messages": [{"role": "user"}]}', "messages[0]"),
    ('{"foo": 1}', "no \"prompt\""),
    ('42', "expected an object"),
])
def test_bad_line_is_a_usage_error_naming_the_line(tmp_path: Path, bad: str, what: str) -> None:
    p = write(tmp_path, ['{"prompt": "fine"}', '{"prompt": "也很好"}', bad])
    with pytest.raises(UsageError) as ei:
        load_prompts_file(p)
    assert "line 3" in ei.value.message and str(p) in ei.value.message
    assert what in ei.value.message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_prompts_file(tmp_path / "nope.jsonl")
    with pytest.raises(UsageError, match="no prompts"):
        load_prompts_file(write(tmp_path, ["# only a comment"]))


def test_synthetic_prompts_are_deterministic_and_in_range() -> None:
    a = PromptSource(7, (16, 64), 512)
    b = PromptSource(7, (16, 64), 512)
    pa = [a.next() for _ in range(200)]
    assert pa == [b.next() for _ in range(200)]
    assert all(16 <= len(p.tokens) <= 64 for p in pa)
    assert all(4 <= t < 512 for p in pa for t in p.tokens)
    assert {len(p.tokens) for p in pa} != {16}  # a distribution, not a constant
    c = PromptSource(8, (16, 64), 512)
    assert [c.next() for _ in range(5)] != pa[:5]


def test_hidden_state_body_is_speculators_request() -> None:
    p = PromptSource(0, (5, 5), 100).next()
    req = prepare(3, p, HIDDEN_STATES, "tiny", 16)
    body = json.loads(req.body)
    assert req.path == "/v1/completions"
    assert body == {"model": "tiny", "max_tokens": 1, "return_token_ids": True, "prompt": list(p.tokens)}
    assert req.prompt_tokens == p.tokens and req.prompt_len == 5


def test_chat_body_uses_max_tokens() -> None:
    p = PromptSource(0, (5, 5), 100).next()
    req = prepare(3, p, CHAT_WL, "tiny", 16)
    body = json.loads(req.body)
    assert req.path == "/v1/chat/completions" and body["max_tokens"] == 16
    assert body["messages"][0]["role"] == "user" and body["messages"][0]["content"]


def test_mixed_workload_ratio() -> None:
    w = Workload.parse("mixed:0.25")
    rng = random.Random(1)
    picks = [w.pick(rng) for _ in range(4000)]
    share = picks.count(HIDDEN_STATES) / len(picks)
    assert 0.22 < share < 0.28
    assert Workload.parse("hidden-states").hs_ratio == 1.0 and Workload.parse("chat").hs_ratio == 0.0
    for bad in ("mixed:x", "mixed:1.5", "bogus"):
        with pytest.raises(UsageError):
            Workload.parse(bad)
