"""Scoring throughput: raw fastText in one Python process against the Spark score job on 1 and 2 cores.

    python -m benchmarks.score_throughput [--docs N] [--work .bench] [--sizes A,B] [--skip-memory]   (make bench)
    python -m benchmarks.score_throughput --quick      (2,000 documents, one round: a regression check)

Corpus: the Wikipedia 2015 articles, PlanetMath entries and web samples of the shared data (~22k documents,
~11.5 KB each) repeated in seeded shuffled order up to ``--docs`` documents, each copy with its own id
(``<id>#<copy>``), written as JSONL and ingested by the ingest job, so the score job reads what it reads in
production (16 MiB row groups, 100k-row part files). Classifiers: domain (PlanetMath vs Wikipedia) and quality
(Wikipedia and PlanetMath vs web) trained on a small seeded sample; models already in ``<work>/models/<name>``
are reused (the demo's, for one). Corpora are kept in ``<work>/corpus-<docs>``; delete the work dir to rebuild.

Every measured run is a fresh process pinned with ``taskset`` to the CPUs it may use (the Spark runs' JVM and
Python workers included), so "per core" means per CPU, not per Spark task slot:

- raw: one process on CPU 0; texts are read from the ingested Parquet into memory before the clock starts; then
  normalise + positive_probability for both models, in batches of the score job's ``batch_rows``;
- spark-1: ``run_score`` on ``local[1]`` pinned to CPU 0; spark-2: ``local[2]`` on CPUs 0-1. The time is the
  whole ``run_score`` call (reading, scoring and writing Parquet, the statistics pass, the manifest), not
  session start. Each session runs the job twice: "cold" is the first job in a fresh JVM and fresh Python
  workers, "warm" the second, as an executor is after its first minutes on a cluster.

The three are measured in ``--rounds`` interleaved rounds and each reports its best round (and the spread):
run-to-run variation on a shared VM is +-20%, more than the differences being measured. Best-of compares each
run's luckiest round, raw's included; the one-core ratio is also given within each round (raw and Spark minutes
apart, on the machine in the same state) and as the median of those. Peak memory (RSS summed
over the job's process tree: driver Python, JVM, Python workers; sampled every 0.2 s) is measured for one cold
``local[2]`` run at each of ``--sizes``. Goals: spark-1 per core >= 0.9 x raw; spark-2 >= 1.8 x spark-1 (with
--quick, 2,000 documents, where Spark's fixed costs weigh more: QUICK_GOALS); a missed goal is a FAIL gate
(``benchmarks.gates``), not an error. Results go to ``<work>/bench.json`` (``bench-quick.json`` for --quick), child
logs to ``<work>/logs``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gates import Gate, record
from trait.benchmarks import default_shared_data

REPO = Path(__file__).resolve().parents[1]
# The fastest run (spark-2 warm) scored 31.0 MB/s on this 2-core VM once the job stopped re-encoding the text,
# so 160k documents (1.83 GB) took it 58.9 s; 200k (~2.3 GB) keep every run over the minute the goal asks for.
DEFAULT_DOCS = 200_000
QUICK_DOCS = 2_000
GOALS = {"spark1_over_raw": 0.9, "spark2_over_spark1": 1.8}
# At 2,000 documents (~23 MB) a run lasts seconds, so the first job's start weighs: a regression check only.
# Measured in three runs with other work on the machine (2026-12-05): per core / raw cold 0.37-0.78, warm 0.70-1.66;
# 2 cores / 1 core cold 0.79-1.01, warm 0.98-1.26 (at this size a second core hardly helps).
QUICK_GOALS = {"spark1_over_raw": 0.25, "spark2_over_spark1": 0.6}
# (sub-source, glob under the data dir): every JSON line with a string "text" (the Pile sample: "contents").
SOURCES = (("wiki", "corpora/general/enwiki_2015_part1.jsonl.gz"),
           ("math", "corpora/math/planetmath/planetmath_entries.jsonl.gz"),
           ("web", "corpora/general/web_samples/*.json*"))
TRAIN_SAMPLE = {"wiki": 1500, "math": 1500, "web": None}  # documents per sub-source for training (None: all)
CLASSIFIERS = {
    "domain_math": {"positives": [{"sources": ["bench/math"]}], "negatives": [{"sources": ["bench/wiki"]}]},
    "quality_edu": {"positives": [{"sources": ["bench/wiki"], "max_docs": 500},
                                  {"sources": ["bench/math"], "max_docs": 250}],
                    "negatives": [{"sources": ["bench/web"]}]},
}


def read_base(data: Path) -> list[tuple[str, str, str]]:
    """(sub-source, original id, JSON-encoded text) of every usable document, in file order."""
    docs = []
    for src, pattern in SOURCES:
        files = sorted(data.glob(pattern))
        if not files:
            sys.exit(f"no files match {data / pattern}; pass --data or set TRAIT_SHARED_DATA")
        for path in files:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as fh:
                for line_no, line in enumerate(fh):
                    obj = json.loads(line)
                    text = obj.get("text", obj.get("contents"))
                    with contextlib.suppress(UnicodeEncodeError):  # lone surrogates would be quarantined
                        if isinstance(text, str) and text.strip() and text.encode("utf-8"):
                            docs.append((src, f"{path.name}:{obj.get('id', line_no)}",
                                         json.dumps(text, ensure_ascii=False)))
    return docs


def write_jsonl(path: Path, base: list, order) -> None:
    """JSONL of ``base`` in ``order`` (indices, repeats allowed): copy k of a document gets id ``<id>#<k>``."""
    seen: dict[int, int] = {}
    with open(path, "w", encoding="utf-8") as fh:
        for i in order:
            copy = seen[i] = seen.get(i, -1) + 1
            src, ident, text = base[i]
            fh.write(f'{{"id": {json.dumps(f"{ident}#{copy}")}, "src": "{src}", "text": {text}}}\n')


def ingest(spark, jsonl: Path, output: Path) -> None:
    from spark_jobs.ingest import IngestConfig, run_ingest
    from trait.config import from_dict

    cfg = from_dict(IngestConfig, {"inputs": [{"path": str(jsonl), "source": "bench", "source_field": "src",
                                               "url_field": None}]})
    run_ingest(spark, cfg, str(output))
    jsonl.unlink()


def child_setup(work: Path, data: Path, sizes: list[int]) -> dict:
    """Train the classifiers and ingest a corpus per size, reusing what ``work`` already holds."""
    import numpy as np
    import pyarrow.compute as pc

    from trait.contract import finished_dataset

    work.mkdir(parents=True, exist_ok=True)
    models = [work / "models" / name for name in CLASSIFIERS]
    todo = [n for n in sizes if not (work / f"corpus-{n}" / "_SUCCESS").exists()]
    if todo or not all((m / "card.json").exists() for m in models):
        from spark_jobs.classifier import ClassifierConfig, train_classifier
        from spark_jobs.session import get_spark
        from trait.config import from_dict

        base = read_base(data)
        spark = get_spark("bench-setup", "local[2]")
        if not all((m / "card.json").exists() for m in models):
            if not (work / "train" / "_SUCCESS").exists():
                rng = np.random.default_rng(1)
                sample = []
                for src, cap in TRAIN_SAMPLE.items():
                    mine = [i for i, d in enumerate(base) if d[0] == src]
                    sample += list(rng.permutation(mine)[:cap])
                write_jsonl(work / "train.jsonl", base, sample)
                ingest(spark, work / "train.jsonl", work / "train")
            for model, (name, refs) in zip(models, CLASSIFIERS.items()):
                if not (model / "card.json").exists():
                    refs = {k: [{"path": str(work / "train"), **r} for r in v] for k, v in refs.items()}
                    train_classifier(from_dict(ClassifierConfig, {"name": name, **refs}), model)
        for n in todo:
            # Copies are whole seeded permutations, so corpus-N is a prefix of any bigger corpus.
            rng = np.random.default_rng(0)
            order = np.concatenate([rng.permutation(len(base)) for _ in range(-(-n // len(base)))])[:n]
            write_jsonl(work / f"corpus-{n}.jsonl", base, order)
            ingest(spark, work / f"corpus-{n}.jsonl", work / f"corpus-{n}")
        spark.stop()
    corpora = {}
    for n in sizes:
        dataset = finished_dataset(str(work / f"corpus-{n}"))
        text_bytes = sum(pc.sum(pc.binary_length(b.column(0).cast("binary"))).as_py() or 0
                         for b in dataset.to_batches(columns=["text"]))
        corpora[n] = {"path": str(work / f"corpus-{n}"), "docs": dataset.count_rows(), "mb": text_bytes / 1e6}
    return {"models": [str(m) for m in models], "corpora": corpora}


def child_raw(corpus: str, models: list[str]) -> dict:
    """Raw fastText in this process: read all texts first, then time normalise + predict per batch."""
    import fasttext

    from spark_jobs.classifier import load_card, positive_probability
    from spark_jobs.score import ScoreConfig
    from spark_jobs.text import normalise
    from trait.contract import finished_dataset

    texts = finished_dataset(corpus).to_table(columns=["text"]).column("text").to_pylist()
    loaded = [fasttext.load_model(str(load_card(m)[1])) for m in models]
    batch = ScoreConfig(models=models).batch_rows
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        normalised = [normalise(t) for t in texts[i:i + batch]]
        for model in loaded:
            positive_probability(model, normalised)
    return {"seconds": time.perf_counter() - started}


def child_spark(corpus: str, models: list[str], master: str, output: str, runs: list[str]) -> dict:
    """The score job on ``master``, ``runs`` times in one session; times each whole run_score call."""
    from spark_jobs.score import ScoreConfig, run_score
    from spark_jobs.session import get_spark
    from trait.config import from_dict

    t0 = time.perf_counter()
    spark = get_spark("bench-score", master, scheduler_only=True)  # as `trait score` starts it
    result: dict = {"session_start_s": time.perf_counter() - t0}
    for run in runs:
        started = time.perf_counter()
        manifest = run_score(spark, from_dict(ScoreConfig, {"models": models}), corpus, f"{output}-{run}")
        result[run] = {"seconds": time.perf_counter() - started, "splits": manifest["splits"]}
        result["rows_out"] = manifest["counts"]["rows_out"]
    spark.stop()
    return result


def run_child(log: Path, cpus: str, *args: str) -> dict:
    """Run ``--child ...`` in a fresh process pinned to ``cpus``; its result and peak tree RSS (MiB)."""
    import psutil

    cmd = ["taskset", "-c", cpus, sys.executable, "-m", "benchmarks.score_throughput", "--child", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            rss = 0
            with contextlib.suppress(psutil.NoSuchProcess):
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += p.memory_info().rss
            peak = max(peak, rss)
            time.sleep(0.2)
        out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{args[0]} child failed ({proc.returncode}); see {log}; rerun: {' '.join(cmd)}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mib": peak / 2**20}


def report(corpus: dict, rounds: list[dict]) -> tuple[list[str], dict]:
    """Markdown table (best round per run) and the goal ratios (judged by ``gates``)."""
    docs, mb = corpus["docs"], corpus["mb"]
    series = {"raw": [r["raw"] for r in rounds]}
    for name in ("spark-1", "spark-2"):
        for run in ("cold", "warm"):
            series[f"{name} {run}"] = [{**r[name][run], "peak_rss_mib": r[name]["peak_rss_mib"]} for r in rounds]
    lines = ["| run | cores | seconds | spread | docs/s | MB/s | MB/s per core | peak RSS MiB |",
             "|---|" + "---:|" * 7]
    per_core: dict[str, float] = {}
    for name, runs in series.items():
        c = 2 if name.startswith("spark-2") else 1
        best = min(r["seconds"] for r in runs)
        per_core[name] = mb / best / c
        lines.append(f"| {name} | {c} | {best:.1f} | {max(r['seconds'] for r in runs) / best:.2f} | "
                     f"{docs / best:,.0f} | {mb / best:.1f} | {mb / best / c:.2f} | "
                     f"{max(r['peak_rss_mib'] for r in runs):,.0f} |")
    starts = {name: min(r[name]["session_start_s"] for r in rounds) for name in ("spark-1", "spark-2")}
    lines.append(f"\nsession start, not in the timings above (best round): "
                 f"{', '.join(f'{name} {s:.1f} s' for name, s in starts.items())}")
    ratios = {}
    lines.append("")
    for run in ("cold", "warm"):
        one = per_core[f"spark-1 {run}"] / per_core["raw"]
        two = 2 * per_core[f"spark-2 {run}"] / per_core[f"spark-1 {run}"]
        ratios[run] = {"spark1_over_raw": one, "spark2_over_spark1": two}
        paired = [r["raw"]["seconds"] / r["spark-1"][run]["seconds"] for r in rounds]
        ratios[run]["spark1_over_raw_paired_median"] = median = statistics.median(paired)
        lines.append(f"{run}: spark 1 core / raw within each round: {', '.join(f'{x:.3f}' for x in paired)}; "
                     f"median {median:.3f}")
    return lines, ratios


def gates(ratios: dict, quick: bool) -> list[Gate]:
    goals = QUICK_GOALS if quick else GOALS
    return [g for run in ("cold", "warm") for g in (
        Gate("score_throughput", f"Spark per core / raw fastText, {run} (best round)",
             ratios[run]["spark1_over_raw"], goals["spark1_over_raw"]),
        Gate("score_throughput", f"Spark 2 cores / 1 core, {run} (best round)", ratios[run]["spark2_over_spark1"],
             goals["spark2_over_spark1"]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="corpus size in documents (~11.5 KB each)")
    parser.add_argument("--sizes", help="comma-separated corpus sizes of the memory check (default: docs/4,docs)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory check")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each figure is the best")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DOCS:,} documents, one round, no memory "
                        "check: a regression check")
    parser.add_argument("--work", default=str(REPO / ".bench"), help="work dir (corpora, models, results)")
    parser.add_argument("--data", default=default_shared_data())
    parser.add_argument("--child", choices=["setup", "raw", "spark"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--runs", default="cold,warm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.docs, args.rounds, args.skip_memory = QUICK_DOCS, 1, True
    work = Path(args.work).resolve()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [max(1, args.docs // 4), args.docs]
    if args.child:
        child = {"setup": lambda: child_setup(work, Path(args.data), [int(s) for s in args.sizes.split(",")]),
                 "raw": lambda: child_raw(args.corpus, args.models),
                 "spark": lambda: child_spark(args.corpus, args.models, args.master, args.output,
                                              args.runs.split(","))}[args.child]
        print(json.dumps(child()))
        return
    if (os.cpu_count() or 1) < 2:
        sys.exit("the benchmark needs 2 CPUs")
    logs = work / "logs"
    wanted = sorted({args.docs, *([] if args.skip_memory else sizes)})
    print(f"setting up {', '.join(f'{n:,}' for n in wanted)}-document corpora and the classifiers in {work} ...",
          flush=True)
    setup = run_child(logs / "setup.log", "0,1", "setup", "--work", str(work), "--data", args.data,
                      "--sizes", ",".join(map(str, wanted)))
    models, corpora = setup["models"], {int(n): c for n, c in setup["corpora"].items()}
    corpus = corpora[args.docs]

    def spark_run(master: str, cpus: str, data: dict, runs: str = "cold,warm") -> dict:
        tag = master.replace("[", "").replace("]", "")
        out = work / "out" / tag
        shutil.rmtree(out.parent, ignore_errors=True)
        return run_child(logs / f"spark-{tag}-{data['docs']}.log", cpus, "spark", "--corpus", data["path"],
                         "--models", *models, "--master", master, "--output", str(out), "--runs", runs)

    print(f"corpus: {corpus['docs']:,} documents, {corpus['mb']:,.0f} MB of text; "
          f"models: {', '.join(Path(m).name for m in models)}", flush=True)
    rounds: list[dict] = []
    for i in range(args.rounds):
        print(f"round {i + 1} of {args.rounds}: raw, spark local[1], spark local[2] ...", flush=True)
        rounds.append({"raw": run_child(logs / "raw.log", "0", "raw", "--corpus", corpus["path"], "--models", *models),
                       "spark-1": spark_run("local[1]", "0", corpus),
                       "spark-2": spark_run("local[2]", "0,1", corpus)})
    lines, ratios = report(corpus, rounds)
    print(f"\nbest of {args.rounds} interleaved round(s) (spread: slowest / fastest round)\n")
    print("\n".join(lines))
    memory = {}
    if not args.skip_memory:
        print(f"\nmemory: one cold run on local[2] at {', '.join(f'{n:,}' for n in sizes)} documents ...", flush=True)
        memory = {n: spark_run("local[2]", "0,1", corpora[n], runs="cold") for n in sizes}
        figures = [f"{memory[n]['peak_rss_mib']:,.0f} MiB at {corpora[n]['docs']:,} documents "
                   f"({corpora[n]['mb']:,.0f} MB)" for n in sizes]
        low, high = memory[sizes[0]]["peak_rss_mib"], memory[sizes[-1]]["peak_rss_mib"]
        print(f"peak memory of the score job (driver Python + JVM + Python workers, RSS summed): {'; '.join(figures)}"
              f" -> {high / low:.2f}x memory for {corpora[sizes[-1]]['docs'] / corpora[sizes[0]]['docs']:.1f}x data")
    result = {"docs": corpus["docs"], "text_mb": corpus["mb"], "rounds": rounds, "ratios": ratios,
              "memory": {str(n): {**run, "docs": corpora[n]["docs"], "text_mb": corpora[n]["mb"]}
                         for n, run in memory.items()},
              "cpu_count": os.cpu_count(), "args": vars(args)}
    path = work / ("bench-quick.json" if args.quick else "bench.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"\nresults: {path}")
    record("score_throughput", gates(ratios, args.quick), args.quick, {"docs": corpus["docs"], "ratios": ratios})


if __name__ == "__main__":
    main()
