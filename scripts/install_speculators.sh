#!/usr/bin/env bash
# Install the real speculators client and hs-connectors beside a CPU vLLM (the tests drive them; the FP8
# connector is loaded by vLLM from hs-connectors), without disturbing vLLM's torch.
#
#   usage: scripts/install_speculators.sh VENV_DIR
#
# speculators 0.9.0 requires torchvision and torchaudio; on PyPI those are CUDA builds that crash beside CPU
# torch and break vLLM's CLI (scripts/install_vllm_cpu.sh removes them on purpose). So speculators and
# hs-connectors go in with --no-deps, and the only requirements the venv lacks are added explicitly: datasets
# (with pyarrow, pandas, xxhash, multiprocess). torch, transformers, openai, typer, loguru, aiohttp, pydantic
# and the rest are already there with vllm-cpu 0.32.0 at versions speculators accepts. speculators' data
# generation does not import torchvision or torchaudio (transformers falls back to its dummy objects), so
# nothing else is needed. Idempotent; about 20-50 s on a clean machine (mostly downloading pyarrow and pandas).
set -euo pipefail
VENV=${1:?usage: install_speculators.sh VENV_DIR}
SPECULATORS=${SPECULATORS_VERSION:-0.9.0}
HS_CONNECTORS=${HS_CONNECTORS_VERSION:-0.9.0}
PIP=("$VENV/bin/pip" install -q)
if "$VENV/bin/python" - "$SPECULATORS" "$HS_CONNECTORS" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
ok = md.version("speculators") == sys.argv[1] and md.version("hs-connectors") == sys.argv[2]
md.version("datasets")
sys.exit(0 if ok else 1)
PY
then
  echo "speculators $SPECULATORS and hs-connectors $HS_CONNECTORS already in $VENV"
  exit 0
fi
torch_before=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')
# pip names the two requirements left out on purpose (torchvision, torchaudio): expected, not shown
quiet='^WARNING: Location|dependency resolver does not currently|source of the following dependency conflicts|requires (torchvision|torchaudio), which is not installed'
"${PIP[@]}" --no-deps "speculators==$SPECULATORS" "hs-connectors==$HS_CONNECTORS" 2>&1 | grep -vE "$quiet" || true
"${PIP[@]}" "datasets>=4.0.0,<=5.1.0" 2>&1 | grep -vE "$quiet" || true
torch_after=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')
if [ "$torch_before" != "$torch_after" ]; then
  echo "torch changed from $torch_before to $torch_after: the CPU vLLM needs its own torch back" >&2
  exit 1
fi
for gone in torchvision torchaudio; do
  if "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$gone') is None)"; then
    echo "$gone got installed: it breaks vLLM's CLI on CPU; remove it with $VENV/bin/pip uninstall -y $gone" >&2
    exit 1
  fi
done
"$VENV/bin/speculators" --version
"$VENV/bin/python" -c 'import hs_connectors, datasets; print("hs-connectors", hs_connectors.__version__, "datasets", datasets.__version__)'
"$VENV/bin/vllm" --version
