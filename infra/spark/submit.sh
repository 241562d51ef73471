#!/usr/bin/env bash
# Runs a TRAIT Spark job through spark-submit:
#   infra/spark/submit.sh [spark-submit options] -- COMMAND [trait options]
#   infra/spark/submit.sh --master spark://host:7077 -- score --input hdfs:///pool --model m1 m2 --output hdfs:///scored
# Ships the project as --py-files and its dependencies as a packed environment (--archives ...#environment,
# used by executors as ./environment/bin/python), both built by infra/spark/package.sh. Set TRAIT_SPARK_PYTHON
# to an interpreter every node has (e.g. this repository's .venv/bin/python on a one-machine cluster) to skip the
# archive. Uses $SPARK_HOME/bin/spark-submit, else the one inside the installed pyspark.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${TRAIT_SPARK_BUILD:-$repo/build/spark}

submit_args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do submit_args+=("$1"); shift; done
[ $# -gt 0 ] || { echo "usage: $0 [spark-submit options] -- COMMAND [trait options]" >&2; exit 2; }
shift

if [ -n "${SPARK_HOME:-}" ]; then
  spark_submit="$SPARK_HOME/bin/spark-submit"
else
  spark_submit="$("$repo/.venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')/bin/spark-submit"
fi

python_conf=()
if [ -n "${TRAIT_SPARK_PYTHON:-}" ]; then
  "$here/package.sh" --no-env "$build"
  python_conf=(--conf "spark.pyspark.python=$TRAIT_SPARK_PYTHON" --conf "spark.pyspark.driver.python=$TRAIT_SPARK_PYTHON")
else
  "$here/package.sh" "$build"
  python_conf=(--archives "$build/env.tar.gz#environment" --conf spark.pyspark.python=./environment/bin/python
               --conf "spark.pyspark.driver.python=${PYSPARK_DRIVER_PYTHON:-$repo/.venv/bin/python}")
fi

exec "$spark_submit" --py-files "$build/trait.zip" "${python_conf[@]}" "${submit_args[@]}" "$here/entry.py" "$@"
