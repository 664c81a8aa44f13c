"""``--workload speculators``: the requests of speculators' hidden-state client, reproduced.

What ``speculators generate-offline-data`` (speculators 0.9.0,
``speculators/data_generation/vllm_client.py`` and ``cli/generate_offline_data.py``) does per
sample, and therefore what this workload does:

* ``GET /v1/models`` once; the first model's id is the model of every request.
* A text sample: ``POST /v1/completions`` ``{"model", "prompt": [token ids], "max_tokens": 1,
  "return_token_ids": true}``; a sample with chat messages: ``POST /v1/chat/completions``
  ``{"model", "messages", "max_tokens": 1, "add_generation_prompt": false,
  "continue_final_message": <true for Mistral models>, "return_token_ids": true}``. Serialised
  like the OpenAI SDK (compact separators, UTF-8), with ``Authorization: Bearer EMPTY``.
* Each attempt has 120 s in all (``--request-timeout``); a failed attempt (timeout, connection
  error, any HTTP error status, 4xx included) is retried ``--retries`` (3) times, after
  2, 4, 8 ... s (``2 ** attempt``, attempt counted from 1). The concurrency slot stays held
  during the back-off, as speculators' semaphore does.
* A 200 answer is checked without retrying it (``InvalidResponseError``): the prompt token ids
  must be in the response and equal the sample's, and ``kv_transfer_params`` must carry a
  ``hidden_states_path`` or a ``handle``.
* If ``<path>.lock`` exists: poll ``flock(LOCK_EX | LOCK_NB)`` every 0.1 s for at most 10 s,
  then remove the lock file. On timeout the sample is skipped and both files stay behind.
  Then the file is moved away (``--consume``); a file that is not there fails the sample.
* After ``--max-consecutive-errors`` (default: ``--concurrency``) failed samples in a row with
  no success in between, the client gives up: everything in flight is cancelled.

speculators does not read the files unless ``--validate-outputs``; repro verifies each one (and
reports a bad file) but, like speculators, does not count a bad file as a failed sample.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repro.load.prompts import CHAT, Prompt

if TYPE_CHECKING:
    from repro.hsfiles.checker import CheckResult, FileChecker

SPECULATORS = "speculators"
SPECULATORS_VERSION = "0.9.0"  # the client reproduced here (vllm_client.py of that release)
DEFAULT_REQUEST_TIMEOUT = 120.0  # vllm_client.DEFAULT_REQUEST_TIMEOUT
DEFAULT_MAX_RETRIES = 3  # vllm_client.DEFAULT_MAX_RETRIES
RETRY_BACKOFF_BASE = 2  # vllm_client.RETRY_BACKOFF_BASE
LOCK_TIMEOUT = 10.0  # wait_for_lock_async(timeout=10.0)
LOCK_POLL = 0.1  # wait_for_lock_async(poll_interval=0.1)
API_KEY = "EMPTY"  # openai.AsyncOpenAI(api_key="EMPTY")
_OPEN_FINAL_TURN_MODEL_MARKERS = ("mistral",)  # vllm_client._OPEN_FINAL_TURN_MODEL_MARKERS


def backoff(attempt: int) -> float:
    """Seconds slept after failed attempt ``attempt`` (1-based) before the next one: 2, 4, 8, ..."""
    return float(RETRY_BACKOFF_BASE ** attempt)


def continue_final_message(model: str) -> bool:
    """speculators leaves the final chat turn open for Mistral models (basename match)."""
    name = model.rsplit("/", 1)[-1].lower()
    return any(marker in name for marker in _OPEN_FINAL_TURN_MODEL_MARKERS)


def dumps(body: dict[str, Any]) -> bytes:
    """The OpenAI SDK's serialisation (openai._utils._json.openapi_dumps)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def request_body(prompt: Prompt, model: str) -> tuple[str, dict[str, Any]]:
    """(URL path, body) of one sample, key for key as the OpenAI SDK builds it for speculators."""
    if prompt.kind == CHAT:
        return "/v1/chat/completions", {
            "model": model, "messages": prompt.as_messages(), "max_tokens": 1,
            "add_generation_prompt": False, "continue_final_message": continue_final_message(model),
            "return_token_ids": True}
    if prompt.tokens is None:
        raise ValueError("speculators sends token ids: a text prompt has none (tokenize it first)")
    return "/v1/completions", {"model": model, "prompt": list(prompt.tokens), "max_tokens": 1,
                               "return_token_ids": True}


class InvalidResponse(Exception):
    """A 200 answer speculators rejects without retrying (its InvalidResponseError)."""


def validate(data: dict[str, Any], token_ids: list[int] | tuple[int, ...] | None, chat: bool) -> tuple[str, dict[str, Any]]:
    """speculators' extract_output: (handle, kv_transfer_params), or InvalidResponse.

    ``token_ids`` None (a chat prompt without the sample's ids) skips the comparison speculators makes."""
    if chat:
        ids = data.get("prompt_token_ids")
    else:
        choices = data.get("choices") or [{}]
        ids = choices[0].get("prompt_token_ids") if isinstance(choices[0], dict) else None
    if ids is None:
        raise InvalidResponse("Response missing prompt_token_ids")
    if token_ids is not None and list(ids) != list(token_ids):
        raise InvalidResponse(f"Prompt token IDs mismatch: expected {len(token_ids)} ids, got {len(ids)} that differ")
    kv = data.get("kv_transfer_params")
    if kv is None:
        raise InvalidResponse("Response missing kv_transfer_params")
    handle = (kv.get("hidden_states_path") or kv.get("handle")) if isinstance(kv, dict) else None
    if handle is None:
        raise InvalidResponse("Response kv_transfer_params missing both 'hidden_states_path' and 'handle'")
    return str(handle), kv


@dataclass
class LockWait:
    seconds: float
    timed_out: bool
    removed: bool  # the lock file was removed (speculators removes it once it holds the lock)
    error: str | None = None


def wait_for_lock(lock_path: str, timeout: float = LOCK_TIMEOUT, poll: float = LOCK_POLL,
                  abandon: Any = None) -> LockWait:
    """speculators' wait_for_lock(_async): take LOCK_EX (non-blocking, every ``poll`` s, ``timeout`` s at most),
    release it and remove the lock file. On timeout both the lock file and the data file stay.
    ``abandon`` (a threading.Event): the run is over, stop waiting (counted as a timeout)."""
    t0 = time.monotonic()
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:  # speculators checks exists() first; gone in between: nothing to wait for
        return LockWait(0.0, False, False)
    except OSError as exc:
        return LockWait(0.0, False, False, f"{type(exc).__name__}: {exc}")
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return LockWait(time.monotonic() - t0, False, False, f"{type(exc).__name__}: {exc}")
            if time.monotonic() - t0 >= timeout or (abandon is not None and abandon.is_set()):
                return LockWait(time.monotonic() - t0, True, False)
            time.sleep(poll)
    finally:
        os.close(fd)
    try:
        os.remove(lock_path)
        removed = True
    except FileNotFoundError:
        removed = False
    return LockWait(time.monotonic() - t0, False, removed)


class FailureTracker:
    """speculators' _FailureTracker: consecutive failed samples (a success resets); True at the threshold."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.consecutive = 0
        self.peak = 0

    def success(self) -> None:
        self.consecutive = 0

    def failure(self) -> bool:
        self.consecutive += 1
        self.peak = max(self.peak, self.consecutive)
        return self.consecutive >= self.threshold


# Errors that fail a sample for speculators (its worker skips the sample and counts an error). A file that is
# there but bad is not among them: speculators only reads files with --validate-outputs.
SAMPLE_FAILURES = frozenset({"lock-timeout", "file-missing", "consume-failed", "invalid-response", "unreadable-lock"})


def check_prompts(prompts: list[Prompt], path: str) -> None:
    """speculators sends token ids (or chat messages): a text prompt cannot be sent its way."""
    from repro.errors import UsageError

    bad = next((p for p in prompts if p.kind != CHAT and p.tokens is None), None)
    if bad is not None:
        raise UsageError(f"--prompts {path}: line {bad.line}: --workload speculators sends token ids (or chat "
                         f"messages with their token ids), not text",
                         help='Give the line as {"prompt_token_ids": [...]} (what speculators\' prepare-data writes '
                              'as input_ids), or {"messages": [...], "prompt_token_ids": [...]}.')


def check_after_lock(checker: "FileChecker", path: str, prompt_ids: tuple[int, ...] | list[int] | None,
                     exact: bool = True) -> "CheckResult":
    """speculators' order: if ``<path>.lock`` exists, take LOCK_EX (0.1 s polls, 10 s at most) and remove the
    lock file, then verify and consume with ``checker``. A lock held past 10 s fails the sample and leaves both
    files."""
    from repro.hsfiles.checker import CheckResult

    t0 = time.perf_counter()
    lock_path = path + ".lock"
    waited = wait_for_lock(lock_path, abandon=checker.abandon) if os.path.exists(lock_path) else None
    if waited is not None and waited.timed_out:
        return CheckResult(False, "lock-timeout", f"the writer held {lock_path} for over {LOCK_TIMEOUT:g} s: "
                           "speculators skips the sample and leaves the file and its lock behind",
                           seconds=time.perf_counter() - t0, lock_wait=waited.seconds)
    if waited is not None and waited.error:
        return CheckResult(False, "unreadable-lock", f"{lock_path}: {waited.error}", seconds=time.perf_counter() - t0)
    res = checker.check(path, prompt_ids, exact)
    res.lock_wait += waited.seconds if waited is not None else 0.0
    res.seconds = time.perf_counter() - t0
    return res
