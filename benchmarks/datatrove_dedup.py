"""datatrove's MinHash near-dedup, stages 1-4, as its docs and FineWeb run it: the side ``dedup_agreement`` compares
TRAIT against. Runs in the benchmark environment (``.venv-bench``, ``infra/setup_bench.sh``), never in ``.venv``.

    .venv-bench/bin/python -m benchmarks.datatrove_dedup INPUT_DIR WORK_DIR [--tasks 2] [--buckets 16] [--rows 8]

INPUT_DIR holds JSONL files (``id``, ``text``), one per stage-1 and stage-4 task. Stages: signatures (one task per
file), buckets (one task per bucket), clusters (one task; ``save_cluster_id``), filter (one task per file; removed
documents to ``WORK_DIR/removed``, kept ones to ``WORK_DIR/kept``, each with ``minhash_cluster_id``), each a
``LocalPipelineExecutor`` with ``--tasks`` workers. Prints one JSON line: seconds per stage and in all.
Imports only datatrove and the standard library, so it runs beside none of TRAIT's dependencies.
"""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.perf_counter()  # before datatrove's imports: they are part of what a user waits for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("work")
    parser.add_argument("--tasks", type=int, default=2, help="workers (and tasks of stages 1 and 4)")
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--rows", type=int, default=8, help="hashes per bucket")
    parser.add_argument("--shingle-size", type=int, default=5)
    args = parser.parse_args()

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    config = MinhashConfig(n_grams=args.shingle_size, num_buckets=args.buckets, hashes_per_bucket=args.rows,
                           hash_config=HashConfig(precision=64, hash_fc="xxhash"))
    work, seconds = args.work, {}

    def run(name: str, pipeline: list, tasks: int) -> None:
        started = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(tasks, args.tasks),
                              logging_dir=f"{work}/logs/{name}").run()
        seconds[name] = time.perf_counter() - started

    run("signatures", [JsonlReader(args.input), MinhashDedupSignature(f"{work}/signatures", config=config)],
        args.tasks)
    run("buckets", [MinhashDedupBuckets(f"{work}/signatures", f"{work}/buckets", config=config)], args.buckets)
    run("clusters", [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove_ids", config=config,
                                         save_cluster_id=True)], 1)
    run("filter", [JsonlReader(args.input),
                   MinhashDedupFilter(f"{work}/remove_ids", exclusion_writer=JsonlWriter(f"{work}/removed"),
                                      load_cluster_ids=True),
                   JsonlWriter(f"{work}/kept")], args.tasks)
    print(json.dumps({"seconds": time.perf_counter() - STARTED, "stages": seconds}))


if __name__ == "__main__":
    main()
