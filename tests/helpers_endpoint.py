"""benchmarks/fast_endpoint.py served in-process on loopback: a fast stand-in for vLLM's OpenAI server.

Used by the runner's unit tests (``endpoint_factory`` fixture: import it into the test module).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterator

import pytest
from aiohttp import web

from benchmarks import fast_endpoint
from repro.scenario import DetectSettings, LoadSettings, Scenario
from tests.helpers_http import ThreadedApp


class Endpoint:
    def __init__(self, latency: float, files: str | None, **opts: object) -> None:
        self.args = argparse.Namespace(latency=latency, files=files, layers=2, hidden=8, model="fast",
                                       max_model_len=None, bad_files=None, engine_share=1.0,
                                       write_first=False)
        for k, v in opts.items():
            setattr(self.args, k, v)
        self.max_in_flight = 0
        self.server = ThreadedApp(self._app, backlog=2048)
        self.port = self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def _app(self) -> web.Application:
        app = fast_endpoint.make_app(self.args)
        self.state = app[fast_endpoint.STATE]
        orig = self.state.enter

        def enter() -> None:
            orig()
            self.max_in_flight = max(self.max_in_flight, self.state.in_flight)

        self.state.enter = enter  # type: ignore[method-assign]
        return app

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def endpoint_factory(tmp_path: Path) -> Iterator:
    """make(latency=0.0, files=True, **fast_endpoint options) -> a running Endpoint (closed after the test)."""
    made: list[Endpoint] = []

    def make(latency: float = 0.0, files: bool = True, **opts: object) -> Endpoint:
        ep = Endpoint(latency, str(tmp_path / "store") if files else None, **opts)
        if files:
            os.makedirs(tmp_path / "store", exist_ok=True)
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.close()


def stress_scenario(url: str, **load: object) -> Scenario:
    """A short attached run (300 requests at concurrency 8, small token-id prompts) with `load` overrides."""
    base = dict(concurrency=8, requests=300, prompt_len=(16, 64), vocab_size=250, request_timeout=30.0)
    base.update(load)
    return Scenario(load=LoadSettings(**base), detect=DetectSettings(window=60, startup_grace=0), url=url,  # type: ignore[arg-type]
                    on_stall="exit")
