"""Scoring throughput: raw fastText in one Python process against the Spark score job on 1 and 2 cores.

    python -m benchmarks.score_throughput [--repeats 4] [--work .bench]      (what `make bench` runs)

The corpus is the demo's pool (Wikipedia 2015 + the web samples, ~16k documents, ~240 MB of text) repeated
``--repeats`` times in a seeded shuffled order with distinct ids, written as a contract dataset. Both classifiers
are the demo's. Every measured run is a fresh process pinned with ``taskset`` to the cores it may use (the
Spark runs' JVM and Python workers included), so "per core" means per CPU, not per Spark task slot:

- raw: one process on CPU 0; texts are read into memory before the clock starts; then normalise + predict for
  both models, in batches of Spark's Arrow batch size;
- spark-1: ``run_score`` on ``local[1]`` pinned to CPU 0; spark-2: ``local[2]`` on CPUs 0-1. The time is the
  whole ``run_score`` call (scoring, writing Parquet, the statistics pass, the manifest), not session start.
  Each session runs the job twice: "cold" is the first job in a fresh JVM (JIT compilation and class loading
  share the pinned CPU with Python), "warm" the second, as an executor is after its first minutes on a cluster.

Peak memory (RSS summed over the job's process tree, sampled every 0.2 s) is measured for ``local[2]`` at two
corpus sizes (``--memory-repeats`` and ``--repeats`` copies). Goals: spark-1 per core >= 0.9 x raw; spark-2 >= 1.8 x
spark-1. Results go to ``<work>/bench.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_inputs(work: Path, data: Path, repeats: int) -> tuple[str, list[str]]:
    """The demo's pool and classifiers under ``work``, and the repeated corpus; reused when present."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spark_jobs.classifier import ClassifierConfig, train_classifier
    from spark_jobs.dataset import ROW_GROUP_BYTES
    from spark_jobs.demo import load_demo_config
    from spark_jobs.ingest import IngestConfig, run_ingest
    from spark_jobs.session import get_spark
    from trait.contract import finished_dataset, part_name, validate_table

    values = {"data": str(data.resolve()), "work": str(work.resolve())}
    models = []
    if not (work / "models" / "quality_edu" / "card.json").exists():
        spark = get_spark("bench-setup", "local[2]")
        run_ingest(spark, load_demo_config(IngestConfig, "ingest_seed.yaml", values), str(work / "seed"))
        run_ingest(spark, load_demo_config(IngestConfig, "ingest_pool.yaml", values), str(work / "pool"))
        spark.stop()
    for name in ("classifier_domain.yaml", "classifier_quality.yaml"):
        cfg = load_demo_config(ClassifierConfig, name, values)
        if not (work / "models" / cfg.name / "card.json").exists():
            train_classifier(cfg, work / "models" / cfg.name)
        models.append(str(work / "models" / cfg.name))

    corpus = work / f"corpus-x{repeats}"
    if not (corpus / "_SUCCESS").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        corpus.mkdir(parents=True)
        pool = finished_dataset(str(work / "pool")).to_table()
        rng = np.random.default_rng(0)
        rows_per_group = max(1, int(ROW_GROUP_BYTES / (pool.nbytes / pool.num_rows)))
        for copy in range(repeats):
            order = rng.permutation(pool.num_rows)
            part = pool.take(pa.array(order))
            ids = pa.array([f"{i}#{copy}" for i in part.column("id").to_pylist()])
            part = part.set_column(part.schema.get_field_index("id"), "id", ids)
            validate_table(part)
            pq.write_table(part, corpus / part_name(copy), row_group_size=rows_per_group, compression="zstd")
        (corpus / "manifest.json").write_text(json.dumps({"job": "bench-corpus", "repeats": repeats,
                                                          "tokenizer": "words"}))
        (corpus / "_SUCCESS").write_text("")
    return str(corpus), models


def child_raw(corpus: str, models: list[str]) -> dict:
    """Raw fastText in this process: read all texts first, then time normalise + predict per batch."""
    import fasttext

    from spark_jobs.classifier import load_card, positive_probability
    from spark_jobs.session import _DEFAULT_CONF
    from spark_jobs.text import normalise
    from trait.contract import finished_dataset

    texts = finished_dataset(corpus).to_table(columns=["text"]).column("text").to_pylist()
    loaded = [fasttext.load_model(str(load_card(m)[1])) for m in models]
    batch = int(_DEFAULT_CONF["spark.sql.execution.arrow.maxRecordsPerBatch"])
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        normalised = [normalise(t) for t in texts[i:i + batch]]
        for model in loaded:
            positive_probability(model, normalised)
    return {"seconds": time.perf_counter() - started}


def child_spark(corpus: str, models: list[str], master: str, output: str) -> dict:
    """The score job on ``master``, twice in one session (cold, then warm); times each run_score call."""
    from spark_jobs.score import ScoreConfig, run_score
    from spark_jobs.session import get_spark
    from trait.config import from_dict

    t0 = time.perf_counter()
    spark = get_spark("bench-score", master)
    result = {"session_start_s": time.perf_counter() - t0}
    for run in ("cold", "warm"):
        started = time.perf_counter()
        manifest = run_score(spark, from_dict(ScoreConfig, {"models": models}), corpus, f"{output}-{run}")
        result[f"{run}_seconds"] = time.perf_counter() - started
        result["rows_out"] = manifest["counts"]["rows_out"]
    return result


def run_child(kind: str, cpus: str, *args: str) -> dict:
    """Run a measurement in a fresh process pinned to ``cpus``; return its result and peak tree RSS (MiB)."""
    import psutil

    cmd = ["taskset", "-c", cpus, sys.executable, "-m", "benchmarks.score_throughput", "--child", kind, *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        rss = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss += p.memory_info().rss
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{kind} child failed ({proc.returncode}); run it by hand: {' '.join(cmd)}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4, help="copies of the pool (~240 MB of text each)")
    parser.add_argument("--memory-repeats", type=int, default=2, help="the smaller corpus of the memory check")
    parser.add_argument("--work", default=str(REPO / ".bench"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--child", choices=["raw", "spark"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "raw":
        print(json.dumps(child_raw(args.corpus, args.models)))
        return
    if args.child == "spark":
        print(json.dumps(child_spark(args.corpus, args.models, args.master, args.output)))
        return

    if os.cpu_count() < 2:
        sys.exit("the benchmark needs 2 CPUs")
    work = Path(args.work)
    corpus, models = build_inputs(work, Path(args.data), args.repeats)
    small, _ = build_inputs(work, Path(args.data), args.memory_repeats)
    import pyarrow.compute as pc

    from trait.contract import finished_dataset

    table = finished_dataset(corpus).to_table(columns=["text"])
    docs = table.num_rows
    mb = pc.sum(pc.binary_length(table.column("text").cast("binary"))).as_py() / 1e6
    small_docs = finished_dataset(small).count_rows()
    del table

    def spark_run(master: str, cpus: str, data: str) -> dict:
        out = work / "out" / master.replace("[", "").replace("]", "")
        shutil.rmtree(out.parent, ignore_errors=True)
        return run_child("spark", cpus, "--corpus", data, "--models", *models, "--master", master,
                         "--output", str(out))

    print(f"corpus: {docs:,} documents, {mb:,.0f} MB of text; models: {', '.join(Path(m).name for m in models)}")
    runs = {"raw": run_child("raw", "0", "--corpus", corpus, "--models", *models)}
    runs["spark-1"] = spark_run("local[1]", "0", corpus)
    runs["spark-2"] = spark_run("local[2]", "0,1", corpus)
    runs["spark-2-small"] = spark_run("local[2]", "0,1", small)
    rows = [("raw", 1, runs["raw"]["seconds"], runs["raw"]["peak_rss_mib"])]
    for name, c in (("spark-1", 1), ("spark-2", 2)):
        rows += [(f"{name} {run}", c, runs[name][f"{run}_seconds"], runs[name]["peak_rss_mib"])
                 for run in ("cold", "warm")]
    print("\n| run | cores | seconds | docs/s | MB/s | docs/s per core | MB/s per core | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rate = {}
    for name, c, seconds, rss in rows:
        rate[name] = docs / seconds
        print(f"| {name} | {c} | {seconds:.1f} | {docs / seconds:,.0f} | {mb / seconds:.1f} | "
              f"{docs / seconds / c:,.0f} | {mb / seconds / c:.1f} | {rss:,.0f} |")
    verdict = {True: "PASS", False: "FAIL"}
    ratios = {}
    for run in ("cold", "warm"):
        ratios[f"spark1_raw_{run}"] = rate[f"spark-1 {run}"] / rate["raw"]
        ratios[f"spark2_spark1_{run}"] = rate[f"spark-2 {run}"] / rate[f"spark-1 {run}"]
        print(f"\n{run}: spark 1 core / raw = {ratios[f'spark1_raw_{run}']:.3f} "
              f"(goal >= 0.9: {verdict[ratios[f'spark1_raw_{run}'] >= 0.9]}); "
              f"spark 2 cores / 1 core = {ratios[f'spark2_spark1_{run}']:.3f} "
              f"(goal >= 1.8: {verdict[ratios[f'spark2_spark1_{run}'] >= 1.8]})")
    mem_small, mem_big = runs["spark-2-small"]["peak_rss_mib"], runs["spark-2"]["peak_rss_mib"]
    print(f"peak memory of the score job on local[2]: {mem_small:,.0f} MiB at {small_docs:,} documents, "
          f"{mem_big:,.0f} MiB at {docs:,} documents ({mem_big / mem_small:.2f}x for {docs / small_docs:.1f}x data)")
    result = {"docs": docs, "text_mb": mb, "small_docs": small_docs, "runs": runs, "ratios": ratios,
              "cpu_count": os.cpu_count()}
    (work / "bench.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
