#!/usr/bin/env python3
"""Reproduce vLLM's orphaned hidden-state files: requests aborted after scheduling leave files nobody was given.

Python 3.9+ standard library only (no repro, no vLLM, no pip install). Start a stock vLLM with
hidden-state extraction, e.g.::

    vllm serve MODEL --max-model-len 2048 --no-enable-chunked-prefill \\
      --speculative-config '{"method":"extract_hidden_states","num_speculative_tokens":1,
        "draft_model_config":{"hf_config":{"eagle_aux_hidden_state_layer_ids":[2,4,5,8]}}}' \\
      --kv-transfer-config '{"kv_connector":"ExampleHiddenStatesConnector","kv_role":"kv_producer",
        "kv_connector_extra_config":{"shared_storage_path":"/dev/shm/hs"}}'

then::

    python3 reproduce_orphans.py --url http://127.0.0.1:8000 --storage /dev/shm/hs

It sends N completions (token-id prompts, max_tokens=1) with a client timeout short enough that many
are aborted after the engine scheduled them (a timed-out client closes its connection; vLLM aborts
the request), waits for late writes, and counts the ``.safetensors`` files and ``.lock`` files that
appeared in the storage directory and that no response named (``kv_transfer_params
.hidden_states_path``). Files present before it started are not counted. Nothing deletes such files:
over hours of client timeouts and retries they fill the store, and a full store kills the engine.

Exit codes: 0 no orphan left, 1 orphans left (the leak), 2 bad arguments or server unreachable,
3 the server stopped answering during the run (vLLM 0.24-0.26's ExampleHiddenStatesConnector dies
with KeyError in request_finished for requests aborted before they were scheduled, upstream #56841:
use a longer --timeout).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

DATA, LOCK = ".safetensors", ".lock"


def http_json(url: str, method: str = "GET", body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    u = urlparse(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port or (443 if u.scheme == "https" else 80), timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, u.path or "/", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw or b"{}")
        except ValueError:
            return resp.status, {"text": raw[:300].decode("utf-8", "replace")}
    finally:
        conn.close()  # on a timeout this closes the socket: vLLM sees the client leave and aborts the request


def listing(storage: str) -> set[str]:
    return {n for n in os.listdir(storage) if n.endswith((DATA, LOCK))}


class Load:
    def __init__(self, args: argparse.Namespace, model: str, prompt_len: int) -> None:
        self.args, self.model, self.prompt_len = args, model, prompt_len
        self.lock = threading.Lock()
        self.given: set[str] = set()  # basenames of files that responses named
        self.ok = self.timeouts = self.errors = self.refused = 0
        self.error_sample: str | None = None

    def one(self, i: int) -> None:
        rng = random.Random(self.args.seed * 1_000_003 + i)
        prompt = [rng.randrange(10, self.args.vocab) for _ in range(self.prompt_len)]
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1}
        try:
            status, data = http_json(self.args.url + "/v1/completions", "POST", body, timeout=self.args.timeout)
        except (socket.timeout, TimeoutError):
            with self.lock:
                self.timeouts += 1
            return
        except ConnectionRefusedError:
            with self.lock:
                self.refused += 1
            return
        except (OSError, http.client.HTTPException) as exc:
            with self.lock:
                self.errors += 1
                self.error_sample = self.error_sample or f"{type(exc).__name__}: {exc}"
            return
        path = ((data.get("kv_transfer_params") or {}).get("hidden_states_path")) if status == 200 else None
        with self.lock:
            if status == 200:
                self.ok += 1
                if path:
                    self.given.add(os.path.basename(path))
            else:
                self.errors += 1
                self.error_sample = self.error_sample or f"HTTP {status}: {json.dumps(data)[:200]}"


def settle(storage: str, wait: float) -> float:
    """Wait up to `wait` s for late writes (vLLM writes an aborted request's file after the abort): until the
    listing has not changed for 3 s."""
    t0 = time.monotonic()
    prev, stable = listing(storage), time.monotonic()
    while time.monotonic() - t0 < wait:
        time.sleep(0.5)
        cur = listing(storage)
        if cur != prev:
            prev, stable = cur, time.monotonic()
        elif time.monotonic() - stable >= 3.0:
            break
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Exit codes: 0 no orphan, 1 orphans left, 2 bad input / unreachable, "
                                        "3 the server stopped answering.")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the vLLM server")
    ap.add_argument("--storage", required=True, help="the connector's shared_storage_path (on this machine)")
    ap.add_argument("-n", "--requests", type=int, default=500, help="requests to send")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    ap.add_argument("--timeout", type=float, default=0.2,
                    help="client timeout in seconds (short: the request is aborted, often after scheduling)")
    ap.add_argument("--prompt-len", type=int, default=1024, help="prompt tokens (clipped to max_model_len - 2)")
    ap.add_argument("--vocab", type=int, default=500, help="token ids are drawn from 10..VOCAB-1")
    ap.add_argument("--wait", type=float, default=30.0, help="seconds to wait for late writes at the end")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="model id (default: the first of /v1/models)")
    ap.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write the result as JSON")
    ap.add_argument("--remove", action="store_true", help="delete the files this run created when done")
    args = ap.parse_args(argv)
    args.url = args.url.rstrip("/")
    if not os.path.isdir(args.storage):
        print(f"error: --storage {args.storage}: no such directory (it must be the server's shared_storage_path, "
              f"on this machine)", file=sys.stderr)
        return 2
    if args.requests < 1 or args.concurrency < 1 or args.timeout <= 0 or args.vocab <= 11:
        print("error: --requests and --concurrency must be >= 1, --timeout > 0, --vocab > 11", file=sys.stderr)
        return 2
    try:
        status, models = http_json(args.url + "/v1/models")
    except OSError as exc:
        print(f"error: cannot reach {args.url}/v1/models ({exc})", file=sys.stderr)
        return 2
    cards = models.get("data") or []
    if status != 200 or not cards:
        print(f"error: {args.url}/v1/models answered HTTP {status} with no model", file=sys.stderr)
        return 2
    card = next((c for c in cards if c.get("id") == args.model), cards[0]) if args.model else cards[0]
    model = args.model or card["id"]
    limit = card.get("max_model_len")
    prompt_len = min(args.prompt_len, limit - 2) if isinstance(limit, int) and limit > 2 else args.prompt_len
    before = listing(args.storage)
    load = Load(args, model, prompt_len)
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(load.one, range(args.requests)))
    sent_s = time.monotonic() - t0
    waited = settle(args.storage, args.wait)
    after = listing(args.storage)
    new = after - before
    given = load.given
    orphans = sorted(n for n in new if n.endswith(DATA) and n not in given)
    orphan_locks = sorted(n for n in new if n.endswith(LOCK) and n[: -len(LOCK)] not in given)
    sizes = 0
    for n in orphans:
        try:
            sizes += os.path.getsize(os.path.join(args.storage, n))
        except OSError:
            pass
    try:
        alive = http_json(args.url + "/v1/models", timeout=5.0)[0] == 200
    except OSError:
        alive = False
    result = {
        "server": args.url, "model": model, "storage": args.storage, "requests": args.requests,
        "concurrency": args.concurrency, "client_timeout_s": args.timeout, "prompt_tokens": prompt_len,
        "completed": load.ok, "timed_out": load.timeouts, "errors": load.errors, "refused": load.refused,
        "error_sample": load.error_sample, "files_named_by_responses": len(given),
        "orphan_files": len(orphans), "orphan_bytes": sizes, "orphan_lock_files": len(orphan_locks),
        "orphan_sample": orphans[:5], "seconds_sending": round(sent_s, 1), "seconds_waiting": round(waited, 1),
        "server_alive_after": alive,
    }
    print(f"sent {args.requests} requests to {args.url} ({model}), {prompt_len}-token prompts, concurrency "
          f"{args.concurrency}, client timeout {args.timeout:g} s, in {sent_s:.1f} s")
    print(f"  completed {load.ok} (each response named its file), timed out and aborted {load.timeouts}, "
          f"errors {load.errors}, refused {load.refused}")
    print(f"after {waited:.1f} s for late writes, {args.storage} holds, of what this run created:")
    print(f"  {len(orphans)} .safetensors files ({sizes / 1e6:.1f} MB) and {len(orphan_locks)} .lock files that no "
          f"response named: orphans nothing will delete")
    if orphans:
        print(f"  e.g. {', '.join(orphans[:3])}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if args.remove:
        for n in new:
            try:
                os.unlink(os.path.join(args.storage, n))
            except OSError:
                pass
    if not alive or load.refused:
        print("the server stopped answering during the run: see its log (vLLM 0.24-0.26 die with KeyError in "
              "ExampleHiddenStatesConnector.request_finished for requests aborted before scheduling, #56841); "
              "retry with a longer --timeout", file=sys.stderr)
        return 3
    if orphans or orphan_locks:
        print("LEAK: requests aborted after scheduling left hidden-state files (and .lock files) that no client was "
              "given")
        return 1
    print("no orphan left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
