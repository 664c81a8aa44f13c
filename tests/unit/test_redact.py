"""Redaction: what is hidden, what stays readable, and that the manifest report never holds a value."""

from __future__ import annotations

import json

import pytest

from repro.secrets.redact import MASK, WITHHELD, Redactor, argv_secrets, secret_name


@pytest.mark.parametrize("name", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "VLLM_API_KEY", "PASSWORD",
                                  "db_passwd", "AWS_SECRET_ACCESS_KEY", "GITHUB_AUTH", "private_key", "SESSION_COOKIE",
                                  "MY_CREDENTIALS", "api-key", "BEARER"])
def test_secret_names_are_recognised(name: str) -> None:
    """A variable whose name says it holds a secret has its value hidden."""
    assert secret_name(name)


@pytest.mark.parametrize("name", ["PATH", "PWD", "OLDPWD", "max_tokens", "prompt_tokens_total", "tokenizer",
                                  "TOKENIZERS_PARALLELISM", "max-num-batched-tokens", "token_ids", "KEYBOARD",
                                  "MONKEY", "VLLM_LOGGING_LEVEL", "PYTHONPATH"])
def test_setting_names_stay_readable(name: str) -> None:
    """Names about token counts, tokenizers or paths are settings, not secrets."""
    assert not secret_name(name)


@pytest.mark.parametrize("text,secret", [
    ("token hf_abcdefghijklmnopqrstuvwxyz0123 here", "hf_abcdefghijklmnopqrstuvwxyz0123"),
    ("key=sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX", "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX"),
    ('curl -H "Authorization: Bearer eyAbc.def-123456"', "eyAbc.def-123456"),
    ("vllm serve m --api-key myPlainKey123 --port 1", "myPlainKey123"),
    ("vllm serve m --api-key=myPlainKey123", "myPlainKey123"),
    ("s3://user:hunter2pw@bucket.example.com/x", "hunter2pw"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAB3Nza\n-----END OPENSSH PRIVATE KEY-----", "AAAAB3Nza"),
    ("non-default args: {'api_key': ['plainApiKey77'], 'port': 8000}", "plainApiKey77"),
    ('{"password": "hunter22"}', "hunter22"),
    ("HF_TOKEN=abc123def456 python x.py", "abc123def456"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
])
def test_values_are_removed_wherever_they_appear(text: str, secret: str) -> None:
    """GIVEN a text holding a secret in a known shape WHEN redacted THEN the secret is gone and a mask is there."""
    out = Redactor().text(text)
    assert secret not in out
    assert MASK in out


def test_ordinary_log_and_stack_text_is_unchanged() -> None:
    """Stats lines, stacks and flags about token counts must stay as they are (analysis reads them)."""
    text = ("(APIServer pid=1) INFO [loggers.py:335] Engine 000: Avg prompt throughput: 10.0 tokens/s, Running: 3 reqs\n"
            "    EngineCore.step (vllm/v1/engine/core.py:674)\n"
            "vllm serve m --max-num-batched-tokens 2048 --tokenizer foo --max-tokens 16 "
            '{"max_tokens": 16, "stream": false, "session_id": 3}\n')
    r = Redactor()
    assert r.text(text) == text
    assert r.report()["total"] == 0


def test_known_secret_values_are_removed_in_any_context() -> None:
    """A value the caller knows is secret (the API key, a secret env value) is removed even in free text."""
    r = Redactor(extra_values=["zz-plain-secret-zz"])
    assert "zz-plain-secret-zz" not in r.text("the key was zz-plain-secret-zz, see")
    assert r.report()["rules"]["known_secret"] == 1


def test_env_keeps_allow_listed_settings_scans_them_and_withholds_every_other_value() -> None:
    """GIVEN a server environment WHEN redacted THEN settings on the allow-list are readable (their values still
    scanned), proxy credentials are removed, and every other variable is listed by name with its value withheld."""
    r = Redactor()
    env = r.env({"HF_TOKEN": "x1234567", "PATH": "/usr/bin", "DB": "mysql://u:pw99@h/db", "EMPTY_TOKEN": "",
                 "VLLM_LOGGING_LEVEL": "DEBUG", "VLLM_NOTE": "mysql://u:pw99@h/db", "VLLM_API_KEY": "k",
                 "HTTPS_PROXY": "http://bob:hunter2@proxy.corp:3128", "no_proxy": "localhost"})
    assert env == {"HF_TOKEN": WITHHELD, "PATH": "/usr/bin", "DB": WITHHELD, "EMPTY_TOKEN": WITHHELD,
                   "VLLM_LOGGING_LEVEL": "DEBUG", "VLLM_NOTE": f"mysql://u:{MASK}@h/db", "VLLM_API_KEY": WITHHELD,
                   "HTTPS_PROXY": f"http://{WITHHELD}@proxy.corp:3128", "no_proxy": "localhost"}
    assert r.report()["rules"]["env_withheld"] == 4


def test_argv_masks_both_flag_forms_and_keeps_other_flags() -> None:
    r = Redactor()
    out = r.argv(["vllm", "serve", "--api-key", "k1k1k1", "--hf-token=t2t2t2", "--max-num-batched-tokens", "2048"])
    assert out == ["vllm", "serve", "--api-key", MASK, f"--hf-token={MASK}", "--max-num-batched-tokens", "2048"]
    assert argv_secrets(["x", "--api-key", "k1k1k1", "--hf-token=t2t2t2", "--port", "1"]) == ["k1k1k1", "t2t2t2"]


def test_obj_keeps_json_shape_and_numbers() -> None:
    """Structured redaction: secret-named string values masked, numbers untouched, result still valid JSON."""
    r = Redactor()
    data = {"api_key": "abcdef123", "rules": {"secret_name": 3}, "token_count": 5, "cmd": ["--api-key", "zzz9zzz9"],
            "nested": [{"password": "p4ssw0rd!"}]}
    out = r.obj(data)
    assert out["api_key"] == MASK and out["rules"] == {"secret_name": 3} and out["token_count"] == 5
    assert out["nested"][0]["password"] == MASK
    assert "zzz9zzz9" not in json.dumps(out)


def test_report_counts_rules_and_never_contains_values() -> None:
    r = Redactor()
    r.text("hf_abcdefghijklmnopqrstuvwxyz0123 and Bearer qwertyuiop123 and Bearer asdfghjkl456")
    rep = r.report()
    assert rep["rules"] == {"bearer": 2, "hf_token": 1}
    assert rep["total"] == 3
    blob = json.dumps(rep)
    for v in ("hf_abcdefghijklmnopqrstuvwxyz0123", "qwertyuiop123", "asdfghjkl456"):
        assert v not in blob


def test_host_mapping_is_consistent_and_optional() -> None:
    """With hosts=True the same host gets the same alias everywhere; loopback and code stay readable."""
    text = "connect gpu-7.corp.example.com 10.1.2.3 then gpu-7.corp.example.com; 127.0.0.1 threading.Thread.run"
    assert Redactor().text(text) == text  # off by default
    r = Redactor(hosts=True)
    out = r.text(text)
    assert "gpu-7.corp.example.com" not in out and "10.1.2.3" not in out
    assert out.count("host-1") == 2 and "ip-1" in out
    assert "127.0.0.1" in out and "threading.Thread.run" in out
    assert r.text("again gpu-7.corp.example.com") == "again host-1"


def test_host_mapping_holds_in_structures_and_command_lines_and_beside_masked_secrets() -> None:
    """--redact-hosts: a host gets the same alias in JSON strings, argv items and text, next to masked secrets."""
    r = Redactor(hosts=True)
    out = r.obj({"url": "https://bob:hunter2pw@gpu-7.corp.example.com/v1", "cmd": ["--host", "gpu-7.corp.example.com"]})
    assert out == {"url": "https://bob:[REDACTED]@host-1/v1", "cmd": ["--host", "host-1"]}
    assert r.text("ping gpu-7.corp.example.com") == "ping host-1"
