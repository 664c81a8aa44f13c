"""What a stress run writes and shows: timeline rows, the display snapshot, summary.json.

Pure builders over the run's counters (:class:`~repro.load.records.RunStats`), the last
:class:`~repro.monitor.detector.Observation` and :class:`~repro.monitor.detector.Assessment`;
the orchestration (:mod:`repro.load.runner`) decides when to call them. ``requests.jsonl`` is
written by :meth:`RunStats.finish` as each request ends; ``events.jsonl`` by
:class:`repro.monitor.events.EventLog`.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from repro import formats
from repro.load.fidelity import Breakdown, instant as fidelity_instant
from repro.load.records import LinearHistogram, RunStats
from repro.monitor.detector import Assessment, Observation

if TYPE_CHECKING:
    from repro.load.runner import _Run
    from repro.scenario import Scenario

SUMMARY = formats.STRESS_SUMMARY_FORMAT  # summary.json
SUMMARY_SCHEMA, SUMMARY_VERSION = SUMMARY.schema, SUMMARY.version
TIMELINE_FIELDS = ["t", "wall", "client_in_flight", "client_in_check", "started", "finished", "ok", "failed",
                   "timeouts", "server_running", "server_waiting", "server_in_system", "kv_usage",
                   "prompt_tokens_total", "generation_tokens_total", "fidelity", "metrics_error", "state", "class", "completions", "probe",
                   "orphan_files", "store_bytes", "fs_free_bytes"]


def iso(ts: float) -> str:
    """Epoch seconds -> ISO 8601 UTC with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


@dataclass
class StressResult:
    """What a stress run ended with (also in summary.json)."""

    exit_code: int  # 0 clean, 1 stall, 3 target unreachable/failed, 4 files bad or unverifiable, 130 interrupted
    outcome: str  # clean | stall | files-bad | no-work | interrupted | target-error | aborted
    stall: Assessment | None  # the detector's verdict when a stall was detected
    exposure_s: float  # seconds of load before the stall began (or the whole load when clean)
    load_s: float  # seconds the load ran
    counts: dict[str, Any]
    files: dict[str, Any]
    run_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Timeline:
    """timeline.csv: one row per poll (TIMELINE_FIELDS), flushed with every row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f: IO[str] = open(path, "w", newline="", buffering=1 << 14)
        self._w = csv.writer(self.f)
        self._w.writerow(TIMELINE_FIELDS)

    def row(self, t: float, st: RunStats, ob: Observation, a: Assessment, fid: float | None,
            storage: list[Any]) -> None:
        m = ob.metrics
        self._w.writerow([
            round(t, 3), round(time.time(), 3), st.in_flight, st.in_check, st.started, st.finished,
            st.ok, st.failed, st.timeouts, None if m is None else m.running, None if m is None else m.waiting,
            None if m is None else m.in_server, None if m is None else m.kv_usage,
            None if m is None else m.prompt_tokens, None if m is None else m.generation_tokens,
            None if fid is None else round(fid, 4), ob.metrics_error or "", a.state, a.stall_class or "",
            st.completions, ob.probe or "", *storage])
        self.f.flush()

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            self.f.close()


class TokenRate:
    """Prompt and generation tokens per second between two polls (for the display)."""

    def __init__(self) -> None:
        self._prev: tuple[float, float, float] | None = None
        self.value: tuple[float | None, float | None] = (None, None)

    def add(self, ob: Observation) -> None:
        m = ob.metrics
        if m is None or m.prompt_tokens is None or m.generation_tokens is None:
            return
        if self._prev is not None and ob.t > self._prev[0]:
            dt = ob.t - self._prev[0]
            self.value = ((m.prompt_tokens - self._prev[1]) / dt, (m.generation_tokens - self._prev[2]) / dt)
        self._prev = (ob.t, m.prompt_tokens, m.generation_tokens)


def snapshot(st: RunStats, ob: Observation, a: Assessment, *, elapsed: float, duration: float | None,
             concurrency: int, poisson: bool, tps: tuple[float | None, float | None], fidelity: LinearHistogram,
             client_fill: LinearHistogram, breakdown: Breakdown, last_progress_t: float | None) -> dict[str, Any]:
    """What the progress display shows after one poll."""
    m = ob.metrics
    recent_fill = st.in_flight / concurrency
    return {
        "elapsed": max(0.0, elapsed), "remaining": None if duration is None else max(0.0, duration - elapsed),
        "duration": duration,
        "req_s": st.ok / elapsed if elapsed > 0 else 0.0, "in_flight": st.in_flight,
        "concurrency": concurrency, "in_check": st.in_check,
        "running": None if m is None else m.running, "waiting": None if m is None else m.waiting,
        "kv_pct": None if m is None or m.kv_usage is None else 100 * m.kv_usage,
        "prompt_tps": tps[0], "gen_tps": tps[1], "ok": st.ok, "files_ok": st.files_ok,
        "files_bad": st.files_bad, "files_not_written": st.files_not_written,
        "errors": dict(st.errors), "errors_total": sum(st.errors.values()),
        "since_progress": None if last_progress_t is None else ob.t - last_progress_t,
        "fidelity": None if m is None or m.in_server is None else m.in_server / concurrency,
        "client_limited": (not poisson and fidelity.n >= 5 and (client_fill.mean or 0) < 0.9
                           and recent_fill < 0.9),
        "api_server": fidelity_instant(st.in_flight, None if m is None else m.running,
                                       None if m is None else m.waiting),
        "api_server_heavy": breakdown.api_server_heavy(concurrency),
        "files_not_clean": st.files_bad > 0,
        "state": a.state, "class": a.stall_class,
    }


def fidelity_summary(fid: LinearHistogram, client_fill: LinearHistogram, breakdown: Breakdown, concurrency: int,
                     poisson: bool) -> dict[str, Any]:
    c = concurrency
    return {
        "concurrency": c, "mode": "poisson" if poisson else "closed-loop",
        "samples": fid.n,
        "mean": None if fid.mean is None else round(fid.mean, 4),
        "p5": None if fid.n == 0 else round(fid.quantile(0.05) or 0.0, 4),
        "client_in_flight_mean": None if client_fill.mean is None else round(client_fill.mean * c, 3),
        "client_fill_mean": None if client_fill.mean is None else round(client_fill.mean, 4),
        "definition": "server vllm:num_requests_running + waiting divided by --concurrency, "
                      "sampled every poll while the load runs (first 2 polls excluded)",
        "breakdown": breakdown.summary(c),
        "advice": breakdown.advice(c),
    }


def summary(run: _Run, res: StressResult, scn: Scenario) -> dict[str, Any]:
    """summary.json of a finished run (``run``: the orchestration's state, read only)."""
    st = run.stats
    load_s = res.load_s
    fid = run.fidelity
    c = scn.load.concurrency
    d: dict[str, Any] = {
        "outcome": res.outcome, "exit_code": res.exit_code, "error": res.error,
        "started_at": iso(run.wall_t0), "ended_at": iso(time.time()),
        "stop_reason": run.stop_reason,
        "load_seconds": round(load_s, 3), "exposure_seconds": round(res.exposure_s, 3),
        "target": {"url": run.url, "model": run.model, "launched": run.server is not None and run.server.started_at is not None,
                   "server_pid": run.server.pid if run.server is not None else None},
        "requests": res.counts, "files": res.files,
        "tokens": {"prompt": st.prompt_tokens, "completion": st.completion_tokens},
        "throughput": {"requests_per_s": round(st.ok / load_s, 3) if load_s > 0 else None,
                       "prompt_tokens_per_s": round(st.prompt_tokens / load_s, 1) if load_s > 0 else None},
        "latency_s": st.latency.summary(),
        "client_work_s": {"prompt_wait": st.prompt_wait_s.summary(6), "file_check": st.check_s.summary(6),
                          "bookkeeping": st.bookkeeping_s.summary(6), "prompt_prep_total": round(run.prep_seconds, 3)},
        "fidelity": fidelity_summary(fid, run.client_fill, run.breakdown, c, bool(scn.load.rate)),
        "prompts": run.prompts_summary(),
        "detector": {"state": run.last.state if run.last else None,
                     "class": run.last.stall_class if run.last else None,
                     "settings": scn.to_dict()["detect"]},
        "stall": run.detection_dict(),
        "abort_storm": run.storms.summary(run.last),
        "storage": run.storage_summary(),
        "connector": run.facts.server_record().connector,
        "client": run.client_summary(),
        "storage_cause": run.storage_death,
        "capture": run.capture_info,
        "log_warnings": run.warnings,
        "files_written": {k: str(v) for k, v in res.paths.items()},
    }
    return formats.stamp(SUMMARY, d)
