"""The served model's context limit, and prompt lengths clipped to it.

vLLM answers HTTP 400 to a request whose prompt plus ``max_tokens`` exceeds the
model's ``max_model_len``. The default ``--prompt-len 128-2048`` against a server
started with ``--max-model-len 2048`` would send such requests, and each one is
a request that tests nothing. The limit comes from ``/v1/models`` (vLLM lists
``max_model_len`` per model) or, when that does not say, from the launch command
of a server repro started (``--max-model-len N``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

FROM_MODELS = "/v1/models"
FROM_LAUNCH = "the launch settings"
# Room kept beside the prompt: the generated tokens and the speculative token of extract_hidden_states.
SPECULATIVE_MARGIN = 1


def from_model_card(card: dict[str, Any] | None) -> int | None:
    """``max_model_len`` of one entry of /v1/models (None when absent or not a positive integer)."""
    v = (card or {}).get("max_model_len")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def from_argv(argv: Sequence[str] | None) -> int | None:
    """The last ``--max-model-len N`` (or ``--max-model-len=N``) of a vllm serve command line."""
    found = None
    args = list(argv or [])
    for i, a in enumerate(args):
        value = None
        if a == "--max-model-len" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--max-model-len="):
            value = a.split("=", 1)[1]
        if value is not None:
            try:
                n = int(value)
            except ValueError:
                continue
            if n > 0:
                found = n
    return found


@dataclass(frozen=True)
class PromptClip:
    """The prompt lengths a run uses, and why."""

    asked: tuple[int, int]
    used: tuple[int, int]
    max_model_len: int | None
    source: str | None
    reserve: int  # tokens kept free beside the prompt

    @property
    def clipped(self) -> bool:
        return self.used != self.asked

    @property
    def max_prompt(self) -> int | None:
        return None if self.max_model_len is None else max(1, self.max_model_len - self.reserve)

    def line(self) -> str | None:
        """The one line that says the lengths were clipped (None when they were not)."""
        if not self.clipped:
            return None
        lo, hi = self.asked
        return (f"prompt lengths clipped to {self.used[0]}-{self.used[1]} tokens (asked {lo}-{hi}): the server's "
                f"max_model_len is {self.max_model_len} (from {self.source}) and each request needs "
                f"{self.reserve} more token(s)")

    def file_line(self, path: str, longest: int) -> str | None:
        """The line for a prompts file whose longest token-id prompt is `longest` (None when all fit)."""
        cap = self.max_prompt
        if cap is None or longest <= cap:
            return None
        return (f"token-id prompts of {path} longer than {cap} tokens are cut to {cap} (the longest has {longest}): "
                f"the server's max_model_len is {self.max_model_len} (from {self.source}) and each request needs "
                f"{self.reserve} more token(s)")

    def to_dict(self) -> dict[str, Any]:
        return {"asked": list(self.asked), "used": list(self.used), "clipped": self.clipped,
                "max_model_len": self.max_model_len, "source": self.source, "reserve_tokens": self.reserve,
                "max_prompt_tokens": self.max_prompt}


def clip(prompt_len: tuple[int, int], max_model_len: int | None, source: str | None, max_tokens: int) -> PromptClip:
    """Clip LO-HI so that a prompt plus ``max_tokens`` (plus the speculative token) fits ``max_model_len``."""
    reserve = max(1, max_tokens) + SPECULATIVE_MARGIN
    lo, hi = prompt_len
    if max_model_len is None:
        return PromptClip((lo, hi), (lo, hi), None, None, reserve)
    cap = max(1, max_model_len - reserve)
    new_hi = min(hi, cap)
    return PromptClip((lo, hi), (min(lo, new_hi), new_hi), max_model_len, source, reserve)
