"""Prompts: synthetic token ids from a seed, or a JSON-lines file of text, chat messages or token ids.

A prompts file has one JSON value per line (blank lines and lines starting with
``#`` are skipped)::

    {"prompt": "The quick brown fox"}            text (English, Chinese, anything UTF-8)
    {"messages": [{"role": "user", "content": "你好"}]}   chat messages
    {"messages": [...], "prompt_token_ids": [...]}   chat messages and their rendered ids (--workload speculators)
    {"prompt_token_ids": [1, 2, 3]}              token ids (also "token_ids", or "prompt": [ints])
    "a bare string"  /  [1, 2, 3]                text / token ids

A line that is none of these raises :class:`UsageError` naming the file and line.

A directory written by ``speculators prepare-data`` (a Hugging Face ``datasets`` dataset saved
with ``save_to_disk``, one ``input_ids`` row per sample) gives the same samples, in the same order,
that ``speculators generate-offline-data --preprocessed-data DIR`` sends (needs ``datasets``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from repro.errors import UsageError

TOKENS, TEXT, CHAT = "tokens", "text", "chat"

# Synthetic chat/text prompts: plain words, so any tokenizer takes them.
_WORDS = ("the of and to in is was for on that with as by at from his an were are which this be has or had "
          "one their not but first new also after who two its time more year over into only other years most "
          "some made when can than state may world three many would team all up between season she film used "
          "during there city school such where known being him school engine stall token queue batch request").split()


@dataclass(frozen=True)
class Prompt:
    kind: str  # tokens | text | chat
    tokens: tuple[int, ...] | None = None
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    line: int | None = None  # line number in the prompts file

    def as_text(self) -> str:
        """Text for a chat request when the prompt is not chat already."""
        if self.text is not None:
            return self.text
        if self.messages:
            return " ".join(m.get("content", "") for m in self.messages)
        return " ".join(_WORDS[t % len(_WORDS)] for t in (self.tokens or ()))

    def as_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.as_text()}]


def _bad(path: str, lineno: int, what: str) -> UsageError:
    return UsageError(f"--prompts {path}: line {lineno}: {what}",
                      help="Each line must be JSON: {\"prompt\": \"text\"}, {\"messages\": [{\"role\": \"user\", "
                           "\"content\": \"...\"}]} or {\"prompt_token_ids\": [1, 2, 3]}.")


def _token_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def parse_prompt_line(value: Any, path: str, lineno: int) -> Prompt:
    if isinstance(value, str):
        if not value:
            raise _bad(path, lineno, "empty prompt")
        return Prompt(TEXT, text=value, line=lineno)
    if isinstance(value, list):
        if _token_list(value):
            return Prompt(TOKENS, tokens=tuple(value), line=lineno)
        raise _bad(path, lineno, "a list must be non-empty token ids (non-negative integers)")
    if not isinstance(value, dict):
        raise _bad(path, lineno, f"expected an object, a string or a list, got {type(value).__name__}")
    if "messages" in value:
        msgs = value["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise _bad(path, lineno, "\"messages\" must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise _bad(path, lineno, f"messages[{i}] must be {{\"role\": str, \"content\": str}}")
            out.append({"role": m["role"], "content": m["content"]})
        ids = value.get("prompt_token_ids", value.get("input_ids"))
        if ids is not None and not _token_list(ids):
            raise _bad(path, lineno, "\"prompt_token_ids\" beside \"messages\" must be non-empty token ids")
        # with ids: the rendered prompt's token ids, which speculators compares with the response's
        return Prompt(CHAT, messages=tuple(out), tokens=tuple(ids) if ids is not None else None, line=lineno)
    for key in ("prompt_token_ids", "token_ids"):
        if key in value:
            if not _token_list(value[key]):
                raise _bad(path, lineno, f"\"{key}\" must be non-empty token ids (non-negative integers)")
            return Prompt(TOKENS, tokens=tuple(value[key]), line=lineno)
    for key in ("prompt", "text"):
        if key in value:
            v = value[key]
            if isinstance(v, str) and v:
                return Prompt(TEXT, text=v, line=lineno)
            if _token_list(v):
                return Prompt(TOKENS, tokens=tuple(v), line=lineno)
            raise _bad(path, lineno, f"\"{key}\" must be a non-empty string or token ids")
    raise _bad(path, lineno, "no \"prompt\", \"messages\" or \"prompt_token_ids\" key")


def load_prompts_dataset(path: str | Path) -> list[Prompt]:
    """The samples of a speculators preprocessed dataset (``input_ids`` per row), in order."""
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--prompts {path}: a dataset directory needs the `datasets` package",
                         help="pip install datasets (speculators installs it), or give a JSON-lines file.") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError and its own errors for a bad directory
        raise UsageError(f"--prompts {path}: not a dataset saved by `datasets` ({type(exc).__name__}: {exc})") from None
    if "input_ids" not in ds.column_names:
        raise UsageError(f"--prompts {path}: the dataset has no input_ids column (columns: {', '.join(ds.column_names)})")
    out = []
    for i, ids in enumerate(ds.with_format(None)["input_ids"]):
        if not _token_list(ids):
            raise UsageError(f"--prompts {path}: row {i}: input_ids must be non-empty token ids")
        out.append(Prompt(TOKENS, tokens=tuple(ids), line=i))
    if not out:
        raise UsageError(f"--prompts {path}: the dataset has no rows")
    return out


def load_prompts_file(path: str | Path) -> list[Prompt]:
    """Read and validate every line; raise UsageError naming the first bad line."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "state.json").is_file():
        return load_prompts_dataset(p)
    if not p.is_file():
        raise UsageError(f"--prompts {path}: no such file")
    out: list[Prompt] = []
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise _bad(str(path), lineno, "not UTF-8") from None
            if not line or line.startswith("#"):
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(str(path), lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            out.append(parse_prompt_line(value, str(path), lineno))
    if not out:
        raise UsageError(f"--prompts {path}: the file has no prompts")
    return out


class PromptSource:
    """An endless, deterministic stream of prompts: the file's prompts in a cycle, or synthetic ones.

    Synthetic prompts are token ids drawn uniformly from ``[low_id, vocab_size)`` with a length drawn
    uniformly from ``prompt_len`` (inclusive), all from ``seed``: the same seed gives the same prompts.
    """

    def __init__(self, seed: int, prompt_len: tuple[int, int], vocab_size: int,
                 prompts: list[Prompt] | None = None, low_id: int = 4, max_prompt: int | None = None) -> None:
        if vocab_size <= low_id + 1:
            raise UsageError(f"--vocab-size {vocab_size}: too small for synthetic prompts")
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.prompt_len = prompt_len
        self.vocab_size = vocab_size
        self.low_id = low_id
        self.prompts = prompts
        self.max_prompt = max_prompt  # token-id prompts from the file are cut to this many tokens
        self.truncated = 0  # file prompts cut so far
        self._i = 0

    def next(self) -> Prompt:
        if self.prompts:
            p = self.prompts[self._i % len(self.prompts)]
            self._i += 1
            if self.max_prompt is not None and p.tokens is not None and len(p.tokens) > self.max_prompt:
                self.truncated += 1
                return Prompt(TOKENS, tokens=p.tokens[: self.max_prompt], line=p.line)
            return p
        n = self.rng.randint(*self.prompt_len)
        return Prompt(TOKENS, tokens=tuple(self.np_rng.integers(self.low_id, self.vocab_size, n).tolist()))
