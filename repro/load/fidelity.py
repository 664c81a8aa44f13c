"""Where the missing concurrency is: the client's in-flight requests split by where they sit.

Every poll gives three numbers: the client's requests on the wire (``in flight``),
and the engine's ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``.
What the client has in flight and the engine does not hold is inside vLLM's API
server: received and not yet handed to the engine (tokenizing, queued for the
engine's input socket), or finished in the engine and not yet answered
(detokenizing, serialising, waiting for the client to read). On a fast GPU that
share can be half of the load, and a run that claims concurrency 32 then tests
an engine running 8.

:class:`Breakdown` keeps the running means in O(1) memory; :meth:`summary` is
summary.json's ``fidelity.breakdown`` and :meth:`advice` the one line that says
what to try when the API server holds a large share.
"""

from __future__ import annotations

from dataclasses import dataclass

# The API server holds "a large share" when its mean is at least this share of --concurrency
# (and at least API_SERVER_MIN requests: a few requests in transit are normal).
API_SERVER_SHARE = 0.25
API_SERVER_MIN = 2.0
MIN_SAMPLES = 5

DEFINITION = ("per poll: client = requests on the wire; engine running/waiting = vllm:num_requests_running/"
              "_waiting (published once per engine step); api_server = client - running - waiting (at least 0): "
              "received by vLLM's API server and not yet in the engine's scheduler (tokenizing, on its way to "
              "EngineCore), or finished in the engine and not yet answered; engine_excess = "
              "running + waiting - client (at least 0): requests the engine still holds that the client gave up")


@dataclass
class Breakdown:
    n: int = 0
    client: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    api_server: float = 0.0
    engine_excess: float = 0.0
    api_server_max: float = 0.0

    def add(self, in_flight: float, running: float, waiting: float) -> None:
        rest = in_flight - running - waiting
        self.n += 1
        self.client += in_flight
        self.running += running
        self.waiting += waiting
        self.api_server += max(0.0, rest)
        self.engine_excess += max(0.0, -rest)
        self.api_server_max = max(self.api_server_max, rest)

    def means(self) -> dict[str, float] | None:
        if not self.n:
            return None
        return {"client_in_flight": self.client / self.n, "engine_running": self.running / self.n,
                "engine_waiting": self.waiting / self.n, "api_server": self.api_server / self.n,
                "engine_excess": self.engine_excess / self.n}

    def summary(self, concurrency: int) -> dict[str, object]:
        m = self.means()
        out: dict[str, object] = {"samples": self.n, "concurrency": concurrency, "definition": DEFINITION}
        if m is None:
            return out
        out.update({k: round(v, 3) for k, v in m.items()})
        out["api_server_max"] = round(self.api_server_max, 3)
        out["client_idle"] = round(max(0.0, concurrency - m["client_in_flight"]), 3)
        out["shares"] = {k: round(v / concurrency, 4) for k, v in m.items() if k != "engine_excess"}
        return out

    def api_server_heavy(self, concurrency: int) -> bool:
        m = self.means()
        return (m is not None and self.n >= MIN_SAMPLES and m["api_server"] >= API_SERVER_MIN
                and m["api_server"] >= API_SERVER_SHARE * concurrency)

    def advice(self, concurrency: int) -> str | None:
        """One line when the API server holds a large share of the load, else None."""
        if not self.api_server_heavy(concurrency):
            return None
        m = self.means()
        assert m is not None
        return (f"vLLM's API server holds {m['api_server']:.1f} of the {concurrency} requests in flight on average "
                f"(received and not yet in the engine, or finished and not yet answered); the engine runs "
                f"{m['engine_running']:.1f} and queues {m['engine_waiting']:.1f}. To load the engine harder: start "
                f"the server with more API server processes (vllm serve --api-server-count 2 or more), send shorter "
                f"prompts (--prompt-len), or run the client on a faster machine.")


def instant(in_flight: float, running: float | None, waiting: float | None) -> float | None:
    """The API server's share of one poll (None without metrics)."""
    if running is None or waiting is None:
        return None
    return max(0.0, in_flight - running - waiting)
