"""DSIR throughput: the reference package (``data-selection``, ``num_proc=2``) against ``trait baseline dsir`` on
``local[2]``, both pinned with ``taskset`` to the same 2 CPUs.

    python -m benchmarks.dsir_throughput [--docs N] [--work .bench/dsir]     (make bench-dsir)
    python -m benchmarks.dsir_throughput --quick      (1,500 documents: a regression check)

Corpus: the shared Wikipedia, PlanetMath and web documents (``benchmarks.score_throughput.read_base``), in seeded
shuffled order, repeated only past ~22k documents, to ``--docs`` (default 27,000: ~310 MB of text); the target is
the first 2,000 PlanetMath entries. The reference reads them as JSONL; the job reads the same documents ingested
into the contract (16 MiB row groups). Same settings on both sides: 10,000 buckets, unigrams + bigrams, minimum
length 100 words; the reference samples 10% of the documents, the job 10% of the tokens.

Timed, each in a fresh process: reference ``fit_importance_estimator()`` + ``compute_importance_weights()`` +
``resample()``; the job's whole ``run_dsir`` call (fit, weights, Gumbel top-k cut, Parquet output, statistics,
manifest), not the Spark session start. Goal: the job at least 2x the reference's docs/s (with --quick, where
Spark's fixed costs dominate, QUICK_GOAL); judged by ``benchmarks.gates``. One round (the run is several
minutes); variation on a shared VM is +-20%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gates import Gate, record
from benchmarks.score_throughput import REPO, ingest, read_base, write_jsonl
from trait.benchmarks import default_shared_data
from trait.outputs import check_folder

DEFAULT_DOCS, QUICK_DOCS, TARGET_DOCS = 27_000, 1_500, 2_000
GOAL = 2.0
QUICK_GOAL = 0.5  # 1,500 documents: the job measured 0.92x (Spark's start and scheduling dominate)
# What the work dir may hold: this benchmark replaces the pools, the target and both runs' outputs.
WORK_ENTRIES = ("pool-*", "target", "target.jsonl", "*.ingest.jsonl", "ref", "job", "*.log", "bench.json",
               "bench-quick.json")


def setup(work: Path, data: Path, docs: int) -> dict:
    """JSONL pool and target for the reference, the same pool and target ingested for the job (reused)."""
    import numpy as np

    corpus = work / f"pool-{docs}"
    if not (corpus / "_SUCCESS").exists() or not (work / f"pool-{docs}.jsonl").exists():
        from spark_jobs.session import get_spark

        base = read_base(data)
        rng = np.random.default_rng(0)
        order = np.concatenate([rng.permutation(len(base)) for _ in range(-(-docs // len(base)))])[:docs]
        target = [i for i, d in enumerate(base) if d[0] == "math"][:TARGET_DOCS]
        work.mkdir(parents=True, exist_ok=True)
        write_jsonl(work / f"pool-{docs}.jsonl", base, order)
        write_jsonl(work / "target.jsonl", base, target)
        spark = get_spark("bench-dsir-setup", "local[2]")
        for name, jsonl in ((f"pool-{docs}", f"pool-{docs}.jsonl"), ("target", "target.jsonl")):
            shutil.rmtree(work / name, ignore_errors=True)
            shutil.copy(work / jsonl, work / f"{name}.ingest.jsonl")
            ingest(spark, work / f"{name}.ingest.jsonl", work / name)  # (deletes its copy)
        spark.stop()
    with open(work / f"pool-{docs}.jsonl", encoding="utf-8") as fh:
        mb = sum(len(json.loads(line)["text"].encode()) for line in fh) / 1e6
    return {"pool": str(corpus), "target": str(work / "target"), "pool_jsonl": str(work / f"pool-{docs}.jsonl"),
            "target_jsonl": str(work / "target.jsonl"), "docs": docs, "mb": mb}


def child_reference(c: dict, work: Path) -> dict:
    from data_selection import HashedNgramDSIR

    shutil.rmtree(work / "ref", ignore_errors=True)
    started = time.perf_counter()
    dsir = HashedNgramDSIR([c["pool_jsonl"]], [c["target_jsonl"]], str(work / "ref/cache"), num_proc=2)
    dsir.fit_importance_estimator()  # "auto": caps the raw fit at 10^9 n-grams, far above this corpus
    fitted = time.perf_counter()
    dsir.compute_importance_weights()
    weighed = time.perf_counter()
    dsir.resample(str(work / "ref/out"), num_to_sample=c["docs"] // 10, cache_dir=str(work / "ref/tmp"))
    done = time.perf_counter()
    return {"seconds": done - started, "fit_s": fitted - started, "weights_s": weighed - fitted,
            "resample_s": done - weighed}


def child_job(c: dict, work: Path) -> dict:
    from spark_jobs.dsir import DsirConfig, run_dsir
    from spark_jobs.session import get_spark
    from trait.config import from_dict
    from trait.contract import finished_dataset

    tokens = sum(b.column(0).to_numpy().sum() for b in finished_dataset(c["pool"]).to_batches(columns=["n_tokens"]))
    spark = get_spark("bench-dsir", "local[2]")
    shutil.rmtree(work / "job", ignore_errors=True)
    started = time.perf_counter()
    manifest = run_dsir(spark, from_dict(DsirConfig, {"token_budget": int(tokens) // 10}), c["pool"], c["target"],
                        str(work / "job"))
    seconds = time.perf_counter() - started
    spark.stop()
    return {"seconds": seconds, "fit_s": manifest["dsir"]["fit_seconds"], "rows_out": manifest["counts"]["rows_out"]}


def run_child(work: Path, kind: str, corpus: dict) -> dict:
    """``--child kind`` in a fresh process pinned to CPUs 0-1; its JSON result."""
    cmd = ["taskset", "-c", "0,1", sys.executable, "-m", "benchmarks.dsir_throughput", "--child", kind,
           "--work", str(work), "--corpus", json.dumps(corpus)]
    log = work / f"{kind}.log"
    with open(log, "w") as err:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode:
        raise RuntimeError(f"{kind} child failed ({proc.returncode}); see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="pool size in documents (~11.5 KB each)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DOCS:,} documents: a smoke test")
    parser.add_argument("--work", default=str(REPO / ".bench" / "dsir"), help="work dir (corpora, outputs, logs)")
    parser.add_argument("--data", default=default_shared_data())
    parser.add_argument("--child", choices=["reference", "job"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work).resolve()
    if args.child:
        run = child_reference if args.child == "reference" else child_job
        print(json.dumps(run(json.loads(args.corpus), work)))
        return
    if (os.cpu_count() or 1) < 2:
        sys.exit("the benchmark needs 2 CPUs")
    check_folder(work, WORK_ENTRIES, dataset=False, name="--work")
    docs = QUICK_DOCS if args.quick else args.docs
    print(f"setting up a {docs:,}-document pool in {work} ...", flush=True)
    corpus = setup(work, Path(args.data), docs)
    print(f"pool: {docs:,} documents, {corpus['mb']:,.0f} MB of text; target: {TARGET_DOCS:,} PlanetMath entries",
          flush=True)
    results = {}
    for kind in ("reference", "job"):
        print(f"running {kind} on CPUs 0-1 ...", flush=True)
        results[kind] = run_child(work, kind, corpus)
    print("\n| run | seconds | fit s | docs/s | MB/s |\n|---|---:|---:|---:|---:|")
    for kind, label in (("reference", "data-selection 1.0.3, num_proc=2"), ("job", "trait baseline dsir, local[2]")):
        r = results[kind]
        print(f"| {label} | {r['seconds']:.1f} | {r['fit_s']:.1f} | {docs / r['seconds']:,.0f} | "
              f"{corpus['mb'] / r['seconds']:.2f} |")
    ratio = results["reference"]["seconds"] / results["job"]["seconds"]
    (work / ("bench-quick.json" if args.quick else "bench.json")).write_text(
        json.dumps({"corpus": corpus, "results": results, "ratio": ratio}, indent=2))
    record("dsir_throughput", [Gate("dsir_throughput", "trait baseline dsir / data-selection 1.0.3 throughput", ratio,
                                    QUICK_GOAL if args.quick else GOAL)], args.quick, {"results": results})


if __name__ == "__main__":
    main()
