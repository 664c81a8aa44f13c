"""The reproducer of a report: the repro command that reproduced it, the server command, the vLLM version,
and the bisect minimal configuration when one exists. Every value says where it came from, and says so
plainly when it is not known (with the flag that would have recorded it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from repro.analyze.sources import ReportSource, read_text
from repro.server.attached import remote_note

_LOG_VERSION = (re.compile(r"Initializing a V1 LLM engine \(v([^)\s]+)\)"), re.compile(r"\bversion (\d+\.\d+\.\d+\S*)"))
_WHO = {
    "stress": "the load that reproduced it (`repro stress`; the run stops at the first stall, exit 1)",
    "trial": "the load that reproduced it (`repro trial`: one stress run, exit 1 on a stall)",
    "watch": "the watchdog that caught it (`repro watch`; the load came from the server's own clients)",
    "capture": "the capture (`repro capture`; the load came from the server's own clients)",
    "bisect": "the search one of whose trials reproduced it (`repro bisect`; the minimal configuration is below)",
}


def repro_argv(src: ReportSource) -> list[str] | None:
    """The capture's command line, unless it captured a run of stress / watch / trial: then that run's."""
    man, inv = src.manifest.get("repro_command"), src.scenario.get("invocation")
    if isinstance(man, list) and man[1:2] == ["capture"] and isinstance(inv, list) and inv:
        man = None
    argv = man or inv
    return [str(a) for a in argv] if isinstance(argv, list) and argv else None


def repro_command(src: ReportSource) -> tuple[str, str]:
    """(the command as a shell line, what it is)."""
    argv = repro_argv(src)
    if not argv:
        return ("# not recorded: this report's files were written without repro's command line",
                "the repro command (not recorded)")
    who = _WHO.get(argv[1] if len(argv) > 1 else "", "the repro command that produced this report")
    return shlex.join(argv), who


def server_command(src: ReportSource) -> tuple[str, str]:
    """(the server's command line as a shell line, where it came from)."""
    man, scn = src.manifest, src.scenario
    cmd = man.get("server_command") or scn.get("server_command")
    if cmd:
        rec = next((r for r in man.get("collectors", []) or [] if isinstance(r, dict)
                    and r.get("name") == "server command"), {}) if man.get("server_command") else {}
        source = rec.get("source")
        if source in (None, "request"):  # the caller's: stress knows whether it launched it or read it
            source = scn.get("server_command_source") or "launched by repro"
        return shlex.join([str(a) for a in cmd]), "launched by repro" if source == "launched by repro" else f"read from {source}"
    url = scn.get("url") or (man.get("target") or {}).get("url")
    if url:
        return "# " + remote_note(str(url)), "not recorded"
    return ("# unknown: the report's files do not record how the server was started; pass --server-command "
            "'vllm serve ...' to repro stress / capture", "not recorded")


def vllm_version(src: ReportSource, log_text: str) -> tuple[str, str]:
    """(the server's vLLM version, where it was read)."""
    for rx in _LOG_VERSION:
        m = rx.search(log_text)
        if m:
            return m.group(1), "the server's log"
    v = src.manifest.get("vllm_version")
    if v:
        return str(v), "the capturing machine's Python (the server's log did not say)"
    return "not recorded", "run `vllm --version` with the server's Python"


def bisect_dir_for(src: ReportSource) -> Path | None:
    """The `repro bisect` run directory a trial's run directory or bundle sits in (…/trials/stepN-slotK/)."""
    start = src.run_dir or (src.bundle.parent if src.bundle is not None else None)
    for d in [start, *(start.parents if start is not None else [])][:4]:
        if d is not None and (d / "minimal.json").is_file() and (d / "ISSUE_bisect.md").is_file():
            return d
    return None


def minimal_config(bisect_dir: Path | None) -> str:
    """The bisect section (ISSUE_bisect.md), or a sentence saying no bisect has run."""
    if bisect_dir is not None:
        text = read_text(bisect_dir / "ISSUE_bisect.md").strip()
        if text:
            return text
    return ("No minimal configuration yet: `repro bisect` shrinks concurrency, duration and server toggles to the "
            "smallest configuration that still hangs (`repro issue --bisect DIR` adds its result here).")
