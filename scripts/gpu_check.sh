#!/usr/bin/env bash
# The GPU check: every point of the kit proven against a real vLLM on a GPU (or, with --cpu, a CPU vLLM).
#   scripts/gpu_check.sh start LABEL [--cpu]       build the model, start every server at once, wait until ready
#   scripts/gpu_check.sh run   LABEL OUT [--cpu]   run the steps (tests/gpu/, one lane per file, lanes in parallel),
#                                                  stop the servers, write OUT/gpu-check-LABEL.{tar.gz,md}
#   scripts/gpu_check.sh all   LABEL OUT [--cpu]   start + run in one call
#   scripts/gpu_check.sh stop  LABEL               stop whatever a failed run left
# LABEL names the vLLM under test (0.20.2, 0.26.0). Needs only python3 with the kit and vLLM importable (e.g.
# PYTHONPATH=/tmp/site-0.20.2) plus pytest and pytest-timeout. The exact commands for the accelerator machine:
# scripts/gpu_check.md. Driver: tests/gpu/harness.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m tests.gpu.harness "$@"
