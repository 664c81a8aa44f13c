"""The served model's limit and the fidelity breakdown, as pure functions.

Contract: max_model_len comes from a /v1/models entry or the last --max-model-len of a command line;
clipping keeps the prompt plus max_tokens plus one speculative token within it and leaves a range that
fits alone; the breakdown's API-server share is the client's in-flight count minus what the engine holds,
its advice appears only when that share is large, and engine-held requests the client gave up are
counted as engine_excess, never as a negative share.
"""

from __future__ import annotations

from repro.load import limits
from repro.load.fidelity import Breakdown


def test_limit_from_the_model_card_and_from_argv() -> None:
    assert limits.from_model_card({"id": "m", "max_model_len": 2048}) == 2048
    assert limits.from_model_card({"id": "m"}) is None and limits.from_model_card({"max_model_len": "2048"}) is None
    assert limits.from_model_card({"max_model_len": True}) is None and limits.from_model_card(None) is None
    argv = ["vllm", "serve", "m", "--max-model-len", "2304", "--dtype", "float32", "--max-model-len=1024"]
    assert limits.from_argv(argv) == 1024
    assert limits.from_argv(["vllm", "serve", "m"]) is None and limits.from_argv(["--max-model-len"]) is None


def test_clip_keeps_room_for_the_generated_and_speculative_tokens() -> None:
    c = limits.clip((128, 2048), 2048, limits.FROM_MODELS, max_tokens=1)
    assert c.used == (128, 2046) and c.clipped and c.max_prompt == 2046 and c.reserve == 2
    assert "clipped to 128-2046 tokens (asked 128-2048)" in (c.line() or "")
    chat = limits.clip((128, 2048), 2048, limits.FROM_LAUNCH, max_tokens=16)
    assert chat.used == (128, 2031) and "from the launch settings" in (chat.line() or "")
    tiny = limits.clip((500, 600), 256, limits.FROM_MODELS, max_tokens=1)
    assert tiny.used == (254, 254)
    fits = limits.clip((128, 1024), 2048, limits.FROM_MODELS, max_tokens=1)
    assert not fits.clipped and fits.line() is None
    unknown = limits.clip((128, 2048), None, None, max_tokens=1)
    assert not unknown.clipped and unknown.max_prompt is None and unknown.to_dict()["max_model_len"] is None


def test_breakdown_means_shares_and_advice() -> None:
    b = Breakdown()
    for _ in range(5):
        b.add(32, 8, 8)
    s = b.summary(32)
    assert (s["client_in_flight"], s["engine_running"], s["engine_waiting"], s["api_server"]) == (32, 8, 8, 16)
    assert s["shares"]["api_server"] == 0.5 and s["client_idle"] == 0
    advice = b.advice(32) or ""
    assert "holds 16.0 of the 32" in advice and "--api-server-count" in advice and "shorter prompts" in advice


def test_no_advice_when_the_engine_holds_the_load_or_too_few_samples() -> None:
    b = Breakdown()
    for _ in range(10):
        b.add(32, 30, 1)
    assert b.advice(32) is None
    few = Breakdown()
    few.add(32, 0, 0)
    assert few.advice(32) is None and Breakdown().summary(32) == {"samples": 0, "concurrency": 32,
                                                                  "definition": Breakdown().summary(32)["definition"]}


def test_engine_holding_more_than_the_client_is_excess_not_a_negative_share() -> None:
    b = Breakdown()
    b.add(4, 10, 2)
    s = b.summary(32)
    assert s["api_server"] == 0 and s["engine_excess"] == 8
