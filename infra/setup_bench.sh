#!/usr/bin/env bash
# Creates .venv-bench, the benchmarks' own environment for the tools TRAIT is measured against: HF datatrove 0.10.1
#   and what its MinHash dedup and fastText filter import (its "processing" and "io" extras would pull far more).
#   It stays out of .venv so that `make test` can never import it: a benchmark dependency only. Safe to rerun; a
#   ready venv takes ~2 s.
# Usage: infra/setup_bench.sh          (PYTHON=python3.11 infra/setup_bench.sh to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv-bench/bin/python ]; then
  "$python" -m venv .venv-bench
fi
if ! .venv-bench/bin/python -c "import datatrove, fasttext, fasteners, xxhash, orjson, regex, spacy, tokenizers" 2>/dev/null \
    || [ "$(.venv-bench/bin/python -c 'import importlib.metadata as m; print(m.version("datatrove"))')" != "0.10.1" ]; then
  .venv-bench/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
  # fasttext-numpy2-wheel: the only fastText package its filter accepts; xxhash<4: its MinHash hashes str, which
  # xxhash 4 refuses ("Strings must be encoded"); spacy: its English word tokenizer (spacy.blank("en"), no model
  # download); regex, tokenizers, orjson: imported by its text utilities, readers and JSONL reader; fasteners: its
  # fastText filter's model cache lock.
  .venv-bench/bin/python -m pip install -q --disable-pip-version-check "datatrove==0.10.1" \
    "fasttext-numpy2-wheel==0.9.2" "xxhash>=3,<4" "spacy>=3.8,<4" "regex>=2023.10" "tokenizers>=0.19" \
    "orjson>=3.9" "pyarrow>=15" "numpy>=1.26" "fasteners>=0.19"
fi
echo "setup_bench: ready ($(.venv-bench/bin/python -c 'import datatrove, importlib.metadata as m; print("datatrove", m.version("datatrove"))'))" >&2
