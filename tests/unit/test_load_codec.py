"""The request path's JSON (repro.load.codec): msgspec when importable, json otherwise, the same data either way."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

from repro.load import codec as fast_codec
from repro.load.records import RequestRecord

try:
    import msgspec
except ImportError:
    msgspec = None

needs_msgspec = pytest.mark.skipif(msgspec is None, reason="msgspec is not installed (vLLM brings it)")

ANSWER = {"id": "cmpl-0123456789abcdef", "object": "text_completion", "model": "fast",
          "choices": [{"index": 0, "finish_reason": "length", "token_ids": [7], "text": "x",
                       "prompt_token_ids": list(range(4, 132))}],
          "usage": {"prompt_tokens": 128, "completion_tokens": 1, "total_tokens": 129},
          "kv_transfer_params": {"hidden_states_path": "/dev/shm/hs/cmpl-0123456789abcdef.safetensors"}}

# what a server may send that is not plain JSON, or not JSON at all
ODD_ANSWERS = [b"NaN", b'{"x": [1, NaN, Infinity]}', b"1e400", b'"\\ud800"', b"\xef\xbb\xbf{}",
               '{"a": 1}'.encode("utf-16"), b'{"a":1,"a":2}', b"123456789012345678901234567890"]
MALFORMED = [b"", b"{", b'{"a":1}x', b"[1,]", b"\xff", b"<html>502 Bad Gateway</html>", b'{"a": tru}']


@pytest.fixture
def json_codec(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """repro.load.codec as it loads where msgspec cannot be imported."""
    monkeypatch.setitem(sys.modules, "msgspec", None)  # `import msgspec` raises ImportError
    mod = importlib.reload(fast_codec)
    try:
        yield mod
    finally:
        monkeypatch.undo()
        importlib.reload(fast_codec)


@pytest.fixture(params=["msgspec", "json"])
def either_codec(request: pytest.FixtureRequest) -> ModuleType:
    """The codec with msgspec (skipped where it is not installed), then without it."""
    if request.param == "msgspec":
        if msgspec is None:
            pytest.skip("msgspec is not installed")
        mod = fast_codec
    else:
        mod = request.getfixturevalue("json_codec")
    assert mod.BACKEND == request.param
    return mod


def records() -> list[RequestRecord]:
    ok = RequestRecord(seq=7, kind="hidden-states", t_start=12.3456, latency=0.004321, status="ok", attempts=1,
                       http_status=200, prompt_tokens=128, completion_tokens=1,
                       file={"ok": True, "path": "/dev/shm/hs/cmpl-1.safetensors", "bytes": 131200,
                             "shape": [128, 2, 128], "dtype": "F32", "consumed": "deleted", "seconds": 0.000123,
                             "lock_wait": 1.2e-05},
                       client_s={"prompt_wait": 7e-06, "check": 0.000123})
    bad = RequestRecord(seq=8, kind="chat", t_start=1e-05, latency=None, status="error", attempts=4,
                        error="http-500", detail='Internal "error" — naïve \\ \n\t\x01 ✓', client_s={})
    big = RequestRecord(seq=9, kind="hidden-states", t_start=123456789.5, latency=1e16, status="timeout",
                        attempts=2, file={"ok": False, "error": "file-missing", "t_end": 0.0}, handle=None)
    return [ok, bad, big]


@needs_msgspec
def test_msgspec_is_used_where_it_is_installed() -> None:
    """The venv has vLLM, and vLLM brings msgspec: the fast path is the one measured in BENCHMARKS.md."""
    assert fast_codec.BACKEND == "msgspec"


@needs_msgspec
def test_records_written_with_msgspec_and_with_json_are_the_same_data(json_codec: ModuleType) -> None:
    """Each requests.jsonl line parses to the same object, keys in the same order, whichever backend wrote it;
    without msgspec the line is exactly json.dumps's compact one."""
    for rec in records():
        d = {k: v for k, v in rec.__dict__.items() if v is not None}
        with_json = json_codec.dumps_str(d)
        with_msgspec = msgspec.json.encode(d).decode()
        assert with_json == json.dumps(d, separators=(",", ":"), ensure_ascii=False)
        assert "\n" not in with_msgspec and "\n" not in with_json  # one record, one line
        for line in (with_json, with_msgspec):
            back = json.loads(line)
            assert back == d and list(back) == list(d)
            assert [type(v) for v in back.values()] == [type(v) for v in d.values()]


def test_to_json_leaves_out_the_none_fields_in_field_order() -> None:
    """RequestRecord.to_json (through the codec): the fields that are set, in declaration order."""
    rec = records()[1]
    assert list(json.loads(rec.to_json())) == ["seq", "kind", "t_start", "status", "attempts", "error", "detail",
                                              "client_s"]


@needs_msgspec
def test_request_bodies_are_byte_identical_with_either_backend(json_codec: ModuleType) -> None:
    """A request body (token ids, text, chat messages) is the same bytes json.dumps writes, msgspec or not:
    what the server receives does not depend on what is installed."""
    bodies = [{"model": "m", "max_tokens": 1, "return_token_ids": True, "prompt": list(range(4, 132))},
              {"model": "m", "max_tokens": 1, "return_token_ids": True, "prompt": "naïve text — ✓ \"q\" \\ \x7f"},
              {"model": "m", "messages": [{"role": "user", "content": "héllo\n\u2028"}], "max_tokens": 16,
               "return_token_ids": True, "ignore_eos": True}]
    for body in bodies:
        want = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        assert json_codec.dumps(body) == want
        assert msgspec.json.encode(body) == want


def test_answers_parse_as_json_loads_parses_them(either_codec: ModuleType) -> None:
    """A well-formed answer and the odd ones (NaN, out-of-range numbers, a BOM, UTF-16, duplicate keys, big
    ints) give json.loads's result with either backend: msgspec hands what it refuses to json.loads."""
    mod = either_codec
    body = json.dumps(ANSWER, separators=(",", ":")).encode()
    assert mod.loads(body) == ANSWER
    for raw in ODD_ANSWERS:
        got, want = mod.loads(raw), json.loads(raw)
        assert repr(got) == repr(want), raw  # repr: NaN != NaN


def test_a_malformed_answer_raises_what_json_loads_raises(either_codec: ModuleType) -> None:
    """The record's bad-response detail is "<type>: <message>" of the error: the same type and message as
    json.loads's (a ValueError, as handle_ok expects), whichever backend parsed it."""
    mod = either_codec
    for raw in MALFORMED:
        with pytest.raises(ValueError) as want:
            json.loads(raw)
        with pytest.raises(ValueError) as got:
            mod.loads(raw)
        assert (type(got.value), str(got.value)) == (type(want.value), str(want.value)), raw
