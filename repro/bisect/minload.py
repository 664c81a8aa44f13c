#!/usr/bin/env python3
"""Minimal load for a vLLM stall reproducer (written by `repro bisect`; needs only Python 3.9+ and aiohttp).

Sends closed-loop /v1/completions requests at a fixed concurrency and watches
/metrics: a stall is requests held (`vllm:num_requests_running` > 0, or requests of
this load waiting for an answer) while both token counters (`vllm:prompt_tokens_total`,
`vllm:generation_tokens_total`) stay flat for --window seconds. The client's own count
matters: a stall that strikes right after a step that finished every request leaves the
gauge frozen at 0. /health is not used: it stays 200 while the engine is stuck.

Exit codes: 0 no stall within --duration, 1 stall detected, 3 server unreachable.

    python3 repro_min.py --url http://127.0.0.1:8000 --concurrency 16 --duration 3600
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

try:
    import aiohttp
except ImportError:  # pragma: no cover - the user's environment
    sys.stderr.write("repro_min.py needs aiohttp: pip install aiohttp\n")
    sys.exit(3)

DEFAULTS: dict = {}  # filled in by `repro bisect` with the minimal configuration's load settings


def parse_metrics(text: str) -> dict[str, float]:
    """Sum each metric over its label sets (Prometheus text format)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, rest = line.rpartition(" ")
        if not name_labels:
            continue
        name = name_labels.split("{", 1)[0].strip()
        try:
            value = float(rest)
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def metric(m: dict[str, float], base: str) -> float | None:
    for key in (base, base + "_total"):
        if key in m:
            return m[key]
    return None


class Load:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.rng = random.Random(a.seed)
        self.stop = asyncio.Event()
        self.sent = self.ok = self.failed = 0
        self.waiting = 0  # requests sent and not yet answered (not those sleeping before a retry)
        self.model = a.model

    def prompt(self) -> list[int]:
        lo, hi = self.a.prompt_len
        return [self.rng.randrange(10, self.a.vocab) for _ in range(self.rng.randint(lo, hi))]

    async def one(self, session: aiohttp.ClientSession) -> None:
        hs = self.a.workload == "hidden-states"
        body = {"model": self.model, "prompt": self.prompt(), "max_tokens": 1 if hs else self.a.max_tokens}
        if hs:
            body["return_token_ids"] = True
        for attempt in range(self.a.retries + 1):
            try:
                self.waiting += 1
                try:
                    async with session.post(self.a.url + "/v1/completions", json=body,
                                            timeout=aiohttp.ClientTimeout(total=self.a.timeout)) as r:
                        status = r.status
                        data = await r.json(content_type=None)
                finally:
                    self.waiting -= 1
                if status == 200:
                    self.ok += 1
                    path = ((data or {}).get("kv_transfer_params") or {}).get("hidden_states_path")
                    if path and self.a.consume == "delete":
                        for p in (path, path + ".lock"):
                            try:
                                os.remove(p)
                            except OSError:
                                pass
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                pass
            if attempt < self.a.retries:
                await asyncio.sleep(2 ** attempt)
        self.failed += 1

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            self.sent += 1
            await self.one(session)


async def watch(a: argparse.Namespace, load: Load, session: aiohttp.ClientSession) -> int:
    """Poll /metrics until a stall (return 1) or the end of the duration (return 0)."""
    t0 = time.monotonic()
    last_tokens: float | None = None
    flat_since: float | None = None
    while time.monotonic() - t0 < a.duration:
        await asyncio.sleep(a.poll)
        try:
            async with session.get(a.url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
                m = parse_metrics(await r.text())
        except (aiohttp.ClientError, asyncio.TimeoutError):
            continue
        running = metric(m, "vllm:num_requests_running") or 0.0
        tokens = (metric(m, "vllm:prompt_tokens") or 0.0) + (metric(m, "vllm:generation_tokens") or 0.0)
        now = time.monotonic()
        held = running > 0 or load.waiting > 0
        if held and last_tokens is not None and tokens == last_tokens:
            flat_since = flat_since if flat_since is not None else now - a.poll
            if now - flat_since >= a.window:
                print(f"STALL: {running:.0f} requests running ({load.waiting} of this load unanswered) and no token "
                      f"progress for {now - flat_since:.0f} s "
                      f"(after {now - t0:.0f} s of load; {load.ok} requests ok, {load.failed} failed)", flush=True)
                return 1
        else:
            flat_since = None
        last_tokens = tokens
        if a.verbose:
            print(f"[{now - t0:6.0f} s] running {running:.0f} tokens {tokens:.0f} ok {load.ok} failed {load.failed}",
                  flush=True)
    print(f"no stall in {a.duration:.0f} s ({load.ok} requests ok, {load.failed} failed)", flush=True)
    return 0


async def main_async(a: argparse.Namespace) -> int:
    conn = aiohttp.TCPConnector(limit=a.concurrency + 4)  # the pool must not be the bottleneck
    async with aiohttp.ClientSession(connector=conn) as session:
        if not a.model:
            try:
                async with session.get(a.url + "/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    a.model = (await r.json(content_type=None))["data"][0]["id"]
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, IndexError) as exc:
                print(f"cannot reach {a.url}/v1/models: {exc!r}", file=sys.stderr)
                return 3
        load = Load(a)
        workers = [asyncio.ensure_future(load.worker(session)) for _ in range(a.concurrency)]
        try:
            return await watch(a, load, session)
        finally:
            load.stop.set()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = DEFAULTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=d.get("url", "http://127.0.0.1:8000"))
    ap.add_argument("--model", default=None, help="model id (default: the first of /v1/models)")
    ap.add_argument("--concurrency", type=int, default=d.get("concurrency", 32))
    ap.add_argument("--duration", type=float, default=d.get("duration", 3600.0), help="seconds of load at most")
    ap.add_argument("--workload", choices=["hidden-states", "chat"], default=d.get("workload", "hidden-states"))
    ap.add_argument("--prompt-len", type=lambda s: tuple(int(x) for x in s.split("-")) if "-" in s else (int(s), int(s)),
                    default=tuple(d.get("prompt_len", (128, 1024))), help="N or LO-HI tokens")
    ap.add_argument("--vocab", type=int, default=d.get("vocab", 500), help="token ids stay below this")
    ap.add_argument("--max-tokens", type=int, default=d.get("max_tokens", 16))
    ap.add_argument("--timeout", type=float, default=d.get("timeout", 3600.0), help="client request timeout (s)")
    ap.add_argument("--retries", type=int, default=d.get("retries", 0))
    ap.add_argument("--consume", choices=["delete", "keep"], default=d.get("consume", "delete"))
    ap.add_argument("--window", type=float, default=d.get("window", 60.0),
                    help="seconds without token progress while requests run that make a stall")
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    a.url = a.url.rstrip("/")
    if a.concurrency < 1 or a.duration <= 0 or a.window <= 0:
        ap.error("--concurrency, --duration and --window must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        return asyncio.run(main_async(a))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
