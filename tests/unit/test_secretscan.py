"""The secret scanner: every token format detect-secrets documents is masked wherever it is written, and the
evidence a bundle exists for (hashes, request ids, hidden-state file names, addresses) is not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from repro.secrets.prefilter import Gate, Text, required
from repro.secrets.redact import MASK, WITHHELD, Redactor
from repro.secrets.secretscan import REPRO_RULES, Scanner, library_detectors, mask, resolve
from tests.helpers_secrets import FORMATS, NOT_FORMATS

REPO = Path(__file__).resolve().parents[2]
TRACES = [REPO / "traces" / "scheduler-stall", REPO / "traces" / "write-stall"]


def test_every_detector_of_the_installed_library_has_a_planted_sample() -> None:
    """GIVEN detect-secrets as installed WHEN its detectors are listed THEN each one (but public IPs, which are
    --redact-hosts' business) has a sample below: a new detector in a new version fails here until it has one."""
    assert set(library_detectors()) - NOT_FORMATS == set(FORMATS)


@pytest.mark.parametrize("detector", sorted(FORMATS))
def test_a_planted_value_is_masked_in_env_argv_log_lines_and_json(detector: str) -> None:
    """GIVEN a value in the detector's format under names that do not say TOKEN/KEY/SECRET WHEN it is written as
    an allow-listed variable, a withheld variable, a command-line argument, a log line and a JSON string THEN its
    secret part is in none of the outputs, and an allow-listed setting beside it stays readable."""
    value, part = FORMATS[detector]
    r = Redactor()
    env = {"VLLM_NOTE": value, "ALERTS_TARGET": value, "VLLM_LOGGING_LEVEL": "DEBUG", "CUDA_VISIBLE_DEVICES": "0,1"}
    r.add_known(r.env_secrets(env))
    shown = r.env(env)
    assert shown["ALERTS_TARGET"] == WITHHELD
    assert shown["VLLM_LOGGING_LEVEL"] == "DEBUG" and shown["CUDA_VISIBLE_DEVICES"] == "0,1"
    outputs = [
        json.dumps(shown),
        json.dumps(r.argv(["vllm", "serve", "m", "--notify", value, f"--notify={value}", value])),
        r.text(f"(APIServer pid=7) INFO 11-28 17:00:00 [x.py:1] alerts go to {value} now\n"
               f"(APIServer pid=7) DEBUG env ALERTS_TARGET={value}\n"),
        json.dumps(r.obj({"notify": {"url": value, "list": ["a", value]}})),
    ]
    for out in outputs:
        assert part not in out, out
    assert MASK in outputs[1] and MASK in outputs[2]
    assert r.report()["total"] > 0


# Text a bundle holds that must survive redaction unchanged: it is the evidence.
EVIDENCE = """\
(APIServer pid=4242) INFO 11-28 17:08:02 [loggers.py:335] Engine 000: Avg prompt throughput: 1096.8 tokens/s, \
Avg generation throughput: 3385.2 tokens/s, Running: 31 reqs, Waiting: 0 reqs, GPU KV cache usage: 0.4%
(EngineCore pid=4300) DEBUG 11-28 17:08:03 [core.py:88] Added request cmpl-9f1c0a7e2b3d4c5e6f708192a3b4c5d6-0-1a2b3c4d
(EngineCore pid=4300) DEBUG Finished request chatcmpl-6f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8
{"kv_transfer_params": {"hidden_states_path": "/dev/shm/hs/cmpl-9f1c0a7e2b3d4c5e6f708192a3b4c5d6-0-1a2b3c4d.safetensors"}}
/dev/shm/repro-hs/cmpl-aacc5cca88954adb.safetensors.lock
  "sha256": "ad987e1eb8e305ff52b0afcdd81e5f4c6e22419ce6b74fd94dcdaa09baf1c2d3",
  "signature": "6a64e85b59ad",
Thread 0x7F3A2B1C4D5E (idle): "MainThread"
    0x00007f3a2b1c4d5e (libc.so.6)
    _PyEval_EvalFrameDefault (libpython3.11.so.1.0)
    cuEventSynchronize (libcuda.so.570.86.15)
/root/.cache/huggingface/hub/models--meta-llama--Llama-3.1-8B-Instruct/snapshots/0e9e39f249a16976918f6564b8830bc894c89659/config.json
/root/.cache/vllm/torch_compile_cache/4a2f9b8c1d/rank_0_0/backbone
/tmp/torchinductor_root/c7/cc7xkqz4ytb3rjpkl2t6dmhgx5uwoxsnu3r7y7k2vq5s4bcfnvjp.py
vllm @ git+https://github.com/vllm-project/vllm@8f4e3c2a1b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f
container 5e8c8f4a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccd
GPU 0: NVIDIA H200 (UUID: GPU-5e8c8f4a-1b2c-3d4e-5f60-718293a4b5c6)
ThreadPoolExecutor-4_0 asyncio_0 MultiprocWorkerMonitor process_input_sockets
vllm/distributed/device_communicators/shm_broadcast.py:512 multiproc_executor
11/site-packages/vllm/v1/executor/multiproc_executor
non-default args: {'model': '/root/.cache/repro/tiny-llama-v1', 'api_key': None, 'max_model_len': 2048}
vllm serve m --max-num-batched-tokens 2048 --tokenizer foo --max-tokens 16 --seed 1234567890
detect-secrets==1.5.0
tiktoken==0.14.0
torch==2.13.0+cpu
"""


def test_hashes_request_ids_hidden_state_files_and_addresses_are_not_masked() -> None:
    """GIVEN the kinds of text a bundle is made of (stats lines, request ids, hidden-state file names, sha256 and
    signatures in the manifest, py-spy addresses, model snapshot and compile-cache paths, GPU UUIDs, pip freeze
    lines of packages whose names say token or secret) WHEN scanned
    THEN nothing is found."""
    found = resolve(Scanner().find(EVIDENCE))
    assert [(f.rule, EVIDENCE[f.start:f.end]) for f in found] == []


def test_the_real_trace_bundles_hold_no_false_positive() -> None:
    """The two bundles in traces/ were made from real vLLM runs and hold no secret: every file scanned, 0 found."""
    sc = Scanner()
    found = []
    for root in TRACES:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix != ".png":
                t = p.read_text()
                found += [(str(p.relative_to(REPO)), f.rule, t[f.start:f.end][:12]) for f in resolve(sc.find(t))]
    assert found == []


def test_a_random_credential_in_plain_text_is_found_by_the_entropy_detectors() -> None:
    """No format, no telling name: a 32-character random token and a 40-character hex string are still found."""
    text = "POST https://hooks.example.com/notify/Zq8vN3xK7pW2mR5tY9bC4hJ6gF1dS0aE ok; id=9f4c2e7a1b3d5f6071829a3b4c5d6e7f8091a2b3\n"
    spans = resolve(Scanner().find(text))
    out = mask(text, spans)
    assert "Zq8vN3xK7pW2mR5tY9bC4hJ6gF1dS0aE" not in out
    assert "https://hooks.example.com/notify/" in out  # only the random part goes
    assert "9f4c2e7a1b3d5f6071829a3b4c5d6e7f8091a2b3" in out  # 40 hex digits: a hash's length, kept


def _plain_find(scanner: Scanner, text: str) -> list[tuple[str, int, int]]:
    """What the scanner finds with every gate open (every detector on every line)."""
    import repro.secrets.prefilter as pf

    saved = pf.Gate.lines
    pf.Gate.lines = lambda self, t: None  # type: ignore[method-assign]
    try:
        return sorted((f.rule, f.start, f.end) for f in scanner.find(text))
    finally:
        pf.Gate.lines = saved  # type: ignore[method-assign]


def test_the_line_prefilter_never_changes_what_is_found() -> None:
    """GIVEN the trace bundles, the evidence corpus and every planted sample, alone and inside log lines WHEN
    scanned with the literal prefilter and with every detector on every line THEN the findings are the same."""
    sc = Scanner()
    texts = [EVIDENCE] + [p.read_text() for root in TRACES for p in sorted(root.rglob("*"))
                          if p.is_file() and p.suffix != ".png"]
    for v, _ in FORMATS.values():
        texts += [v, f"x\nINFO line {v} end\nnext line\n", json.dumps({"a": v}, indent=1)]
    for t in texts:
        assert sorted((f.rule, f.start, f.end) for f in sc.find(t)) == _plain_find(sc, t)


def test_required_literals_are_read_from_the_pattern() -> None:
    """The prefilter reads literal sets out of compiled patterns: alternations, optional characters, classes."""
    assert required(re.compile(r"xox(?:a|b)-\d+")) == (frozenset({"xoxa-", "xoxb-"}),)
    assert required(re.compile(r"(?i)api_?key=")) == (frozenset({"apikey=", "api_key="}),)
    assert required(re.compile(r"AP[\dA-C]x")) == (frozenset({f"AP{c}x" for c in "0123456789ABC"}),)
    assert required(re.compile(r"[a-z]+=\d+")) == ()  # nothing of two characters is required
    t = Text("alpha\nxoxb-12\nomega xoxa-3\n")
    assert Gate([re.compile(r"xox(?:a|b)-\d+")]).lines(t) == [1, 2]


def test_repro_rules_catch_what_the_library_does_not() -> None:
    """vLLM's echo of --api-key, a secret flag, a secret-named assignment, bearer values and whole PEM blocks are
    repro's own rules (the library finds none of these shapes, or only the BEGIN line of a key)."""
    names = {r.name for r in REPRO_RULES}
    assert {"secret_flag", "secret_name", "bearer", "private_key", "url_credentials"} <= names
    r = Redactor()
    text = ("non-default args: {'api_key': ['plainApiKey77'], 'port': 8000}\n"
            "vllm serve m --api-key myPlainKey123\n"
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAB3NzaPlantedBody\n-----END OPENSSH PRIVATE KEY-----\n")
    out = r.text(text)
    for s in ("plainApiKey77", "myPlainKey123", "AAAAB3NzaPlantedBody"):
        assert s not in out
    assert "'port': 8000" in out


def test_a_secret_seen_once_is_masked_wherever_it_appears_later() -> None:
    """A value found by a detector in one text is masked in the next text too, even where no rule would find it."""
    r = Redactor()
    slack = FORMATS["SlackDetector"][0]
    r.text(f"webhook {slack}")
    token = slack.rsplit("/", 1)[1]
    assert token not in r.text(f"the last part alone: {token}")
