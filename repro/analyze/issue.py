"""Render ISSUE.md from a bundle and the user-editable top-level ISSUE_TEMPLATE.md.

The template uses ``{{ name }}`` placeholders (no logic). The first line that
starts with ``title:`` becomes the title line of ISSUE.md (``# [Bug]: ...``)
and an HTML comment at the top of the template is dropped. Unknown placeholders
are left visible so a typo in an edited template shows instead of vanishing.

A bundle that shows a storage problem (``storage-leak`` / ``storage-exhaustion`` warnings, or a
death the log blames on the hidden-state store) is worded as a storage report from
``ISSUE_TEMPLATE_STORAGE.md`` (see :mod:`repro.storage.finding`): what leaks, under which client
behaviour, how fast, the census -- not as a hang. When the same bundle also shows a genuine
stall, the storage report is a second file beside ISSUE.md.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

from repro.analyze import known
from repro.analyze.report import time_to_stall
from repro.analyze.stacks import analyze_bundle_dir
from repro.errors import UsageError
from repro.storage import finding as storage_finding

PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
MAX_STACK_CHARS = 12_000  # per process in ISSUE.md; the bundle has everything
COLLECT_ENV_MAX = 30_000

ROLE_ORDER = {"engine_core": 0, "worker": 1, "api_server": 2, "launcher": 3, "other": 4}


STALL_TEMPLATE, STORAGE_TEMPLATE = "ISSUE_TEMPLATE.md", "ISSUE_TEMPLATE_STORAGE.md"


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
    procs = {p["pid"]: p for p in json.loads(_read(bundle / "processes.json", "[]"))}
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
        return (f"Note: during the capture the engine was **{analysis['verdict']}** ({analysis.get('verdict_reason')}), "
                "so this bundle may not show a hang.")
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


def _metrics_line(bundle: Path) -> str:
    lines = _read(bundle / "context" / "metrics-samples.jsonl").splitlines()
    if not lines:
        return "not collected (no --url)"
    try:
        m = json.loads(lines[-1])
    except ValueError:
        return "unreadable"
    return ", ".join(f"`{k}`={v:g}" for k, v in m.items() if k != "t")


def _duration(s: float) -> str:
    s = int(round(s))
    h, r = divmod(s, 3600)
    m, sec = divmod(r, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def context_values(bundle: Path, tarball: Path | None = None) -> dict[str, str]:
    man = json.loads(_read(bundle / "manifest.json", "{}"))
    analysis = analyze_bundle_dir(bundle)
    det = _json(bundle / "context" / "detection.json") or man.get("detection") or {}
    stats = [ln for ln in _read(bundle / "context" / "stats-lines.txt").splitlines() if "throughput" in ln]
    ce = _read(bundle / "context" / "collect-env.txt").strip() or "(collect-env was not collected)"
    if len(ce) > COLLECT_ENV_MAX:
        ce = ce[:COLLECT_ENV_MAX] + "\n... (cut)"
    server_cmd = man.get("server_command") or _read(bundle / "context" / "server-command.txt").split()
    repro_cmd = man.get("repro_command")
    since = man.get("stall_since")
    tts = time_to_stall(det)
    proc = analysis.get("stuck_process") or "the engine"
    frame = analysis.get("stuck_frame")
    cul = analysis.get("culprit") or {}
    cfn = (cul.get("stuck_frame") or "").split(" (")[0]
    if analysis.get("verdict") in ("progressing", "idle"):
        title = f"{proc} reported stalled, but it was {analysis['verdict']} during capture"
    elif cul and cul.get("process") != proc:
        title = f"{proc} stops making progress: {cul['process']} {cul['verdict']} in {cfn}"
    elif cfn:
        title = f"{proc} stops making progress ({cul.get('verdict')} in {cfn})"
    else:
        title = f"{proc} stops making progress ({analysis.get('verdict')})"
    found = find_storage(bundle, det, man)
    store = storage_finding.values(found) if found else {}
    if found and found.cause:  # a storage death is no hang: name what killed the engine
        title = store["storage_title"]
    tar = tarball or (bundle.parent / f"{bundle.name}.tar.gz")
    size = f"{tar.stat().st_size / 1e6:.2f} MB" if tar.exists() else "size unknown"
    cls = det.get("class") or det.get("classification") or man.get("reason") or "unknown"
    return {
        "title_summary": title,
        "collect_env": ce,
        "server_command": shlex.join(server_cmd) if server_cmd else "(server command not recorded)",
        "repro_command": shlex.join(repro_cmd) if repro_cmd else f"repro capture --pid <server pid> --url <url>",
        "classification": str(cls),
        "time_to_stall": _duration(float(tts)) if tts is not None else (
            f"stalled since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(since)))}" if since
            else "unknown"),
        "last_stats_line": stats[-1].strip() if stats else "(no stats line in the log tail)",
        "metrics": _metrics_line(bundle),
        "verdict_line": verdict_line(analysis),
        "stacks": render_stacks(bundle, analysis),
        "signature": str(analysis.get("signature")),
        "signature_lines": "\n".join(analysis.get("signature_lines") or ["(no stacks)"]),
        "bundle_file": tar.name,
        "bundle_size": size,
        "vllm_version": str(man.get("vllm_version")),
        "repro_version": str(man.get("repro_version")),
        "captured_at": str(man.get("created")),
        "errors": _read(bundle / "errors.txt").strip(),
        "report": "none" if not found else ("stall+storage" if found.hang else "storage"),
        "possibly_related": possibly_related(analysis),
        **store,
    }


def possibly_related(analysis: dict[str, Any]) -> str:
    """The "Possibly related" line: known upstream problems the bundle matches, with the version verdict."""
    return known.possibly_related(analysis)


def _json(p: Path) -> Any:
    try:
        return json.loads(_read(p, "null") or "null")
    except ValueError:
        return None


def find_storage(bundle: Path, det: dict[str, Any], man: dict[str, Any]) -> storage_finding.StorageFinding | None:
    """The bundle's storage finding (leak / exhaustion warnings, a storage death), or None."""
    events = []
    for line in _read(bundle / "context" / "events.jsonl").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return storage_finding.find(det, _json(bundle / "context" / "storage.json"), events,
                                _json(bundle / "context" / "scenario.json"), man)


def render(template: str, values: dict[str, str]) -> str:
    text = re.sub(r"\A\s*<!--.*?-->\s*", "", template, flags=re.S)
    out = PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    lines = out.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("title:"):
            title = ln[len("title:"):].strip()
            if not title.startswith("[Bug]: "):
                title = "[Bug]: " + title
            lines[i] = f"# {title}"
            break
    return "\n".join(lines).rstrip() + "\n"


def render_issue(bundle: Path, template_path: Path, tarball: Path | None = None) -> str:
    return render(template_path.read_text(), context_values(bundle, tarball))


def render_reports(bundle: Path, template_path: Path, storage_template: Path | None = None,
                   tarball: Path | None = None) -> dict[str, str]:
    """{"stall": text} for a hang, {"storage": text} for a storage finding, both when the bundle shows both.

    The storage template is looked up (``find_template``) only when the bundle needs it."""
    values = context_values(bundle, tarball)
    out = {}
    if values["report"] in ("none", "stall+storage"):
        out["stall"] = render(template_path.read_text(), values)
    if values["report"] in ("storage", "stall+storage"):
        stpl = storage_template or find_template(None, STORAGE_TEMPLATE)
        out["storage"] = render(stpl.read_text(), values)
    return out
