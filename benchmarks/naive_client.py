"""The naive hidden-state client of issue 9, for comparison only: everything on the event loop.

Builds each token-id prompt when it needs it, sends it with aiohttp's default
connection pool (100 connections), then opens, checks and deletes the
hidden-state file on the event loop while still holding its concurrency slot --
what the field client did. Runs until --duration or SIGINT.

    python benchmarks/naive_client.py --url http://127.0.0.1:8201 --concurrency 32 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time

import aiohttp
import numpy as np
from safetensors.numpy import load_file


async def main(args: argparse.Namespace) -> None:
    sem = asyncio.Semaphore(args.concurrency)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    rng = random.Random(0)
    done = errors = 0
    deadline = time.monotonic() + args.duration

    async with aiohttp.ClientSession() as session:  # default pool: 100 connections
        async def one() -> None:
            nonlocal done, errors
            async with sem:
                prompt = [rng.randrange(4, 250) for _ in range(args.prompt_len)]
                try:
                    async with session.post(args.url + "/v1/completions",
                                            json={"model": args.model, "prompt": prompt, "max_tokens": 1,
                                                  "return_token_ids": True},
                                            timeout=aiohttp.ClientTimeout(total=120)) as r:
                        data = await r.json()
                    path = (data.get("kv_transfer_params") or {}).get("hidden_states_path")
                    if path:
                        tensors = load_file(path)
                        assert np.array_equal(tensors["token_ids"], np.asarray(prompt))
                        os.unlink(path)
                        if os.path.exists(path + ".lock"):
                            os.unlink(path + ".lock")
                    done += 1
                except Exception:  # noqa: BLE001 - a benchmark client counts, it does not diagnose
                    errors += 1

        async def worker() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                await one()

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    print(f"naive client: {done} ok, {errors} errors")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="fast")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--prompt-len", type=int, default=1024)
    asyncio.run(main(ap.parse_args()))
