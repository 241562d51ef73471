#!/usr/bin/env bash
# Packages what Spark executors need to run TRAIT's jobs, into DIR (default build/spark):
#   DIR/trait.zip      the project's own Python packages (trait, spark_jobs), for --py-files
#   DIR/env.tar.gz     a virtual environment with the `select` extra's dependencies (fastText, pyarrow, ...),
#                      packed with venv-pack, for --archives DIR/env.tar.gz#environment
# pyspark itself is not packed: the cluster's Spark puts its own on the executors' path.
# venv-pack does not copy the interpreter: executors need the same Python (3.x.y) at the same path as here,
# which holds on clusters built from one image. Where that is not so, build env.tar.gz with conda-pack instead.
# Usage: infra/spark/package.sh [--no-env] [DIR]   (--no-env: the zip only, for nodes that already have the
# dependencies; PYTHON=/path/to/python picks the environment's interpreter, default: the one .venv was made from)
set -euo pipefail
cd "$(dirname "$0")/../.."
with_env=1
if [ "${1:-}" = "--no-env" ]; then with_env=0; shift; fi
out=${1:-build/spark}
mkdir -p "$out"

.venv/bin/python - "$out/trait.zip" <<'PY'
import pathlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as zf:
    for package in ("trait", "spark_jobs"):
        for path in sorted(pathlib.Path(package).rglob("*.py")):
            zf.write(path)
PY

stamp=$(sha1sum constraints.txt pyproject.toml | sha1sum | cut -c1-12)
if [ "$with_env" = 1 ] && { [ ! -f "$out/env.tar.gz" ] || [ "$(cat "$out/env.stamp" 2>/dev/null)" != "$stamp" ]; }; then
  python=${PYTHON:-$(.venv/bin/python -c 'import sys; print(sys._base_executable)')}
  rm -rf "$out/executor-venv" "$out/env.tar.gz"
  "$python" -m venv "$out/executor-venv"
  deps=$(.venv/bin/python - <<'PY'
from importlib import metadata
from packaging.requirements import Requirement
reqs = [Requirement(r) for r in metadata.requires("trait")]
print(" ".join(f"{r.name}{r.specifier}" for r in reqs
               if (not r.marker or r.marker.evaluate({"extra": "select"})) and r.name != "pyspark"))
PY
)
  # shellcheck disable=SC2086
  "$out/executor-venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt $deps
  .venv/bin/venv-pack -q -p "$out/executor-venv" -o "$out/env.tar.gz"
  echo "$stamp" > "$out/env.stamp"
fi
echo "package: $out/trait.zip$([ "$with_env" = 1 ] && echo " $out/env.tar.gz")" >&2
