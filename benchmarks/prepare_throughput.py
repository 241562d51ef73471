"""Tokens per second of ``trainer.data.prepare`` on ~20 MB of the shared Wikipedia text, 1 vs 2 workers, and the
parallel designs it was chosen over, on the same chunks: worker processes (spawn) and the Rust tokenizer's own
thread pool (TOKENIZERS_PARALLELISM=true, one Python thread).

    python -m benchmarks.prepare_throughput [--mb 20] [--rounds 3]
    python -m benchmarks.prepare_throughput --quick     (4 MB, 1 round, prepare with 1 and 2 workers only)

Every run is a fresh Python process with a fresh cache directory; rounds interleave the runs so a busy neighbour
slows all of them alike. Reports the best wall time of the rounds, the median, and CPU seconds (user + system).
Gate (``benchmarks.gates``): prepare with 2 workers / 1 worker, best wall seconds, >= GOAL, what two processes on
two cores should give at least (QUICK_GOAL for --quick: on 4 MB the second worker's start weighs more).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gates import Gate, record
from trait.benchmarks import default_shared_data

REPO = Path(__file__).resolve().parents[1]
WIKI = Path(default_shared_data()) / "corpora" / "general" / "enwiki_2015_part1.jsonl.gz"
GOAL, QUICK_GOAL = 1.5, 0.9  # --quick measured 1.08 under load (2026-12-05)

# One run: argv = mode, dataset, tokenizer dir, cache dir. Prints {"tokens", "seconds"} as JSON.
_RUN = r"""
import json, os, sys, time
mode, dataset, tokenizer_dir, cache = sys.argv[1:5]
if mode.startswith("prepare"):
    from trainer.data import DataConfig, SourceConfig, prepare
    config = DataConfig([SourceConfig("wiki", dataset, 1.0)], seq_len=2048, cache_dir=cache,
                        num_workers=int(mode[-1]))
    started = time.perf_counter()
    source = prepare(config, tokenizer_dir).sources["wiki"]
    # "seconds": the build (read, tokenise, write the cache), as the other modes time it; "call": prepare() whole,
    # loading transformers and the tokenizer included.
    print(json.dumps({"tokens": source.num_tokens, "seconds": source.index["seconds"],
                      "call": time.perf_counter() - started}))
    sys.exit()
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
import benchworker
from trainer import token_cache as tc
tokenizer = tc.load_tokenizer(tokenizer_dir)
files = tc.SourceFiles(dataset, "text", "wiki")
started = time.perf_counter()
if mode == "rust-threads":  # one Python thread, the Rust pool (one thread per CPU) inside each call
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    encoder = tc.Encoder(tokenizer)
    tokens = sum(len(encoder(chunk)[0]) for chunk in files.chunks())
elif mode == "processes2":  # two spawned processes, Rust pool off in each
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=benchworker.init,
                             initargs=(tokenizer,)) as pool:
        tokens = sum(len(r[0]) for r in pool.map(benchworker.call, files.chunks()))
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - started}))
"""

_WORKER = r"""
import os
_ENCODER = {}
def init(tokenizer):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from trainer.token_cache import Encoder
    _ENCODER["e"] = Encoder(tokenizer)
def call(chunk):
    return _ENCODER["e"](chunk)
"""


def build_dataset(root: Path, megabytes: float) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trait.contract import BASE_SCHEMA, SUCCESS_MARKER, doc_id, part_name

    texts, size = [], 0
    with gzip.open(WIKI, "rt", encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1].encode())
            if size >= megabytes * 1e6:
                break
    out = root / "wiki"
    out.mkdir()
    for i in range(4):
        part = texts[i::4]
        pq.write_table(pa.table({"id": [doc_id("wiki", t[:200]) for t in part], "source": ["wiki"] * len(part),
                                 "text": part, "url": [None] * len(part), "n_tokens": [0] * len(part)},
                                schema=BASE_SCHEMA), out / part_name(i))
    (out / SUCCESS_MARKER).write_text("")
    print(f"dataset: {len(texts):,} Wikipedia articles, {size / 1e6:.1f} MB of text, 4 parts", flush=True)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=20.0, help="megabytes of text")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="prepare1,prepare2,rust-threads,processes2")
    parser.add_argument("--quick", action="store_true", help="4 MB, 1 round, prepare1 and prepare2 only")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.rounds, args.modes = 4.0, 1, "prepare1,prepare2"
    from trait.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = build_dataset(root, args.mb)
        tokenizer_dir = str(build_tiny_model(cache_dir=root / "models"))
        (root / "benchworker.py").write_text(_WORKER)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(root)])}
        results: dict[str, list] = {m: [] for m in args.modes.split(",")}
        for r in range(args.rounds):
            for mode in results:
                cache = root / f"cache-{mode}-{r}"
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = subprocess.run([sys.executable, "-c", _RUN, mode, dataset, tokenizer_dir, str(cache)],
                                     env=env, capture_output=True, text=True, check=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                row["load"] = os.getloadavg()[0]
                results[mode].append(row)
                call = f" (prepare() call {row['call']:.1f} s)" if "call" in row else ""
                print(f"round {r} {mode:13s} {row['tokens']:,} tokens {row['seconds']:.2f} s{call} "
                      f"({row['tokens'] / row['seconds']:,.0f} tokens/s) cpu {row['cpu']:.1f} s "
                      f"load {row['load']:.1f}", flush=True)
        print("\n| run | tokens | best s | median s | best tokens/s | CPU s (median) |\n|---|---:|---:|---:|---:|---:|")
        for mode, rows in results.items():
            seconds = [x["seconds"] for x in rows]
            print(f"| {mode} | {rows[0]['tokens']:,} | {min(seconds):.2f} | {statistics.median(seconds):.2f} | "
                  f"{rows[0]['tokens'] / min(seconds):,.0f} | {statistics.median(x['cpu'] for x in rows):.1f} |")
    if {"prepare1", "prepare2"} <= results.keys():
        best = {m: min(x["seconds"] for x in results[m]) for m in ("prepare1", "prepare2")}
        record("prepare_throughput", [Gate("prepare_throughput", "prepare, 2 workers / 1 worker, tokens/s (best "
                                           "round)", best["prepare1"] / best["prepare2"],
                                           QUICK_GOAL if args.quick else GOAL)], args.quick, results)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
