"""A fast stand-in for vLLM's OpenAI server, for measuring load generators (not vLLM).

Serves /v1/models, /v1/completions (plain JSON, or SSE when "stream": true, as
`vllm bench serve` asks), /v1/chat/completions and /metrics with
vllm:num_requests_running = requests in flight on this side. Each request takes
--latency seconds (asyncio.sleep: no CPU), so a perfect client at concurrency C
keeps C in flight here. With --files DIR each completion writes a hidden-state
safetensors file ([prompt_tokens, --layers, --hidden] float32 + token_ids) under
the .lock protocol (LOCK_EX while writing) from a thread, and returns its path in
kv_transfer_params like vLLM's hidden-states connector.

For the kit's own tests it can also act like a server with limits: --max-model-len N is listed in
/v1/models and a prompt plus max_tokens above it gets vLLM's HTTP 400; --bad-files garbage|tokens
writes files that are unreadable or hold the wrong token ids; --engine-share F reports only that share
of the requests in flight as running (the rest look as if they sat inside vLLM's API server);
--write-first writes each file before the request's latency (as vLLM writes at prefill), so a client
that times out leaves a file no response names: vLLM's orphan leak.

For comparing clients like for like: --text-tokens N makes a text prompt (what `vllm bench serve`'s
random dataset sends: text of N tokens) count as N tokens, so its file has the same [N, layers, hidden]
shape as the file of an N-token-id prompt; --discard-files deletes each file (and its .lock) right after
writing it, for a client that reads no files (the endpoint still does the full write per request, and
the files do not pile up).

--workers N serves from N processes on one port (SO_REUSEPORT), for clients faster than one Python
process can answer; /stats and /metrics then sum every process's counters (shared memory), whichever
process answers.

GET /stats returns the time-integral of in-flight (``area``) at time ``t``: the
mean in flight between two calls is (area2 - area1) / (t2 - t1).

    python benchmarks/fast_endpoint.py --port 8201 --latency 0.1 --files /dev/shm/repro-stress-fast
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import time
import uuid

import numpy as np
from aiohttp import web
from safetensors.numpy import save_file


STATE: web.AppKey["State"] = web.AppKey("state")


#: per-process counters in the shared array (--workers): in_flight, area, t_last, requests, prompt and generation tokens
SLOT = 6


class State:
    def __init__(self, args: argparse.Namespace, shared: object = None, slot: int = 0) -> None:
        self.args = args
        self.shared, self.slot = shared, slot  # --workers: this process's slot in a multiprocessing.RawArray
        self.in_flight = 0
        self.area = 0.0
        self.t_last = time.monotonic()
        self.requests = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0

    def _tick(self) -> None:
        now = time.monotonic()
        self.area += self.in_flight * (now - self.t_last)
        self.t_last = now

    def enter(self) -> None:
        self._tick()
        self.in_flight += 1
        self.publish()

    def leave(self) -> None:
        self._tick()
        self.in_flight -= 1
        self.publish()

    def publish(self) -> None:
        if self.shared is not None:
            i = self.slot * SLOT
            self.shared[i:i + SLOT] = [self.in_flight, self.area, self.t_last, self.requests, self.prompt_tokens,
                                       self.generation_tokens]  # type: ignore[index]

    def totals(self) -> dict[str, float]:
        """in_flight, area (up to now), requests and tokens: this process's, or (--workers) every process's."""
        self._tick()
        if self.shared is None:
            return {"t": self.t_last, "area": self.area, "in_flight": self.in_flight, "requests": self.requests,
                    "prompt_tokens": self.prompt_tokens, "generation_tokens": self.generation_tokens}
        self.publish()
        v, now = list(self.shared), self.t_last  # type: ignore[call-overload]
        out = {"t": now, "area": 0.0, "in_flight": 0, "requests": 0, "prompt_tokens": 0, "generation_tokens": 0}
        for k in range(len(v) // SLOT):
            fl, area, t_last, req, pt, gt = v[k * SLOT:(k + 1) * SLOT]
            out["area"] += area + fl * max(0.0, now - t_last) if t_last else 0.0
            out["in_flight"] += int(fl)
            out["requests"] += int(req)
            out["prompt_tokens"] += int(pt)
            out["generation_tokens"] += int(gt)
        return out


def write_hidden_states(path: str, token_ids: list[int], layers: int, hidden: int, bad: str | None = None,
                        discard: bool = False) -> None:
    try:
        _write(path, token_ids, layers, hidden, bad)
    finally:
        if discard:
            for p in (path, path + ".lock"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass


def _write(path: str, token_ids: list[int], layers: int, hidden: int, bad: str | None) -> None:
    lock = os.open(path + ".lock", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if bad == "garbage":  # not a safetensors file: the check cannot read it
            with open(path, "wb") as f:
                f.write(b"\xff" * 64)
            return
        hs = np.zeros((len(token_ids), layers, hidden), dtype=np.float32)
        ids = [t + 1 for t in token_ids] if bad == "tokens" else token_ids
        save_file({"hidden_states": hs, "token_ids": np.asarray(ids, dtype=np.int64)}, path)
    finally:
        os.close(lock)


def prompt_ids(body: dict, text_tokens: int | None = None) -> list[int]:
    """The prompt's token ids: as sent, or one pseudo-id per character of a text prompt (the first
    ``text_tokens`` characters, padded, when that is set: a text prompt then counts as that many tokens)."""
    p = body.get("prompt")
    if isinstance(p, list) and p and isinstance(p[0], int):
        return p
    if isinstance(p, str):
        text = p
    else:
        msgs = body.get("messages") or []
        text = " ".join(str(m.get("content", "")) for m in msgs)
    if text_tokens:
        text = (text or " ")[:text_tokens].ljust(text_tokens, " ")
    return [1 + (ord(c) % 250) for c in text[:4096]] or [1]


async def completions(request: web.Request) -> web.StreamResponse:
    st: State = request.app[STATE]
    st.enter()
    try:
        body = await request.json()
        ids = prompt_ids(body, getattr(st.args, "text_tokens", None))
        n_out = int(body.get("max_tokens") or 1)
        limit = getattr(st.args, "max_model_len", None)
        if limit and len(ids) + n_out > limit:
            return web.json_response({"error": {"message": f"This model's maximum context length is {limit} tokens. "
                                                           f"However, you requested {len(ids) + n_out} tokens.",
                                                "type": "BadRequestError", "code": 400}}, status=400)
        rid = f"cmpl-{uuid.uuid4().hex[:16]}"
        path = os.path.join(st.args.files, rid + ".safetensors") if st.args.files else None
        first = getattr(st.args, "write_first", False)
        if path and first:
            write_hidden_states(path, ids, st.args.layers, st.args.hidden, getattr(st.args, "bad_files", None))
        await asyncio.sleep(st.args.latency)
        kv = None
        if path:
            if not first:
                await asyncio.to_thread(write_hidden_states, path, ids, st.args.layers, st.args.hidden,
                                        getattr(st.args, "bad_files", None), getattr(st.args, "discard_files", False))
            kv = {"hidden_states_path": path}
        st.requests += 1
        st.prompt_tokens += len(ids)
        st.generation_tokens += n_out
        st.publish()
        usage = {"prompt_tokens": len(ids), "completion_tokens": n_out, "total_tokens": len(ids) + n_out}
        chat = request.path.endswith("/chat/completions")
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            delta = {"delta": {"content": "x"}} if chat else {"text": "x"}
            await resp.write(f"data: {json.dumps({'id': rid, 'choices': [{'index': 0, **delta}]})}\n\n".encode())
            await resp.write(f"data: {json.dumps({'id': rid, 'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        choice: dict = {"index": 0, "finish_reason": "length", "token_ids": [7] * n_out}
        if chat:
            choice["message"] = {"role": "assistant", "content": "x" * n_out}
        else:
            choice["text"] = "x" * n_out
            choice["prompt_token_ids"] = ids
        out: dict = {"id": rid, "object": "text_completion", "model": st.args.model, "choices": [choice],
                     "usage": usage, "kv_transfer_params": kv}
        if chat:
            out["prompt_token_ids"] = ids
        return web.Response(body=json.dumps(out, separators=(",", ":")).encode(), content_type="application/json")
    finally:
        st.leave()


async def models(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    card = {"id": st.args.model, "object": "model", "root": None}
    if getattr(st.args, "max_model_len", None):
        card["max_model_len"] = st.args.max_model_len
    return web.json_response({"object": "list", "data": [card]})


async def metrics(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    m = st.args.model
    tot = st.totals()
    running = float(round(tot["in_flight"] * getattr(st.args, "engine_share", 1.0)))
    text = (f'vllm:num_requests_running{{engine="0",model_name="{m}"}} {running}\n'
            f'vllm:num_requests_waiting{{engine="0",model_name="{m}"}} 0.0\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="{m}"}} 0.0\n'
            f'vllm:prompt_tokens_total{{engine="0",model_name="{m}"}} {float(tot["prompt_tokens"])}\n'
            f'vllm:generation_tokens_total{{engine="0",model_name="{m}"}} {float(tot["generation_tokens"])}\n'
            f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="{m}"}} {float(tot["requests"])}\n')
    return web.Response(text=text, content_type="text/plain")


async def stats(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    tot = st.totals()
    return web.json_response({k: tot[k] for k in ("t", "area", "in_flight", "requests")})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="")


def make_app(args: argparse.Namespace, shared: object = None, slot: int = 0) -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app[STATE] = State(args, shared, slot)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", stats)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8201)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds each request spends in the server")
    ap.add_argument("--files", default=None, help="write hidden-state files into this directory")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--model", default="fast")
    ap.add_argument("--max-model-len", type=int, default=None, help="list it in /v1/models; longer requests get 400")
    ap.add_argument("--bad-files", choices=["garbage", "tokens"], default=None, help="write files that fail the check")
    ap.add_argument("--engine-share", type=float, default=1.0, help="share of in-flight reported as running")
    ap.add_argument("--write-first", action="store_true", help="write each file before the latency (leaks on abort)")
    ap.add_argument("--text-tokens", type=int, default=None, help="a text prompt counts as this many tokens")
    ap.add_argument("--discard-files", action="store_true",
                    help="delete each file right after writing it (for a client that reads none)")
    ap.add_argument("--workers", type=int, default=1, help="serve from this many processes (SO_REUSEPORT)")
    args = ap.parse_args()
    if args.files:
        os.makedirs(args.files, exist_ok=True)
    shared, slot = None, 0
    if args.workers > 1:  # fork before any event loop exists; the parent only waits (killpg stops them all)
        import multiprocessing
        import signal

        shared = multiprocessing.RawArray("d", SLOT * args.workers)
        kids = []
        for slot in range(args.workers):
            pid = os.fork()
            if pid == 0:
                break
            kids.append(pid)
        else:
            signal.signal(signal.SIGTERM, lambda *_: [os.kill(k, signal.SIGTERM) for k in kids])
            for _ in kids:
                try:
                    os.wait()
                except ChildProcessError:
                    break
            return
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args, shared, slot), host=args.host, port=args.port, access_log=None, backlog=4096,
                print=None, reuse_port=args.workers > 1)


if __name__ == "__main__":
    main()
