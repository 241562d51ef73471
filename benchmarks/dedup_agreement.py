"""MinHash near-dedup side by side with HF datatrove 0.10.1: which documents each removes, and how fast.

    python -m benchmarks.dedup_agreement [--rounds 2] [--work .bench/dedup]    (make bench-dedup)
    python -m benchmarks.dedup_agreement --quick      (the first 1,000 pool documents by id, one round)

Pool: the demo's general pool (``infra/configs/demo/ingest_pool.yaml``: 15,000 Wikipedia 2015 articles and ~1,100
web documents of the shared data, ~238 MB of text), ingested once into ``<work>/pool`` by ``trait ingest``. datatrove
reads the same documents as JSONL (``id``, ``text``), sorted by id and cut into two files of equal document count,
one per core (its stage 1 and 4 give a file to a task), so "first in the input" is "smallest id" on both sides.

Settings matched: word 5-gram shingles, 16 bands (buckets) x 8 rows (hashes), datatrove's text simplification
(``normaliser: datatrove``). datatrove runs its four stages (``benchmarks.datatrove_dedup``) in
``.venv-bench`` (``infra/setup_bench.sh``); TRAIT runs ``trait dedup`` on ``local[2]``. Each run is one fresh
process pinned with ``taskset`` to CPUs 0-1, timed from start to exit (imports, JVM and Spark start, writing the
kept documents included); rounds interleave the two. TRAIT's default setting (``normaliser: dedup-v1``) runs
once more, untimed, for its clusters (not with --quick).

Printed: the share of datatrove's removed documents TRAIT also removes and the reverse (goals >= 0.95 each), the
throughput ratio datatrove seconds / TRAIT seconds (median of the rounds; goal >= 3; with --quick, where Spark's
start weighs more and a score of day-of-year stubs decide the shares, QUICK_GOALS), and the clusters each setting
finds: counts, documents removed, the biggest clusters with sample titles (a document's first line). Gates go
through ``benchmarks.gates``; the details (every run's seconds, the clusters) to ``<work>/{full,quick}/bench.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.gates import Gate, record
from trait.outputs import check_folder

REPO = Path(__file__).resolve().parents[1]
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
POOL_CONFIG = REPO / "infra" / "configs" / "demo" / "ingest_pool.yaml"
CPUS, TASKS = "0,1", 2
SIZE = {True: "quick", False: "full"}  # --quick -> the folder of the runs' inputs, outputs and logs
RUN_ENTRIES = ("logs", "jsonl", "datatrove", "trait-matched", "trait-default", "bench.json")
QUICK_DOCS = 1_000
MATCHED = {"normaliser": "datatrove", "shingle_size": 5, "bands": 16, "rows": 8}
GOALS = {"agreement": 0.95, "speed": 3.0}
# 1,000 documents: TRAIT's JVM and Spark start are most of its run (measured 0.97x; 2,000 documents 1.63x), and
# one chance merge of two months' day-of-year stubs in datatrove moves a share by ~0.1 (measured 8 of 9 = 0.889).
QUICK_GOALS = {"agreement": 0.85, "speed": 0.7}


def build_pool(work: Path, data: str, quick: bool) -> Path:
    """The demo pool as a finished dataset (ingested once, reused); ``--quick``: its first QUICK_DOCS ids."""
    import pyarrow.parquet as pq

    from trait.contract import MANIFEST_NAME, SUCCESS_MARKER, finished_dataset, part_name

    pool = work / "pool"
    if not (pool / SUCCESS_MARKER).exists():
        shutil.rmtree(pool, ignore_errors=True)
        subprocess.run([str(REPO / ".venv" / "bin" / "trait"), "ingest", "--config", str(POOL_CONFIG), "--output",
                        str(pool), "--set", f"vars.data={data}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    if not quick:
        return pool
    small = work / f"pool-{QUICK_DOCS}"
    if not (small / SUCCESS_MARKER).exists():
        shutil.rmtree(small, ignore_errors=True)
        small.mkdir(parents=True)
        table = finished_dataset(str(pool)).to_table().sort_by("id").slice(0, QUICK_DOCS)
        pq.write_table(table, small / part_name(0))
        shutil.copy(pool / MANIFEST_NAME, small / MANIFEST_NAME)
        (small / SUCCESS_MARKER).write_text("")
    return small


def export_jsonl(pool: Path, out: Path) -> dict[str, str]:
    """datatrove's input: ``TASKS`` JSONL files of the pool sorted by id; returns {id: first line of its text}."""
    from trait.contract import finished_dataset

    table = finished_dataset(str(pool)).to_table(columns=["id", "text"]).sort_by("id")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows, titles = table.to_pylist(), {}
    for task in range(TASKS):
        with open(out / f"{task:05d}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows[task * len(rows) // TASKS:(task + 1) * len(rows) // TASKS]:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                titles[row["id"]] = row["text"].strip().split("\n", 1)[0][:70]
    return titles


def timed(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` pinned to CPUS; its wall seconds, start to exit (logged with the load average after it)."""
    started = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(["taskset", "-c", CPUS, *cmd], cwd=REPO, stdout=err, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}); see {log}")
    print(f"  {Path(cmd[0]).name} {' '.join(cmd[1:3])}: {seconds:.1f} s, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    return seconds


def run_datatrove(jsonl: Path, out: Path, log: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return timed([str(BENCH_PYTHON), "-m", "benchmarks.datatrove_dedup", str(jsonl), str(out), "--tasks",
                  str(TASKS), "--buckets", str(MATCHED["bands"]), "--rows", str(MATCHED["rows"]),
                  "--shingle-size", str(MATCHED["shingle_size"])], log)


def run_trait(pool: Path, out: Path, settings: dict, log: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    flags = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return timed([str(REPO / ".venv" / "bin" / "trait"), "dedup", "--master", f"local[{TASKS}]", "--input",
                  str(pool), "--output", str(out), *flags], log)


def datatrove_clusters(out: Path) -> tuple[set[str], list[list[str]]]:
    """(removed ids, clusters as id lists, kept document first) from stage 4's outputs."""
    members: dict[int, list[tuple[bool, str]]] = {}
    removed = set()
    for kind in ("kept", "removed"):
        for path in sorted((out / kind).glob("*.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                for line in fh:
                    doc = json.loads(line)
                    if kind == "removed":
                        removed.add(doc["id"])
                    cluster = doc.get("metadata", {}).get("minhash_cluster_id", -1)
                    if cluster != -1:
                        members.setdefault(cluster, []).append((kind == "removed", doc["id"]))
    return removed, [[i for _, i in sorted(m)] for m in members.values()]


def trait_clusters(out: Path) -> tuple[set[str], list[list[str]]]:
    """(removed ids, clusters: each kept document first, then the documents that resolve to it) from ``_dropped``."""
    import pyarrow.parquet as pq

    rep = {r["id"]: r["representative_id"] for r in pq.read_table(out / "_dropped").to_pylist()}

    def kept(doc: str) -> str:
        while doc in rep:
            doc = rep[doc]
        return doc

    groups: dict[str, list[str]] = {}
    for doc in sorted(rep):
        groups.setdefault(kept(doc), []).append(doc)
    return set(rep), [[k, *v] for k, v in groups.items()]


def describe_clusters(name: str, removed: set[str], clusters: list[list[str]], titles: dict[str, str]) -> dict:
    """Counts and the five biggest clusters with three sample titles each (printed and returned)."""
    clusters = sorted(clusters, key=lambda c: (-len(c), c[0]))
    sizes = Counter(len(c) for c in clusters)
    print(f"\n{name}: {len(clusters):,} clusters, {sum(map(len, clusters)):,} documents in them, {len(removed):,} "
          f"removed; sizes {', '.join(f'{s}: {n}' for s, n in sorted(sizes.items()))}")
    biggest = []
    for c in clusters[:5]:
        samples = [titles.get(i, i) for i in c[:3]]
        biggest.append({"size": len(c), "samples": samples})
        print(f"  {len(c):>4} documents: {' | '.join(samples)}")
    return {"clusters": len(clusters), "documents": sum(map(len, clusters)), "removed": len(removed),
            "sizes": {str(s): n for s, n in sorted(sizes.items())}, "biggest": biggest}


def main() -> None:
    from trait.benchmarks import default_shared_data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved datatrove / TRAIT rounds")
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_DOCS:,} documents, one round")
    parser.add_argument("--work", default=str(REPO / ".bench" / "dedup"), help="work dir (pool, outputs, logs)")
    parser.add_argument("--data", default=default_shared_data())
    args = parser.parse_args()
    if not BENCH_PYTHON.exists():
        sys.exit(f"{BENCH_PYTHON} not found: run infra/setup_bench.sh (make bench-env)")
    rounds = 1 if args.quick else args.rounds
    work = Path(args.work).resolve()
    # Folders below are replaced on every run: the work dir may hold only what this benchmark writes.
    check_folder(work, ("pool", "pool-*", "quick", "full"), dataset=False, name="--work")
    check_folder(work / SIZE[args.quick], RUN_ENTRIES, dataset=False, name="--work")
    pool = build_pool(work, args.data, args.quick)
    work = work / SIZE[args.quick]  # the runs' inputs, outputs and logs; the pool is shared
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    titles = export_jsonl(pool, work / "jsonl")
    print(f"pool: {len(titles):,} documents ({pool}); {rounds} round(s) of datatrove and TRAIT on CPUs {CPUS}",
          flush=True)
    seconds: dict[str, list[float]] = {"datatrove": [], "trait": []}
    for i in range(1, rounds + 1):
        for kind in ("datatrove", "trait") if i % 2 else ("trait", "datatrove"):
            if kind == "datatrove":
                s = run_datatrove(work / "jsonl", work / "datatrove", logs / f"datatrove-{i}.log")
            else:
                s = run_trait(pool, work / "trait-matched", MATCHED, logs / f"trait-{i}.log")
            seconds[kind].append(s)
            print(f"round {i} {kind:9s}: {s:6.1f} s ({len(titles) / s:,.0f} docs/s)", flush=True)
    if not args.quick:
        run_trait(pool, work / "trait-default", {}, logs / "trait-default.log")

    dt_removed, dt_clusters = datatrove_clusters(work / "datatrove")
    tr_removed, tr_clusters = trait_clusters(work / "trait-matched")
    both = dt_removed & tr_removed
    dt_share = len(both) / len(dt_removed) if dt_removed else 1.0
    tr_share = len(both) / len(tr_removed) if tr_removed else 1.0
    ratios = [d / t for d, t in zip(seconds["datatrove"], seconds["trait"])]
    print(f"\nremoved: datatrove {len(dt_removed):,}, TRAIT (matched) {len(tr_removed):,}, both {len(both):,}")
    clusters = {
        "datatrove 0.10.1 (16 x 8, 5-grams)": describe_clusters("datatrove", dt_removed, dt_clusters, titles),
        "trait normaliser=datatrove": describe_clusters("TRAIT, normaliser datatrove (matched)", tr_removed,
                                                        tr_clusters, titles)}
    if not args.quick:
        clusters["trait normaliser=dedup-v1"] = describe_clusters("TRAIT, normaliser dedup-v1 (the default)",
                                                                  *trait_clusters(work / "trait-default"), titles)
    print(f"\nseconds per round: datatrove {', '.join(f'{s:.1f}' for s in seconds['datatrove'])}; TRAIT "
          f"{', '.join(f'{s:.1f}' for s in seconds['trait'])}; datatrove / TRAIT per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)}")
    goals = QUICK_GOALS if args.quick else GOALS
    gates = [Gate("dedup_agreement", "share of datatrove's removed documents TRAIT removes", dt_share,
                  goals["agreement"]),
             Gate("dedup_agreement", "share of TRAIT's removed documents datatrove removes", tr_share,
                  goals["agreement"]),
             Gate("dedup_agreement", "TRAIT / datatrove throughput, 2 CPUs, start-up included (median)",
                  statistics.median(ratios), goals["speed"])]
    details = {"docs": len(titles), "settings": MATCHED, "seconds": seconds, "ratios": ratios,
               "removed": {"datatrove": len(dt_removed), "trait": len(tr_removed), "both": len(both)},
               "only_datatrove": sorted(dt_removed - tr_removed)[:50],
               "only_trait": sorted(tr_removed - dt_removed)[:50],
               "clusters": clusters}
    (work / "bench.json").write_text(json.dumps(details, indent=1))
    record("dedup_agreement", gates, args.quick, details)


if __name__ == "__main__":
    main()
