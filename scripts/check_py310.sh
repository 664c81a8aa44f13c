#!/usr/bin/env bash
# The kit on Python 3.10 (the oldest version pyproject.toml's requires-python allows): a venv of its own with the
# runtime dependencies (and uvloop, which every vLLM install brings), then
#   1. every file byte-compiled by 3.10 (syntax),
#   2. every module of the package imported, and every subcommand's --help run,
#   3. the unit tests that need neither torch, vLLM, py-spy's ptrace nor a browser.
# usage: scripts/check_py310.sh [VENV_DIR]   (default .venv310; reused when present)
# Python 3.10 is taken from $REPRO_PY310, else pyenv's 3.10.x, else python3.10 on PATH; none found is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-$PWD/.venv310}
py=${REPRO_PY310:-}
if [ -z "$py" ]; then
    for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python "$(command -v python3.10 || true)"; do
        if [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
            py=$cand
            break
        fi
    done
fi
if [ -z "$py" ]; then
    echo "check_py310: no Python 3.10 found (set REPRO_PY310=/path/to/python3.10, or install it: pyenv install 3.10)" >&2
    exit 1
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' uvloop 2>&1 \
    | grep -vE "^WARNING: Location|^\s*$" || true
echo "check_py310: $("$VENV/bin/python" -V) in $VENV (install took $(( $(date +%s) - start )) s)"

"$VENV/bin/python" -m compileall -q -j 0 repro tests benchmarks scripts >/dev/null

"$VENV/bin/python" - <<'EOF'
import importlib
import pkgutil

import repro

names = [m.name for m in pkgutil.walk_packages(repro.__path__, "repro.") if m.name != "repro.__main__"]  # that one runs
# Modules that run inside vLLM's processes import torch/vLLM (not in this venv): compiled above, not imported here.
HEAVY = {"torch", "vllm", "ray"}
skipped = []
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in HEAVY:
            raise
        skipped.append(f"{name} (needs {exc.name})")
print(f"check_py310: imported {len(names) - len(skipped)} modules" + (f"; not here: {', '.join(skipped)}" if skipped else ""))
EOF

cmds=$("$VENV/bin/python" -c 'from repro.cli import cli; print(" ".join(cli.commands))')
for c in $cmds; do
    "$VENV/bin/repro" "$c" --help >/dev/null
done
echo "check_py310: --help of $(echo "$cmds" | wc -w) subcommands"

# Unit tests that run without torch, vLLM, root's ptrace or a browser (the rest need the CPU vLLM venv).
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/unit/test_units.py tests/unit/test_formats.py tests/unit/test_detector.py \
    tests/unit/test_detector_abort_storm.py tests/unit/test_monitor_parsers.py tests/unit/test_load_runner.py \
    tests/unit/test_load_outcome.py tests/unit/test_load_limits.py tests/unit/test_bisect_search.py \
    tests/unit/test_bisect_stats.py tests/unit/test_bisect_journal.py tests/unit/test_bisect_hazard.py \
    tests/unit/test_faultspec.py tests/unit/test_redact.py tests/unit/test_lastcheck.py tests/unit/test_layering.py \
    tests/unit/test_watch_policy.py tests/unit/test_storage.py tests/unit/test_known_catalogue.py
echo "check_py310: done in $(( $(date +%s) - start )) s"
