"""Workloads: how a prompt becomes an HTTP request, and which requests carry a hidden-state file.

``hidden-states``: ``/v1/completions`` with the prompt (token ids when synthetic), ``max_tokens=1``,
``return_token_ids``; the response names a safetensors file (``kv_transfer_params.hidden_states_path``)
holding ``hidden_states`` ``[prompt_tokens, layers, hidden]`` and ``token_ids`` ``[prompt_tokens]``.
``chat``: ``/v1/chat/completions`` with ``--max-tokens``. With extraction on, vLLM writes a file
for chat requests too; it is checked and consumed the same way, so storage never fills.
``mixed:RATIO``: each request is hidden-states with probability RATIO (seeded), chat otherwise.
``speculators``: the requests of speculators' client, retries and give-up included (:mod:`repro.load.speculators`).
A response whose ``kv_transfer_params`` carries a ``handle`` instead of a path (hs-connectors' Mooncake
connector) names an object in a store: it is recorded and counted, there is no file to check.

The response is read by :func:`repro.hsfiles.response.read_response` and its file verified by
:class:`repro.hsfiles.checker.FileChecker` (shared with ``repro watch``'s probe).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from repro.errors import UsageError
from repro.load import codec
from repro.load.prompts import CHAT, Prompt

HIDDEN_STATES, CHAT_WL, SPECULATORS = "hidden-states", "chat", "speculators"


@dataclass(frozen=True)
class Workload:
    """The parsed --workload: share of hidden-states requests (1.0, 0.0 or the mixed ratio)."""

    hs_ratio: float
    client: str = "repro"  # whose request shape: repro's, or speculators' (SPECULATORS)

    @classmethod
    def parse(cls, text: str) -> "Workload":
        if text == HIDDEN_STATES:
            return cls(1.0)
        if text == SPECULATORS:
            return cls(1.0, SPECULATORS)
        if text == CHAT_WL:
            return cls(0.0)
        if text.startswith("mixed:"):
            try:
                r = float(text.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--workload {text!r}: RATIO must be a number between 0 and 1") from None
            if 0.0 <= r <= 1.0:
                return cls(r)
        raise UsageError(f"--workload {text!r}: use hidden-states, chat, speculators or mixed:RATIO (RATIO in 0..1)")

    def pick(self, rng: random.Random) -> str:
        if self.client == SPECULATORS:
            return SPECULATORS
        if self.hs_ratio >= 1.0:
            return HIDDEN_STATES
        if self.hs_ratio <= 0.0:
            return CHAT_WL
        return HIDDEN_STATES if rng.random() < self.hs_ratio else CHAT_WL


@dataclass(frozen=True)
class PreparedRequest:
    seq: int
    kind: str  # hidden-states | chat | speculators
    path: str  # URL path
    body: bytes
    prompt_tokens: tuple[int, ...] | None  # what the file's token_ids must equal (None: take it from the response)
    prompt_len: int | None


def prepare(seq: int, prompt: Prompt, kind: str, model: str, max_tokens: int) -> PreparedRequest:
    """Build the request body (JSON bytes) for one prompt."""
    if kind == SPECULATORS:
        from repro.load import speculators

        path, sbody = speculators.request_body(prompt, model)
        ids = prompt.tokens  # speculators compares the response's prompt ids with the sample's input_ids
        return PreparedRequest(seq, kind, path, speculators.dumps(sbody), ids, len(ids) if ids is not None else None)
    if kind == HIDDEN_STATES and prompt.kind != CHAT:
        body: dict[str, object] = {"model": model, "max_tokens": 1, "return_token_ids": True}
        if prompt.tokens is not None:
            body["prompt"] = list(prompt.tokens)
        else:
            body["prompt"] = prompt.text
        path = "/v1/completions"
    else:
        mt = 1 if kind == HIDDEN_STATES else max_tokens
        body = {"model": model, "messages": prompt.as_messages(), "max_tokens": mt, "return_token_ids": True}
        if kind != HIDDEN_STATES:
            body["ignore_eos"] = True
        path = "/v1/chat/completions"
    sent_ids = prompt.tokens if path == "/v1/completions" else None  # chat: the server applies its template
    n = len(sent_ids) if sent_ids is not None else None
    return PreparedRequest(seq, kind, path, codec.dumps(body), sent_ids, n)  # compact, UTF-8, as json.dumps writes it
