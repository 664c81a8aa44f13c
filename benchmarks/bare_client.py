"""The upper bound for a Python load generator on this machine: a bare aiohttp loop.

--concurrency workers on one event loop (uvloop when installed, as repro stress uses), one
connection pool sized to the concurrency, each worker posting the same pre-built token-id
completion body (the hidden-states workload's shape: --prompt-len ids, max_tokens 1,
return_token_ids) and reading the whole answer; nothing is parsed, checked or recorded.
Runs until --duration or SIGINT, then prints one line with the count. --procs N runs N such
processes (forked, each its share of --concurrency): the bound for a client of N processes.

    python benchmarks/bare_client.py --url http://127.0.0.1:8201 --concurrency 256 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import time

import aiohttp


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    rng = random.Random(0)
    prompt = [rng.randrange(4, 250) for _ in range(args.prompt_len)]
    body = json.dumps({"model": args.model, "prompt": prompt, "max_tokens": 1, "return_token_ids": True},
                      separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    url = args.url + "/v1/completions"
    deadline = time.monotonic() + args.duration
    done = errors = 0
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=120)

    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal done, errors
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    async with session.post(url, data=body, headers=headers, timeout=timeout) as r:
                        await r.read()
                    done += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    print(f"bare client: {done} ok, {errors} errors")


def run(args: argparse.Namespace) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args))
        return
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main(args))
    finally:
        loop.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="fast")
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--procs", type=int, default=1, help="processes, each its share of --concurrency")
    a = ap.parse_args()
    n, total, kids = a.procs, a.concurrency, []
    for i in range(n - 1):  # the first n - 1 shares in children, the last one here
        pid = os.fork()
        if pid == 0:
            a.concurrency = total // n + (1 if i < total % n else 0)
            run(a)
            os._exit(0)
        kids.append(pid)
    a.concurrency = total // n + (1 if n - 1 < total % n else 0)
    run(a)
    for k in kids:
        os.waitpid(k, 0)
