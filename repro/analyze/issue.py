"""Render ISSUE.md from a bundle or a run directory and the user-editable top-level templates.

Every outcome has its report, each from a template of its own (edit them freely):

* a stall (``ISSUE_TEMPLATE.md``): the stuck stacks, the signature;
* a death (``ISSUE_TEMPLATE_DEATH.md``): the fatal traceback from the server log, titled with the exception;
* a storage finding (``ISSUE_TEMPLATE_STORAGE.md``, below);
* a clean run (``ISSUE_TEMPLATE_CLEAN.md``): "no reproduction in N hours at concurrency C", for an
  existing upstream thread.

Each carries the reproducer (the repro command that produced it, the server command, the vLLM version, the
bisect minimal configuration) and a "Before submitting" section (versions checked, the upstream search,
the redaction note). Templates use ``{{ name }}`` placeholders (no logic; :data:`PLACEHOLDERS` lists
them). The first line that starts with ``title:`` becomes the title line (``# [Bug]: ...`` for bug
reports) and an HTML comment at the top of the template is dropped. A placeholder repro does not know, or
a template without a ``title:`` line, is a one-line usage error (exit 2) naming it.

A bundle that shows a storage problem (``storage-leak`` / ``storage-exhaustion`` warnings, or a
death the log blames on the hidden-state store) is worded as a storage report from
``ISSUE_TEMPLATE_STORAGE.md`` (see :mod:`repro.storage.finding`): what leaks, under which client
behaviour, how fast, the census -- not as a hang. When the same bundle also shows a genuine
stall, the storage report is a second file beside ISSUE.md.
"""

from __future__ import annotations

import difflib
import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

from repro.analyze import death as death_mod
from repro.analyze import reproducer
from repro.bundle.reader import bundle_processes
from repro.analyze.report import time_to_stall
from repro.analyze.sources import ReportSource, read_text
from repro.analyze import known
from repro.analyze.stacks import analyze_bundle_dir
from repro.errors import UsageError
from repro.storage import finding as storage_finding
from repro.units import format_span

PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
MAX_STACK_CHARS = 12_000  # per process in ISSUE.md; the bundle has everything
COLLECT_ENV_MAX = 30_000

ROLE_ORDER = {"engine_core": 0, "worker": 1, "api_server": 2, "launcher": 3, "other": 4}


STALL_TEMPLATE, STORAGE_TEMPLATE = "ISSUE_TEMPLATE.md", "ISSUE_TEMPLATE_STORAGE.md"
DEATH_TEMPLATE, CLEAN_TEMPLATE = "ISSUE_TEMPLATE_DEATH.md", "ISSUE_TEMPLATE_CLEAN.md"
TEMPLATES = {"stall": STALL_TEMPLATE, "death": DEATH_TEMPLATE, "clean": CLEAN_TEMPLATE, "storage": STORAGE_TEMPLATE}
HANG_CLASSES = ("engine-stall", "queue-stall", "client-stall", "slow")
ISSUES_URL = "https://github.com/vllm-project/vllm/issues"

# Every placeholder a template may use; each has a value for every bundle and run directory.
PLACEHOLDERS: dict[str, str] = {
    "title_summary": "the report's title (without the [Bug]: prefix)",
    "collect_env": "the output of vLLM's collect_env (or what to run instead)",
    "server_command": "the server's command line (a shell comment saying why when unknown)",
    "server_command_source": "where the server command came from",
    "repro_command": "the repro command that produced this report",
    "repro_command_note": "what that command is (the load that reproduced it, the watchdog, the capture)",
    "minimal_config": "the repro bisect minimal configuration, or how to get one",
    "classification": "the detector's class (engine-stall, server-dead, ...)",
    "time_to_stall": "how long the load ran before the stall began",
    "last_stats_line": "vLLM's last stats line",
    "metrics": "the metrics read at capture (or why there are none)",
    "verdict_line": "what py-spy and the metrics showed",
    "stacks": "the stacks of every process (collapsed)",
    "signature": "the stack signature",
    "signature_lines": "the frames the signature is made of",
    "death_summary": "what killed the server: the exception, the frame, when",
    "traceback": "the fatal traceback from the server log (collapsed), or which flag would have captured it",
    "death_observed": "last stats line, last metrics and when, requests in flight, connection refused at",
    "log_source": "where the server log was read, or why there is none",
    "clean_summary": "no reproduction in N hours at concurrency C",
    "exposure": "the clean run's load, requests and detector in figures",
    "bundle_file": "the bundle's tarball name",
    "bundle_size": "its size",
    "attachments": "what to attach to the issue",
    "vllm_version": "the server's vLLM version",
    "repro_version": "the repro version that wrote the report's files",
    "captured_at": "when the evidence was taken",
    "errors": "collector failures of the capture",
    "versions_checked": "Before submitting: the versions checked",
    "possibly_related": "Before submitting: the upstream search (known hangs)",
    "redaction_note": "Before submitting: what was masked, what to review",
    "report": "which reports this input gets: stall, death, clean, storage, stall+storage",
    "storage_title": "storage report: title",
    "storage_summary": "storage report: what leaks / fills, and that it is not a hang",
    "storage_client": "storage report: the client's timeout, retries, consume policy, aborts",
    "storage_rate": "storage report: how fast",
    "storage_census": "storage report: the census table",
    "storage_moment": "storage report: which census the figures come from, and when",
    "storage_warnings": "storage report: the warnings repro raised",
    "storage_kind": "storage report: leak | exhaustion | death",
}


def find_template(explicit: str | Path | None = None, name: str = STALL_TEMPLATE) -> Path:
    """--template, else ./<name>, else the one at the top of the repro checkout, else the installed copy."""
    here = Path(__file__).resolve().parents[1]
    cands = [Path(explicit)] if explicit else [Path.cwd() / name, here.parent / name, here / "templates" / name]
    for c in cands:
        if c.is_file():
            return c
    raise UsageError(f"no issue template found (looked at {', '.join(map(str, cands))})",
                     help=f"Pass --template PATH (copy {name} from the repro repository).")


def _read(p: Path, default: str = "") -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return default


def _fence(text: str, lang: str = "text") -> str:
    """A fenced block that stays a block whatever backticks the text holds."""
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    f = "`" * max(3, longest + 1)
    return f"{f}{lang}\n{text.rstrip()}\n{f}"


def _details(summary: str, body: str) -> str:
    return f"<details>\n<summary>{summary}</summary>\n\n{body}\n\n</details>"


def _thread_block(thread: dict[str, Any]) -> str:
    return f'Thread {thread["tid"]} "{thread["name"]}" ({thread["verdict"]}):\n' + \
        "\n".join(f"    {f}" for f in thread["stack"])


def _process_stack_text(bundle: Path, proc: dict[str, Any], rec: dict[str, Any] | None) -> str:
    """The last native dump of the process if there is one, else its threads from the analysis."""
    d = bundle / (rec or {}).get("stacks_dir", f"stacks/{proc['label']}-{proc['pid']}")
    natives = sorted(d.glob("sample-*.native.txt"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    text = _read(natives[-1]) if natives else ""
    if not text.strip() or text.startswith("(no output"):
        text = "\n".join(_thread_block(t) for t in proc["threads"]) or "(no stacks could be taken)"
    if len(text) > MAX_STACK_CHARS:
        text = text[:MAX_STACK_CHARS] + "\n... (cut; the bundle has the full dump)"
    return text


def render_stacks(bundle: Path, analysis: dict[str, Any]) -> str:
    procs = {p["pid"]: p for p in bundle_processes(bundle)}
    blocks = []
    for p in sorted(analysis.get("processes", []), key=lambda p: (ROLE_ORDER.get(p["role"], 9), p["pid"])):
        main = next((t for t in p["threads"] if t["main"]), None)
        where = f" in <code>{main['stuck_frame']}</code>" if main and main.get("stuck_frame") else ""
        summary = f"{p['label']} (pid {p['pid']}): main thread {p['verdict']}{where}"
        blocks.append(_details(summary, _fence(_process_stack_text(bundle, p, procs.get(p["pid"])))))
    return "\n\n".join(blocks) if blocks else "(no stacks: see errors.txt in the bundle)"


def verdict_line(analysis: dict[str, Any]) -> str:
    """One sentence on what py-spy and the metrics showed."""
    proc = analysis.get("stuck_process") or "the engine"
    if analysis.get("verdict") in ("progressing", "idle"):
        return (f"Note: during the capture the engine was **{analysis['verdict']}** ({analysis.get('verdict_reason')}), so "
                "this bundle may not show a hang.")
    frame = analysis.get("stuck_frame")
    mp = analysis.get("metrics_progress")
    intro = (f"The engine stopped making progress: the token counters stayed flat for the {mp['window_s']:.0f} s of "
             "sampling while the API server kept answering `/metrics`. " if mp and mp["tokens"] == 0 else "")
    line = intro + f"py-spy shows {proc} **{analysis.get('verdict')}**" + (f" in `{frame}`" if frame else "")
    cul = analysis.get("culprit") or {}
    gpu = (analysis.get("gpu") or {}).get("note")
    cuda = f" It waits for the GPU in `{analysis['cuda_wait']}` (`--native` frames)." if analysis.get("cuda_wait") else ""
    tail = cuda + (f" {gpu}" if gpu else "")
    if cul and cul.get("process") != proc:
        return line + f" across all samples, waiting for {cul['process']}, which is **{cul['verdict']}** in " \
                      f"`{cul['stuck_frame']}`." + tail
    return line + " across all samples." + tail


def _utc(t: float | str | None) -> str | None:
    """`2026-12-01 15:00:00 UTC` from epoch seconds or an ISO string; None when there is no time."""
    from repro.analyze.report import _epoch

    e = _epoch(t)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(e)) if e else None


def _metrics_values(m: dict[str, Any]) -> str:
    return ", ".join(f"`{k}`={v:g}" for k, v in m.items() if k not in ("t",) and isinstance(v, (int, float)))


def _metrics_line(bundle: Path) -> str:
    lines = _read(bundle / "context" / "metrics-samples.jsonl").splitlines()
    if not lines:
        man = _json(bundle / "manifest.json") or {}
        url = (man.get("target") or {}).get("url")
        if not url:
            return "not collected: the capture had no --url (pass --url URL to read /metrics)"
        failed = next((e for e in man.get("errors", []) or [] if str(e.get("what", "")).startswith("metrics")), None)
        why = f" ({failed.get('message')})" if failed and failed.get("message") else ""
        return f"none: `GET {url}/metrics` did not answer at capture{why}"
    try:
        m = json.loads(lines[-1])
    except ValueError:
        return "unreadable (context/metrics-samples.jsonl is not JSON lines)"
    return _metrics_values(m)


def _duration(s: float) -> str:
    s = int(round(s))
    h, r = divmod(s, 3600)
    m, sec = divmod(r, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def context_values(bundle: Path, tarball: Path | None = None) -> dict[str, str]:
    """Every placeholder's value for a bundle directory (its run directory is used when it sits in one)."""
    from repro.analyze.sources import is_run_dir

    return report_values(ReportSource(bundle, bundle.parent if is_run_dir(bundle.parent) else None, tarball))


# -- the outcome ---------------------------------------------------------------------------------
def outcome(src: ReportSource) -> str:
    """stall | death | clean: which main report the input gets (a storage finding is decided apart)."""
    det = src.detection
    cls = det.get("class") or det.get("classification")
    if cls == "server-dead":
        return "death"
    if cls in HANG_CLASSES or src.bundle is not None:
        return "stall"  # a classified hang, or a capture taken by hand of a suspected one
    summary = src.summary
    if summary.get("outcome") in ("clean", "interrupted"):
        return "clean"
    if summary.get("outcome") == "target-error":
        raise UsageError(f"{src.run_dir}: the run never reached its server ({summary.get('error')}): nothing to "
                         "report", help="Fix the target (see summary.json's error) and run again.")
    raise UsageError(f"{src.run_dir}: nothing to report yet: no bundle, no detection.json and no summary.json "
                     "(is the run still going?)")


# -- Before submitting ---------------------------------------------------------------------------
def possibly_related(src: ReportSource, values: dict[str, str], analysis: dict[str, Any] | None = None) -> str:
    """The upstream-search line of "Before submitting": known hangs that match this report.

    A bundle is matched against repro's catalogue of known vLLM hangs and leaks (``known_matches`` of its
    analysis, with the version verdict); a run directory without a bundle has no stacks to match, and the
    line says where to search by hand."""
    what = values.get("_search_term") or ""
    label = "exception" if values.get("death_summary") else "stuck frame"
    query = f"{ISSUES_URL}?q=" + urllib.parse.quote_plus(f"is:issue {what}".strip())
    by_hand = f"search [vLLM's issues]({query}) for the " + (f"{label} `{what}`" if what else label)
    if analysis and "known_matches" in analysis:
        line = known.possibly_related(analysis)
        if analysis["known_matches"]:
            return f"Upstream search: {line}"
        return f"Upstream search: {line.rstrip('.')}; {by_hand}."
    return f"Upstream search: repro matches bundles, and this report has none to match; {by_hand}."


def versions_checked(version: str, where: str) -> str:
    return (f"Seen on vLLM {version} (read from {where}). repro did not re-run it on the latest release or on "
            "`main`: run the reproducer there before filing and say which versions you checked.")


def redaction_note(src: ReportSource) -> str:
    red = src.manifest.get("redaction") or {}
    if src.bundle is None:
        return ("The command lines in this report were masked by repro (secret flag values such as `--api-key`). "
                "This report comes from a run directory, whose own files (server log, events) repro did not scrub: "
                "review anything you attach from it for tokens, keys, private URLs and hostnames.")
    n = red.get("total")
    rules = ", ".join(f"{k} ({v})" for k, v in sorted((red.get("rules") or {}).items())) or "none fired"
    hosts = "hostnames and IP addresses were mapped to aliases" if red.get("hosts_mapped") else \
        "hostnames and IP addresses were kept (`--redact-hosts` maps them to aliases)"
    return (f"repro masked secrets before anything was written to the bundle ({n if n is not None else 0} secret "
            f"values masked; rules: {rules}); {hosts}. It masks what it recognises, not everything: review this report and the "
            "bundle for tokens, keys, private URLs and personal data before you attach them.")


# -- a death -------------------------------------------------------------------------------------
def _log_source(src: ReportSource, where: str | None) -> str:
    if where:
        return f"`{where}`" + (" (the bundle's tail of the server log)" if where.startswith("context/") else "")
    info = src.scenario.get("server_log") or {}
    if info.get("source") and not info.get("path"):
        return str(info["source"])
    target = src.manifest.get("target") or {}
    if src.bundle is not None and not target.get("log_path") and not target.get("docker"):
        return ("no server log was captured: pass --log-file FILE (the file vLLM's output goes to) or --docker NAME "
                "to repro stress / watch / capture, or start the server with `repro serve`, which keeps its log")
    return "no server log was captured (the log file named by the run could not be read)"


def death_values(src: ReportSource, log_text: str, where: str | None) -> dict[str, str]:
    det = src.detection
    ev = det.get("evidence") or {}
    seen = det.get("last_seen") or {}
    fatal = death_mod.parse_fatal(log_text) if log_text else None
    refused = _utc(seen.get("refused_wall"))
    since = _utc(det.get("since_wall"))
    into = f", {_duration(float(det['since_s']))} into the load" if isinstance(det.get("since_s"), (int, float)) else ""
    if fatal is not None:
        who = f"{fatal.process or 'The server'}" + (f" (pid {fatal.pid})" if fatal.pid else "")
        raised = f", raised in `{fatal.frame.short}`" if fatal.frame else ""
        summary = (f"{who} died of `{fatal.exc_qualname}: {fatal.message}`{raised}{into}"
                   + (f" (at {since})" if since else "") + ". The full traceback from the server log is below.")
        if fatal.engine_dead_seen:
            summary += " The API server then raised `EngineDeadError` and stopped serving."
        if "repro_injected" in fatal.traceback:
            summary += " (This death was injected by repro's fault plugin, `raise-after`: a test of the kit.)"
        title = (f"{fatal.process or 'vLLM server'} dies of {fatal.exc_type}"
                 + (f" raised in {fatal.frame.function}" if fatal.frame else "") + " under load")
        tb = _details(f"Traceback of {fatal.process or 'the server'}"
                      + (f" (pid {fatal.pid})" if fatal.pid else "") + " from the server log",
                      _fence(fatal.traceback[:MAX_STACK_CHARS], "text"))
    else:
        reasons = "; ".join(ev.get("reasons") or []) or "the server stopped answering"
        summary = (f"The vLLM server went away under load{into}" + (f" (at {since})" if since else "")
                   + f": {reasons}. ")
        if log_text:
            summary += "Its log shows no Python traceback (a process killed from outside, e.g. by the OOM killer, "\
                       "dies without one: see `dmesg`)."
            title = "vLLM server dies under load without a traceback in its log"
            tb = "No traceback in the server log " + f"({_log_source(src, where)})."
        else:
            summary += "The log that would name the cause was not captured."
            title = ("vLLM server dies under load" + (f": connection refused from {refused}" if refused else "")
                     + " (cause not captured)")
            tb = f"Not available: {_log_source(src, where)}."
    m = seen.get("metrics") or {}
    m_line = _metrics_values(m) if m else ""
    m_at = _utc(seen.get("metrics_wall"))
    stats = seen.get("stats_line") or _last_stats(src)
    inflight = seen.get("client_in_flight", ev.get("client_in_flight"))
    rows = [f"- Detected: {'; '.join(ev.get('reasons') or []) or 'server-dead'}" + (f" at {since}" if since else "")]
    rows.append(f"- Last stats line: `{stats}`" if stats else "- Last stats line: none in the log repro read")
    rows.append(f"- Last `/metrics` read: {m_line} at {m_at}" if m_line and m_at else
                "- Last `/metrics` read: none succeeded during the run")
    rows.append(f"- Requests in flight at death (client side): {inflight}" if inflight is not None else
                "- Requests in flight at death: not recorded (the report's files hold no client view)")
    if refused:
        rows.append(f"- Connection refused at {refused} (`GET /metrics`)")
    elif ev.get("metrics_error"):
        rows.append(f"- `/metrics` at detection: {ev['metrics_error']}")
    else:
        rows.append("- The API server still answered `/metrics` when the death was detected (the fatal log line or "
                    "the exit of the process came first)")
    return {"death_summary": summary, "traceback": tb, "death_observed": "\n".join(rows),
            "log_source": _log_source(src, where), "_death_title": title,
            "_search_term": fatal.exc_type if fatal else ""}


def _last_stats(src: ReportSource) -> str | None:
    p = src.ctx("stats-lines.txt")
    stats = [ln for ln in read_text(p).splitlines() if "throughput" in ln]
    return stats[-1].strip() if stats else None


# -- a clean run ---------------------------------------------------------------------------------
def clean_values(src: ReportSource) -> dict[str, str]:
    s = src.summary
    load = src.scenario.get("load") or {}
    exp = float(s.get("exposure_seconds") or 0.0)
    c = load.get("concurrency", (s.get("fidelity") or {}).get("concurrency"))
    req = s.get("requests") or {}
    hours = exp / 3600.0
    head = (f"No reproduction in {hours:.3g} hours ({format_span(exp)}) of load at concurrency {c}"
            + (" (the run was interrupted)" if s.get("outcome") == "interrupted" else ""))
    fid = s.get("fidelity") or {}
    rows = [f"- Load: {s.get('load_seconds', exp):g} s, workload `{load.get('workload')}`, concurrency {c}"
            + (f", Poisson rate {load['rate']:g}/s" if load.get("rate") else ", closed loop"),
            f"- Requests: {req.get('total', 0)} sent, {req.get('ok', 0)} ok, {req.get('failed', 0)} failed, "
            f"{req.get('timeouts', 0)} client timeouts",
            f"- Started {s.get('started_at')}, ended {s.get('ended_at')} (stop reason: {s.get('stop_reason')})",
            f"- Detector at the end: {(s.get('detector') or {}).get('state')}; no stall was declared"]
    if fid.get("mean") is not None:
        rows.append(f"- Load fidelity (server running + waiting / concurrency): mean {fid['mean']}, p5 {fid.get('p5')}")
    if s.get("abort_storm"):
        rows.append(f"- Abort storm: {s['abort_storm'].get('seconds')} s (client timeouts threw work away)")
    return {"clean_summary": head, "exposure": "\n".join(rows), "_clean_title": head}


# -- all values ----------------------------------------------------------------------------------
def _stall_title(analysis: dict[str, Any]) -> tuple[str, str]:
    if not analysis.get("processes"):
        return "vLLM server reported stalled, but no stacks could be taken (see the bundle's errors.txt)", ""
    proc = analysis.get("stuck_process") or "the engine"
    cul = analysis.get("culprit") or {}
    cfn = (cul.get("stuck_frame") or "").split(" (")[0]
    if analysis.get("verdict") in ("progressing", "idle"):
        return f"{proc} reported stalled, but it was {analysis['verdict']} during capture", ""
    if cul and cul.get("process") != proc:
        return f"{proc} stops making progress: {cul['process']} {cul['verdict']} in {cfn}", cfn
    if cfn:
        return f"{proc} stops making progress ({cul.get('verdict')} in {cfn})", cfn
    frame = (analysis.get("stuck_frame") or "").split(" (")[0]
    return f"{proc} stops making progress ({analysis.get('verdict')})", frame


def report_values(src: ReportSource, bisect_dir: Path | None = None) -> dict[str, str]:
    """Every placeholder of :data:`PLACEHOLDERS`, for any bundle or run directory."""
    man, det, b = src.manifest, src.detection, src.bundle
    kind = outcome(src)
    analysis = analyze_bundle_dir(b) if b is not None else {"processes": [], "verdict": "no-stacks"}
    log_text, where = src.log_text()
    if kind == "stall" and not det.get("class") and not analysis.get("processes") and death_mod.parse_fatal(log_text):
        kind = "death"  # a capture taken by hand after the server died: its log names the cause
    ce = read_text(src.ctx("collect-env.txt")).strip() or (
        "collect-env was not run for this report (no bundle): run `python -m vllm.collect_env` with the server's "
        "Python and paste its output here")
    if len(ce) > COLLECT_ENV_MAX:
        ce = ce[:COLLECT_ENV_MAX] + "\n... (cut)"
    server_cmd, server_src = reproducer.server_command(src)
    repro_cmd, repro_note = reproducer.repro_command(src)
    version, version_src = reproducer.vllm_version(src, log_text)
    since = man.get("stall_since") or det.get("since_wall")
    tts = time_to_stall(det)
    stats = _last_stats(src)
    title, frame = _stall_title(analysis)
    if b is None:  # a stall of a run that did not capture (--on-stall exit)
        title = (f"vLLM engine stops making progress under load ({det.get('class')}; no stacks were captured: "
                 "the run used --on-stall exit)")
    sig = analysis.get("signature")
    values: dict[str, str] = {
        "collect_env": ce,
        "server_command": server_cmd, "server_command_source": server_src,
        "repro_command": repro_cmd, "repro_command_note": repro_note,
        "minimal_config": reproducer.minimal_config(bisect_dir or reproducer.bisect_dir_for(src)),
        "classification": str(det.get("class") or det.get("classification") or
                              ("clean" if kind == "clean" else f"none ({man.get('reason') or 'manual'} capture)")),
        "time_to_stall": _duration(float(tts)) if tts is not None else (
            f"stalled since {_utc(since)}" if _utc(since) else
            "not measured (a capture taken by hand: repro did not see the stall begin)"),
        "last_stats_line": f"`{stats}`" if stats else "none in the captured log",
        "metrics": _metrics_line(b) if b is not None else "not captured (no bundle)",
        "verdict_line": verdict_line(analysis) if b is not None else "No stacks were captured.",
        "stacks": render_stacks(b, analysis) if b is not None else "No stacks: the run directory holds no bundle.",
        "signature": str(sig) if sig else "none (no stacks)",
        "signature_lines": "\n".join(analysis.get("signature_lines") or ["(no stacks)"]),
        "vllm_version": version, "repro_version": str(man.get("repro_version") or _repro_version()),
        "captured_at": str(man.get("created") or src.summary.get("ended_at") or "not recorded"),
        "errors": read_text(b / "errors.txt").strip() if b is not None else "",
        "_search_term": frame,
    }
    tar = src.tarball or ((b.parent / f"{b.name}.tar.gz") if b is not None else None)
    if tar is not None and tar.exists():
        values["bundle_file"], values["bundle_size"] = tar.name, f"{tar.stat().st_size / 1e6:.2f} MB"
        values["attachments"] = (f"The full evidence (stacks of every process over time, metrics, log tail, redacted "
                                 f"environment) is in the attached bundle `{tar.name}` "
                                 f"({values['bundle_size']}): drag it into this issue.")
    else:
        name = b.name if b is not None else src.label
        values["bundle_file"], values["bundle_size"] = (f"{name} (no tarball)", "size not measured")
        values["attachments"] = (f"Attach from the run directory `{name}`: `summary.json`, `events.jsonl` and "
                                 "`timeline.csv` (and the server log, once you have checked it for secrets)."
                                 if b is None else f"Attach the bundle directory `{name}` as a .tar.gz.")
    values.update({k: "" for k in ("death_summary", "traceback", "death_observed", "clean_summary", "exposure")})
    values["log_source"] = _log_source(src, where)
    if kind == "death":
        values.update(death_values(src, log_text, where))
        title = values.pop("_death_title")
    elif kind == "clean":
        values.update(clean_values(src))
        title = values.pop("_clean_title")
    found = find_storage_in(src)
    store = storage_finding.values(found) if found else {}
    if found and found.cause:  # a storage death is no hang: name what killed the engine
        title = store["storage_title"]
    values["title_summary"] = title
    values["report"] = _report_kind(kind, found)
    for k in ("storage_title", "storage_summary", "storage_client", "storage_rate", "storage_census",
              "storage_moment", "storage_warnings", "storage_kind"):
        values[k] = store.get(k, "no storage problem found" if k != "storage_kind" else "none")
    values["versions_checked"] = versions_checked(version, version_src)
    values["redaction_note"] = redaction_note(src)
    values["possibly_related"] = possibly_related(src, values, analysis if b is not None else None)
    values.pop("_search_term", None)
    return values


def _report_kind(kind: str, found: storage_finding.StorageFinding | None) -> str:
    if found is None:
        return kind
    if found.cause or kind == "clean" or not found.hang and kind != "death":
        return "storage"
    return f"{kind}+storage"


def _repro_version() -> str:
    from repro import __version__

    return __version__


def _json(p: Path) -> Any:
    try:
        return json.loads(_read(p, "null") or "null")
    except ValueError:
        return None


def find_storage(bundle: Path, det: dict[str, Any], man: dict[str, Any]) -> storage_finding.StorageFinding | None:
    """The bundle's storage finding (leak / exhaustion warnings, a storage death), or None."""
    return find_storage_in(ReportSource(bundle, None))


def find_storage_in(src: ReportSource) -> storage_finding.StorageFinding | None:
    """The storage finding, its figures from one census: the run's final one (summary.json) when the run
    directory is known, else the bundle's at capture, else the last warning's."""
    final = src.summary.get("storage")
    if isinstance(final, dict):
        storage: dict[str, Any] | None = {"path": final.get("path"), "accounting": final,
                                          "moment": f"repro's final census at the end of the run "
                                                    f"({src.summary.get('ended_at')}, from summary.json)"}
    else:
        storage = _json(src.bundle / "context" / "storage.json") if src.bundle is not None else None
        if isinstance(storage, dict):
            storage = {**storage, "moment": f"repro's census at capture ({src.manifest.get('created')}, "
                                            "from the bundle's context/storage.json)"}
    return storage_finding.find(src.detection, storage, src.events, src.scenario, src.manifest)


class TemplateError(UsageError):
    """A template repro cannot fill: an unknown placeholder, or no title line."""


def check_template(template: str, name: str = "template") -> None:
    """Raise TemplateError naming the first unknown placeholder (with its line), or a missing `title:` line."""
    body = re.sub(r"\A\s*<!--.*?-->\s*", "", template, flags=re.S)
    offset = template[: len(template) - len(body)].count("\n")
    for i, line in enumerate(body.splitlines(), start=1 + offset):
        for m in re.finditer(r"\{\{(.*?)\}\}", line):
            key = m.group(1).strip()
            if key not in PLACEHOLDERS:
                close = difflib.get_close_matches(key, list(PLACEHOLDERS), n=1)
                raise TemplateError(f"{name}:{i}: unknown placeholder {{{{ {key} }}}}"
                                    + (f" (did you mean {{{{ {close[0]} }}}}?)" if close else
                                       " (`repro issue --help` lists the placeholders)"))
    if not any(ln.startswith("title:") for ln in body.splitlines()):
        raise TemplateError(f"{name}: no `title:` line (the first line starting with `title:` is the issue title)")


def render(template: str, values: dict[str, str], bug: bool = True, name: str = "template") -> str:
    check_template(template, name)
    text = re.sub(r"\A\s*<!--.*?-->\s*", "", template, flags=re.S)
    out = PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    lines = out.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("title:"):
            title = ln[len("title:"):].strip()
            if bug and not title.startswith("[Bug]: "):
                title = "[Bug]: " + title
            lines[i] = f"# {title}"
            break
    return "\n".join(lines).rstrip() + "\n"


def _render_file(path: Path, values: dict[str, str], kind: str) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read the template {path} ({exc.strerror or exc})") from None
    return render(text, values, bug=kind != "clean", name=str(path))


def render_issue(bundle: Path, template_path: Path, tarball: Path | None = None) -> str:
    return _render_file(template_path, context_values(bundle, tarball), "stall")


def render_source(src: ReportSource, template: Path | None = None, storage_template: Path | None = None,
                  bisect_dir: Path | None = None, template_for: str | None = None) -> dict[str, str]:
    """{"stall"|"death"|"clean": text, "storage": text}: the main report first, the storage report beside it.

    ``template`` replaces the main report's default template (by outcome); templates are looked up
    (:func:`find_template`) only when the input needs them; with ``template_for`` only for that outcome."""
    values = report_values(src, bisect_dir)
    kinds = values["report"].split("+")
    out = {}
    for kind in kinds:
        given = storage_template if kind == "storage" else (template if template_for in (None, kind) else None)
        out[kind] = _render_file(given or find_template(None, TEMPLATES[kind]), values, kind)
    return out


def render_reports(bundle: Path, template_path: Path, storage_template: Path | None = None,
                   tarball: Path | None = None) -> dict[str, str]:
    """A bundle's reports (see :func:`render_source`); `template_path` is the stall report's template."""
    from repro.analyze.sources import is_run_dir

    src = ReportSource(bundle, bundle.parent if is_run_dir(bundle.parent) else None, tarball)
    return render_source(src, template_path, storage_template, template_for="stall")
