"""What a finished search leaves in the run directory.

* ``minimal.json``   the configuration, its rate estimate with interval, the evidence
* ``repro_min.sh``   the `vllm serve` line + the load script, runnable without repro
* ``repro_min.py``   a small aiohttp load that stops at the first stall seen in /metrics
* ``ISSUE_bisect.md`` a section for ISSUE.md (``repro issue`` owns the whole file)
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from repro.bisect.search import Result, Settings
from repro.bisect.space import Config, SearchSpace, apply
from repro.bisect.stats import RatePosterior, rate_upper_bound
from repro.formats import MINIMAL_FORMAT
from repro.scenario import Scenario
from repro.units import format_duration

SCHEMA, VERSION = MINIMAL_FORMAT.schema, MINIMAL_FORMAT.version  # 2: "hazard" and "hang_uptimes_s"


def _rate(post: RatePosterior | None) -> dict[str, Any] | None:
    if post is None or post.rate <= 0:
        return None
    d: dict[str, Any] = {"hangs": int(post.shape), "exposure_s": round(post.rate, 1),
                         "upper95_per_hour": round(rate_upper_bound(int(post.shape), post.rate) * 3600, 4)}
    if post.proper:
        lo, hi = post.interval(0.95)
        d.update({"per_hour": round(post.mean * 3600, 4), "ci95_per_hour": [round(lo * 3600, 4), round(hi * 3600, 4)],
                  "mean_time_to_hang_s": round(post.mean_time_to_hang, 1)})
    return d


def server_command(base: Scenario | None, space: SearchSpace, cfg: Config, run_dir: Path) -> list[str] | None:
    """The `vllm serve ...` argv of the minimal configuration (None in simulation)."""
    if base is None:
        return None
    from repro.bisect.trials import trial_scenario
    from repro.server.launcher import build_launch

    scn = trial_scenario(base, space, cfg, 3600.0, base.server.port, 0, 1, run_dir)
    argv, _env = build_launch(scn.server, run_dir)
    i = argv.index("serve") if "serve" in argv else 1
    return ["vllm", "serve", *argv[i + 1:]]


def load_defaults(base: Scenario | None, space: SearchSpace, cfg: Config) -> dict[str, Any]:
    if base is None:
        return {"concurrency": cfg.concurrency}
    scn = apply(base, space, cfg)
    L = scn.load
    return {"concurrency": cfg.concurrency, "workload": "hidden-states" if L.workload == "hidden-states" else "chat",
            "prompt_len": list(L.prompt_len), "max_tokens": L.max_tokens, "timeout": L.request_timeout,
            "retries": L.retries, "consume": "keep" if L.consume != "delete" else "delete",
            "window": scn.detect.window, "url": f"http://127.0.0.1:{base.server.port}"}


def write_outputs(run_dir: Path, result: Result, space: SearchSpace, settings: Settings, base: Scenario | None,
                  mode: str) -> dict[str, Path]:
    run_dir = Path(run_dir)
    paths: dict[str, Path] = {}
    cfg = result.config
    cmd = server_command(base, space, cfg, run_dir) if cfg is not None and mode == "real" else None
    doc: dict[str, Any] = {
        "schema": SCHEMA, "version": VERSION, "status": result.status, "mode": mode,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_dict() if cfg else None,
        "describe": cfg.describe() if cfg else None,
        "server_command": cmd,
        "load": load_defaults(base, space, cfg) if cfg else None,
        "rate": _rate(result.posterior),
        "baseline": {"config": space.baseline.to_dict(), "rate": _rate(result.baseline)},
        "threshold_posterior_mass": result.threshold_mass,
        "hazard": result.hazard,
        "hang_uptimes_s": {k: [round(u, 1) for u in v] for k, v in sorted(result.hang_uptimes.items())},
        "settings": settings.to_dict(),
        "space": space.to_dict(),
        "evidence": [{"config": k, "hangs": int(v["hangs"]), "exposure_s": round(v["exposure"], 1)}
                     for k, v in sorted(result.evidence.items())],
        "decisions": [{"phase": d.phase, "text": d.text} for d in result.decisions],
        "warnings": result.warnings,
        "trial_hours": round(result.trial_time / 3600, 3),
        "wall_hours": round(result.wall / 3600, 3),
        "steps": result.steps,
    }
    paths["minimal.json"] = run_dir / "minimal.json"
    paths["minimal.json"].write_text(json.dumps(doc, indent=2) + "\n")
    if cfg is not None:
        defaults = doc["load"] or {}
        py = (Path(__file__).parent / "minload.py").read_text()
        py = py.replace("DEFAULTS: dict = {}  # filled in by `repro bisect` with the minimal configuration's load settings",
                        "DEFAULTS: dict = " + json.dumps(defaults) + "  # the minimal configuration (repro bisect)")
        paths["repro_min.py"] = run_dir / "repro_min.py"
        paths["repro_min.py"].write_text(py)
        paths["repro_min.py"].chmod(0o755)
        paths["repro_min.sh"] = run_dir / "repro_min.sh"
        paths["repro_min.sh"].write_text(shell_script(cmd, defaults, base, cfg, result))
        paths["repro_min.sh"].chmod(0o755)
    paths["ISSUE_bisect.md"] = run_dir / "ISSUE_bisect.md"
    paths["ISSUE_bisect.md"].write_text(issue_section(doc))
    return paths


def shell_script(cmd: list[str] | None, load: dict[str, Any], base: Scenario | None, cfg: Config,
                 result: Result) -> str:
    rate = _rate(result.posterior) or {}
    serve = " ".join(shlex.quote(a) for a in cmd) if cmd else "vllm serve \"$MODEL\"  # (simulated search: no command)"
    env_lines = []
    if base is not None and base.server.inject:
        env_lines.append(f"export REPRO_INJECT={shlex.quote(base.server.inject)}  # the fault injected for this search "
                         "(needs repro's vLLM plugin; remove for a real bug)")
    storage = None
    if cmd and "--kv-transfer-config" in cmd:
        try:
            storage = json.loads(cmd[cmd.index("--kv-transfer-config") + 1])["kv_connector_extra_config"][
                "shared_storage_path"]
        except (ValueError, KeyError, IndexError):
            storage = None
    mtth = rate.get("mean_time_to_hang_s")
    duration = int(max(600, 5 * mtth)) if mtth else 3600
    onset = aging_needs(result)
    if onset is not None:
        duration = int(max(600, 2 * onset[1]))
    lines = [
        "#!/bin/sh",
        f"# Minimal reproducer from `repro bisect`: {cfg.describe()}.",
        (f"# It hung {rate.get('hangs')} times in {format_duration(rate.get('exposure_s', 0))} of load "
         f"(rate {rate.get('per_hour')}/h, 95% CI {rate.get('ci95_per_hour')}); the load below runs "
         f"{format_duration(duration)} (" + ("twice the longest uptime at a hang" if onset else
                                             "5x the mean time to hang") + ") unless it stalls first.")
        if rate else "#",
        *([f"# The hang needs the server to age: {onset[0]}. Run it on ONE server without restarting it "
           "(a restart starts the clock again)."] if onset else []),
        "# Needs: vLLM (`vllm` on PATH) and Python 3 with aiohttp. Exit 1: stall reproduced, 0: no stall.",
        "set -u",
        'HERE=$(cd "$(dirname "$0")" && pwd)',
        f"PORT=${{PORT:-{cmd[cmd.index('--port') + 1] if cmd and '--port' in cmd else 8000}}}",
        *env_lines,
        "export VLLM_LOG_STATS_INTERVAL=${VLLM_LOG_STATS_INTERVAL:-1}",
    ]
    if storage:
        lines.append(f"mkdir -p {shlex.quote(storage)}")
    serve = serve.replace(f"--port {cmd[cmd.index('--port') + 1]}", "--port \"$PORT\"") if cmd and "--port" in cmd else serve
    lines += [
        f"setsid {serve} > vllm_server.log 2>&1 &",
        "SERVER=$!",
        "trap 'kill -TERM -- -$SERVER 2>/dev/null; sleep 3; kill -KILL -- -$SERVER 2>/dev/null' EXIT INT TERM",
        'echo "waiting for vLLM on port $PORT (log: vllm_server.log) ..."',
        "i=0",
        'until python3 -c "import urllib.request,sys; urllib.request.urlopen(\'http://127.0.0.1:$PORT/v1/models\', timeout=2)" 2>/dev/null; do',
        "  i=$((i+1)); if [ $i -gt 600 ] || ! kill -0 $SERVER 2>/dev/null; then echo 'vLLM did not start' >&2; exit 3; fi",
        "  sleep 1",
        "done",
        f'python3 "$HERE/repro_min.py" --url "http://127.0.0.1:$PORT" --concurrency {cfg.concurrency} '
        f'--duration {duration} "$@"',
        "rc=$?",
        "exit $rc",
        "",
    ]
    return "\n".join(lines)


def aging_needs(result: Result) -> tuple[str, float] | None:
    """For an aging hazard: (what the minimal configuration needs, in words; the longest uptime at a hang)."""
    hz = result.hazard or {}
    if hz.get("model") != "aging" or result.config is None:
        return None
    own = result.hang_uptimes.get(result.config.key()) or []
    onset = hz.get("minimal_onset") if len(own) >= 2 else hz.get("onset")
    ups = own or [u for v in result.hang_uptimes.values() for u in v]
    if not ups:
        return None
    if onset and onset.get("hangs", 0) >= 2:
        text = (f"hangs after about {format_duration(onset['estimate_s'])} of continuous load (onset between "
                f"{format_duration(onset['lower95_s'])} and {format_duration(onset['upper_s'])} at 95%"
                + ("" if own and len(own) >= 2 else ", from the baseline's hangs") + ")")
    else:
        text = f"hung after {format_duration(min(ups))} of continuous load"
    return text, max(ups)


def issue_section(doc: dict[str, Any]) -> str:
    rate = doc.get("rate") or {}
    base = (doc.get("baseline") or {}).get("rate") or {}
    out = ["## Minimal reproducer (repro bisect)", ""]
    if doc["status"] != "minimal":
        out += [f"The search did not finish: **{doc['status']}**. Evidence so far is in minimal.json.", ""]
    else:
        out += [f"Smallest configuration that still hangs: **{doc['describe']}**.", ""]
        if rate.get("per_hour") is not None:
            out.append(f"- Rate: {rate['per_hour']:.3g} hangs/hour (95% credible interval "
                       f"{rate['ci95_per_hour'][0]:.3g}-{rate['ci95_per_hour'][1]:.3g}), {rate['hangs']} hangs in "
                       f"{format_duration(rate['exposure_s'])} of load; mean time to hang "
                       f"{format_duration(rate['mean_time_to_hang_s'])}.")
        if base.get("per_hour") is not None:
            out.append(f"- Baseline ({', '.join(doc['baseline']['config']['changes']) or 'plain'}, concurrency "
                       f"{doc['baseline']['config']['concurrency']}): {base['per_hour']:.3g} hangs/hour "
                       f"(95% CI {base['ci95_per_hour'][0]:.3g}-{base['ci95_per_hour'][1]:.3g}).")
        hz = doc.get("hazard") or {}
        if hz.get("text"):
            out.append(f"- Hazard model: {hz['text'].removeprefix('hazard model: ')}.")
        out.append(f"- Overall error level of the search: alpha = {doc['settings']['alpha']} (a wrong answer can only "
                   "be a configuration that is not minimal: every hang is definitive).")
        out.append(f"- Cost: {doc['trial_hours']:.2f} trial-hours in {doc['steps']} steps.")
        for w in doc.get("warnings") or []:
            out.append(f"- Warning: {w}")
        if doc.get("server_command"):
            out += ["", "```sh", " ".join(shlex.quote(a) for a in doc["server_command"]), "```", "",
                    "Then run the load (stops at the first stall, exit 1; attached as repro_min.py / repro_min.sh):", "",
                    "```sh", f"python3 repro_min.py --url {(doc.get('load') or {}).get('url', 'http://127.0.0.1:8000')} "
                    f"--concurrency {doc['config']['concurrency']}",
                    "```"]
    out += ["", "<details><summary>Evidence per configuration</summary>", "",
            "| configuration | hangs | exposure |", "| --- | --- | --- |"]
    for e in doc["evidence"]:
        out.append(f"| `{e['config']}` | {e['hangs']} | {format_duration(e['exposure_s'])} |")
    out += ["", "</details>", ""]
    return "\n".join(out)
