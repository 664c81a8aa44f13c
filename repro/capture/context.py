"""System context of a stall: metrics, logs, command line, environment, collect-env, GPU, storage.

Each function returns plain data (and the command it ran) and never raises for
an expected failure: the caller records it as a collector and writes the
failure to errors.txt.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import stat as stat_mod
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.capture.pyspy import run_with_timeout

STATS_MARK = "Avg prompt throughput"


@dataclass
class Fetched:
    ok: bool
    text: str
    status: int | None
    duration: float
    error: str | None = None


def fetch_metrics(url: str, api_key: str | None = None, timeout: float = 5.0) -> Fetched:
    t0 = time.monotonic()
    req = urllib.request.Request(url.rstrip("/") + "/metrics",
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read().decode("utf-8", "replace")
            return Fetched(True, body, r.status, time.monotonic() - t0)
    except urllib.error.HTTPError as exc:
        return Fetched(False, "", exc.code, time.monotonic() - t0, f"HTTP {exc.code} from {url}/metrics")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Fetched(False, "", None, time.monotonic() - t0, f"cannot reach {url}/metrics: {reason}")


KEY_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
               "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
               "vllm:num_preemptions_total")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def key_metrics(text: str) -> dict[str, float]:
    """The handful of vLLM gauges and counters a stall report needs, summed over label sets."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name = m.group(1)
        if name.endswith("_created"):
            continue
        if name in KEY_METRICS:
            try:
                out[name] = out.get(name, 0.0) + float(m.group(3))
            except ValueError:
                continue
    return out


def read_log_tail(path: Path, max_bytes: int = 4 * 1000 * 1000, stats_scan_bytes: int = 64 * 1000 * 1000,
                  stats_lines: int = 20) -> tuple[str, list[str], dict[str, Any]]:
    """(tail text, the last stats lines, info). Stats lines are searched further back than the tail keeps,
    because a hung engine prints one `0.0 tokens/s` line and then goes quiet."""
    info: dict[str, Any] = {"path": str(path)}
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        info["size"] = size
        start = max(0, size - max(max_bytes, stats_scan_bytes))
        f.seek(start)
        data = f.read()
    tail, stats, more = tail_and_stats(data.decode("utf-8", "replace"), max_bytes, stats_lines, partial=start > 0)
    info.update(more)
    try:
        info["mtime_age_s"] = round(time.time() - path.stat().st_mtime, 1)
    except OSError:
        pass
    return tail, stats, info


def tail_and_stats(text: str, max_bytes: int, stats_lines: int = 20,
                   partial: bool = False) -> tuple[str, list[str], dict[str, Any]]:
    """The last `max_bytes` of whole lines, and the last stats lines of all of `text`."""
    lines = text.splitlines()
    if partial and lines:
        lines = lines[1:]  # a partial first line
    stats = [ln for ln in lines if STATS_MARK in ln][-stats_lines:]
    tail_bytes, tail = 0, []
    for ln in reversed(lines):
        tail_bytes += len(ln) + 1
        if tail_bytes > max_bytes:
            break
        tail.append(ln)
    tail.reverse()
    return "\n".join(tail) + "\n", stats, {"lines_kept": len(tail), "truncated": partial or len(tail) < len(lines)}


def proc_environ(pid: int) -> tuple[dict[str, str] | None, str | None]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError as exc:
        return None, f"cannot read /proc/{pid}/environ: {exc.strerror or exc}"
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, _, v = item.decode("utf-8", "replace").partition("=")
            env[k] = v
    return env, None


COLLECT_ENV_CACHE_TTL = 24 * 3600.0
_ENV_PREFIXES = ("VLLM_", "CUDA", "NCCL", "TORCH", "PYTORCH", "LD_LIBRARY_PATH", "OMP_", "NVIDIA", "HF_HUB_OFFLINE",
                 "PATH")


def collect_env_cache_key(python: str, env: dict[str, str] | None) -> str:
    """Same interpreter, same installed packages (site-packages mtime) and same relevant env → same output."""
    real = os.path.realpath(python)
    parts: list[str] = [python, real]
    try:
        parts.append(str(os.stat(real).st_mtime_ns))
    except OSError:
        pass
    for sp in sorted(Path(python).parent.parent.glob("lib/python3*/site-packages")):
        try:
            parts.append(f"{sp}:{sp.stat().st_mtime_ns}")
        except OSError:
            continue
    parts += sorted(f"{k}={v}" for k, v in (env or {}).items() if k.startswith(_ENV_PREFIXES))
    import hashlib

    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repro" / "collect-env"


def collect_env(python: str, timeout: float, env: dict[str, str] | None = None,
                cache_dir: Path | None = None, wrap: list[str] | None = None) -> dict[str, Any]:
    """`python -m vllm.collect_env` with the server's own Python, under a time box.

    A successful output is cached (`cache_dir`, 24 h) under a key of the interpreter, its site-packages and the
    relevant environment: collect-env takes 15-40 s on a busy machine, and watch captures the same server again.
    ``wrap`` runs it elsewhere (e.g. ``nsenter --target PID --pid --mount --`` inside a container).
    """
    cmd = [*(wrap or []), python, "-m", "vllm.collect_env"]
    key = collect_env_cache_key(python, env)
    cached = cache_dir / f"{key}.txt" if cache_dir else None
    if cached is not None:
        try:
            if time.time() - cached.stat().st_mtime < COLLECT_ENV_CACHE_TTL:
                return {"command": cmd, "exit_code": 0, "duration": 0.0, "timed_out": False,
                        "text": cached.read_text(), "ok": True, "stderr": "", "cached": str(cached)}
        except OSError:
            pass
    rc, out, err, dt, timed_out = run_with_timeout(cmd, timeout, dict(env) if env else None)
    ok = rc == 0 and bool(out.strip()) and not timed_out
    if ok and cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(out)
            os.replace(tmp, cached)
        except OSError:
            pass
    return {"command": cmd, "exit_code": rc, "duration": dt, "timed_out": timed_out,
            "text": out if out.strip() else err, "ok": ok, "stderr": err, "cached": None}


def fallback_env(python: str | None, timeout: float, wrap: list[str] | None = None) -> dict[str, Any]:
    """When collect-env fails: platform, torch/CUDA versions and pip freeze of the server's Python."""
    py = python or shutil.which("python3") or "python3"
    pre = list(wrap or [])
    lines = [f"platform: {platform.platform()}", f"machine: {platform.machine()}",
             f"host python (repro): {platform.python_version()}", f"server python: {py}"]
    probe = ("import sys, platform; print('python', sys.version.replace(chr(10), ' '));\n"
             "try:\n import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,"
             " 'cuda_available', torch.cuda.is_available())\nexcept Exception as e: print('torch: not importable', e)\n"
             "try:\n import vllm; print('vllm', vllm.__version__)\nexcept Exception as e: print('vllm: not importable', e)")
    rc, out, err, dt, to = run_with_timeout([*pre, py, "-c", probe], timeout)
    lines.append(out.strip() or f"(version probe failed: {err.strip()[-300:]})")
    rc2, freeze, err2, dt2, to2 = run_with_timeout([*pre, py, "-m", "pip", "freeze", "--all"], timeout)
    return {"text": "\n".join(lines) + "\n", "freeze": freeze if rc2 == 0 else "",
            "commands": [[*pre, py, "-c", "<version probe>"], [*pre, py, "-m", "pip", "freeze", "--all"]],
            "exit_codes": [rc, rc2], "duration": dt + dt2, "timed_out": to or to2}


def nvidia(timeout: float) -> dict[str, Any]:
    """`nvidia-smi -q` and kernel Xid lines, when there is an NVIDIA GPU; present=False otherwise."""
    smi = shutil.which("nvidia-smi")
    out: dict[str, Any] = {"present": bool(smi) or Path("/dev/nvidiactl").exists()}
    if smi:
        rc, text, err, dt, to = run_with_timeout([smi, "-q"], timeout)
        out["smi"] = {"command": [smi, "-q"], "exit_code": rc, "duration": dt, "timed_out": to,
                      "text": text or err}
    if out["present"]:
        xid: list[str] = []
        cmd: list[str] = ["dmesg", "--ctime"]
        rc, text, err, dt, to = run_with_timeout(cmd, timeout) if shutil.which("dmesg") else (None, "", "no dmesg",
                                                                                              0.0, False)
        if rc != 0:
            for log in ("/var/log/kern.log", "/var/log/syslog"):
                try:
                    text = Path(log).read_text(errors="replace")[-4_000_000:]
                    cmd = ["read", log]
                    rc = 0
                    break
                except OSError:
                    continue
        xid = [ln for ln in text.splitlines() if "NVRM: Xid" in ln][-200:]
        out["xid"] = {"command": cmd, "exit_code": rc, "duration": dt, "timed_out": to, "lines": xid,
                      "error": None if rc == 0 else (err.strip() or "kernel log not readable")}
    return out


def mount_of(path: str, mounts_text: str | None = None) -> dict[str, str] | None:
    """The /proc/mounts entry holding `path` (longest mount point prefix)."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return None
    real = os.path.realpath(path)
    best = None
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt = parts[1].replace("\\040", " ")
        if real == mnt or real.startswith(mnt.rstrip("/") + "/") or mnt == "/":
            if best is None or len(mnt) >= len(best["mount_point"]):
                best = {"device": parts[0], "mount_point": mnt, "fs_type": parts[2], "options": parts[3]}
    return best


def storage_census(path: str, max_entries: int = 200_000, time_box: float = 5.0) -> dict[str, Any]:
    """Filesystem type, mount options, free space and inodes, and the files waiting there."""
    out: dict[str, Any] = {"path": path}
    p = Path(path)
    if not p.exists():
        out["error"] = f"{path} does not exist"
        return out
    out["mount"] = mount_of(path)
    try:
        vfs = os.statvfs(path)
        out["bytes_total"] = vfs.f_blocks * vfs.f_frsize
        out["bytes_free"] = vfs.f_bavail * vfs.f_frsize
        out["inodes_total"] = vfs.f_files
        out["inodes_free"] = vfs.f_favail
        if out["bytes_total"]:
            out["used_percent"] = round(100 * (1 - vfs.f_bavail / max(vfs.f_blocks, 1)), 1)
    except OSError as exc:
        out["statvfs_error"] = exc.strerror
    now, t0 = time.time(), time.monotonic()
    count = locks = total = 0
    oldest: float | None = None
    newest: float | None = None
    complete = True
    for root, dirs, files in os.walk(path):
        for name in files:
            if count >= max_entries or time.monotonic() - t0 > time_box:
                complete = False
                break
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not stat_mod.S_ISREG(st.st_mode):
                continue
            if name.endswith(".lock"):
                locks += 1
                continue
            count += 1
            total += st.st_size
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
            newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
        if not complete:
            break
    out.update(files_waiting=count, lock_files=locks, bytes_waiting=total, census_complete=complete,
               oldest_age_s=round(now - oldest, 1) if oldest is not None else None,
               newest_age_s=round(now - newest, 1) if newest is not None else None)
    return out
