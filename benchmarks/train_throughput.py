"""CPU training throughput: ``trait train``'s loop against a plain Hugging Face Trainer with DeepSpeed ZeRO-1.

    python -m benchmarks.train_throughput [--rounds 4] [--steps 30] [--threads 1]   (make bench-train)
    python -m benchmarks.train_throughput --quick       (3 timed steps, 1 round: a regression check)
    python -m benchmarks.train_throughput --procs 2     (both under torchrun: ZeRO-1 across 2 processes)

Both sides train the same model from the same weights on the same sequences in the same order, with the same
batch arithmetic, optimizer, schedule and precision, each in a fresh process:

- model: a Llama built by ``trait.tiny_model`` (hidden 256, 4 layers, 4 heads of 64, MLP 1024, its BPE vocabulary
  of 2,048 tokens), random weights saved as a checkpoint and loaded by both through ``from_pretrained``; fp32,
  sdpa attention, no dropout. Matmul parameters N = 4 x (4 x 256^2 + 3 x 256 x 1024) + 2048 x 256 = 4.72M, so
  6 N + 12 L d T = 28.3M + 12 x 4 x 256 x 256 = 31.5M FLOPs per token: compute dominates any per-step overhead
  (a step of 16 x 256 tokens is ~130 GFLOP, ~2 s on one core);
- data: three finished contract datasets cut from ../shared/data (PlanetMath 0.4, OpenStax 0.4, Wikipedia 0.2),
  tokenised and packed by ``trainer.data.prepare`` (documents joined with EOS, cut into 256-token sequences: the
  run_clm recipe's tokenise + group_texts). The Hugging Face side is fed the very sequences our MixtureStream
  yields, in the same order (drawn up front into a tensor, ``train_sampling_strategy="sequential"``), so the data
  are identical, not merely alike;
- batch: micro-batch 4, gradient accumulation 4, one process: 16 sequences = 4,096 tokens per optimizer step
  (``--procs N``: both trainers under torchrun, N x 4,096 tokens a step, the same sequences per step);
- optimizer: torch AdamW, fused kernel (HF's default optim ``adamw_torch_fused``; ours since this benchmark, see
  ``trainer.engine.build_optimizer``), lr 3e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only (ours
  groups by ndim, Hugging Face excludes biases and norms by name: the same split for Llama), gradient clipping at
  1.0; cosine from 3e-3 to 3e-4 without warm-up (HF's ``cosine_with_min_lr`` with ``min_lr_rate`` 0.1 is then
  the same function of the step as ``trainer.engine.lr_factor``);
- DeepSpeed ZeRO-1 on CPU over gloo in both: ours through ``trainer.train.run_training`` (the function behind
  ``trait train``), Hugging Face through ``TrainingArguments(deepspeed=<dict>, use_cpu=True)``; the HF worker
  checks that its model is a DeepSpeedEngine at ZeRO stage 1 with DeepSpeed's ZeRO optimizer before it reports;
- logging: every ``--log-every`` optimizer steps in both (default 1; ours: metrics.jsonl + TensorBoard, HF: its
  log dict). Logging every step also makes the check that both did the same work exact: the two loss curves are
  compared step by step (measured: equal to the last bit over 35 steps).

Timing: steady state, after ``--warmup`` untimed optimizer steps, over ``--steps`` steps, between step ends: ours
read right after each logged step is written (where its metrics.jsonl time stamp is taken), HF in a callback's
``on_step_end``; either interval holds ``steps / log_every`` logging events. Two clocks: wall (``perf_counter``;
tokens/s = steps x 4,096 / seconds, the goal's measure) and the process's CPU time (``process_time``, all its
threads), which other processes on the machine move far less than wall time. The two trainers alternate in fresh
processes (hf, ours, ours, hf, hf, ours, ...) with the same ``OMP_NUM_THREADS`` (default 1: on a 2-core machine
shared with other work a second thread mostly spin-waits); the goal, ours / HF >= 1.0, is judged on the median
of the per-round ratios of tokens/s. Results: ``<work>/bench.json``.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.gates import Gate, record
from trait.benchmarks import default_shared_data

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(default_shared_data())
GOAL = 1.0
QUICK_GOAL = 0.7  # 3 timed steps in one round: the ratio swings by +-15% under load (measured 0.82)
# (name, file under shared/data/corpora, documents, weight): the example config's stage-1 mixture, 0.4/0.4/0.2.
SOURCES = (("in_domain", "math/planetmath/planetmath_entries.jsonl.gz", 2000, 0.4),
           ("selected", "math/openstax/college_algebra_trig_precalculus_2e.jsonl.gz", 400, 0.4),
           ("replay_general", "general/enwiki_2015_part1.jsonl.gz", 300, 0.2))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4, help="hf/ours pairs; which runs first alternates (keep it even)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first (a multiple of --log-every)")
    p.add_argument("--log-every", type=int, default=1, help="log every N optimizer steps (both trainers)")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    p.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4, help="head_dim = hidden / heads")
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every training process")
    # Not --nproc: argparse in torchrun, which starts the workers with these flags, reads it as --nproc-per-node.
    p.add_argument("--procs", type=int, default=1, help="processes per trainer: >1 starts both under torchrun "
                   "(ZeRO-1 across them over gloo; global batch = micro x accumulation x procs)")
    p.add_argument("--quick", action="store_true", help="3 timed steps after 1, 1 round (a regression check)")
    p.add_argument("--work", default=str(REPO / ".bench" / "train"), help="model, data, configs, outputs, logs")
    p.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)  # one measured run (internal)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup, args.log_every = 1, 3, 1, 1
    if args.warmup % args.log_every or args.steps % args.log_every or args.warmup < 1:
        p.error("--warmup (>= 1) and --steps must be multiples of --log-every: ours is timed at its logged steps")
    return args


# ---------------------------------------------------------------------------------------------- set-up


def set_up(args, work: Path) -> tuple[Path, dict]:
    """The model directory and the TrainConfig (as a dict); tokenises the data into the shared token cache."""
    from trainer.config import TrainConfig
    from trainer.data import prepare
    from trait.config import from_dict
    from trait.contract import write_text_dataset
    from trait.tiny_model import TinyModelConfig, build_tiny_model

    model = build_tiny_model(TinyModelConfig(hidden_size=args.hidden, num_heads=args.heads, num_layers=args.layers,
                                             intermediate_size=args.intermediate,
                                             max_position_embeddings=max(2048, args.seq_len)),
                             cache_dir=work / "models")
    sources = []
    for name, rel, n, weight in SOURCES:
        with gzip.open(SHARED / "corpora" / rel, "rt", encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in itertools.islice(fh, n)]
        shutil.rmtree(work / "data" / name, ignore_errors=True)
        sources.append({"name": name, "path": write_text_dataset(work / "data" / name, name, texts),
                        "weight": weight})
    total = args.warmup + args.steps
    global_batch = args.micro_batch * args.grad_accum * args.procs
    cfg = {"model": str(model), "output_dir": str(work / "out"), "seed": 0, "precision": "fp32",
           "log_every": args.log_every, "attn_implementation": "sdpa", "export": False,
           "stages": [{"name": "benchmark",
                       "data": {"sources": sources, "seq_len": args.seq_len, "cache_dir": str(work / "token_cache")},
                       "token_budget": total * global_batch * args.seq_len, "micro_batch_size": args.micro_batch,
                       "global_batch_size": global_batch, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 0,
                       "schedule": "cosine", "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8,
                       "grad_clip": 1.0, "checkpoint_every": 0}]}
    config = from_dict(TrainConfig, cfg)
    mixture = prepare(config.stages[0].data, config.model)  # fills the cache: neither timed run tokenises
    sequences = sum(s.num_sequences for s in mixture.sources.values())
    print(f"data: {sequences:,} packed sequences of {args.seq_len} tokens "
          f"({', '.join(f'{n} {s.num_sequences:,}' for n, s in mixture.sources.items())}); a run draws "
          f"{total * global_batch:,}", flush=True)
    return model, cfg


# ---------------------------------------------------------------------------------------------- workers


def worker_ours(args, config_path: Path) -> dict:
    """``trainer.train.run_training`` on the config; timed between the logged steps warmup and warmup+steps."""
    import trainer.engine
    import trainer.metrics
    from trainer.config import TrainConfig
    from trainer.train import run_training
    from trait.config import load

    # Observe, not change: the optimizer our engine builds (for the report), and a clock read right after each
    # logged step is written (where the metrics.jsonl line's time stamp is taken).
    built, stamps = [], {}
    build, log_step = trainer.engine.build_optimizer, trainer.metrics.MetricsLogger.train_step
    trainer.engine.build_optimizer = lambda *a, **kw: built.append(build(*a, **kw)) or built[-1]

    def train_step(self, record):
        log_step(self, record)
        stamps[record["step"]] = (time.perf_counter(), time.process_time())

    trainer.metrics.MetricsLogger.train_step = train_step
    config = load(TrainConfig, config_path)
    shutil.rmtree(config.output_dir, ignore_errors=True)
    result = run_training(config, resume="never")["stages"]["benchmark"]
    lines = (Path(config.output_dir) / "benchmark" / "metrics.jsonl").read_text().splitlines()
    logged = {r["step"]: r for r in map(json.loads, lines) if r["event"] == "train"}
    (w0, c0), (w1, c1) = stamps[args.warmup], stamps[args.warmup + args.steps]
    return {"seconds": w1 - w0, "cpu_seconds": c1 - c0, "losses": {s: r["loss"] for s, r in logged.items()},
            "zero_stage": result["deepspeed"]["zero_optimization"]["stage"],
            "own_tokens_per_s": result["tokens_per_s"], "adamw": _adamw_kind(built[0])}


def worker_hf(args, config_path: Path) -> dict:
    """transformers.Trainer with DeepSpeed ZeRO-1 (the run_clm recipe) on our packed sequences."""
    import socket

    if "RANK" not in os.environ:  # one process: what torchrun would set for a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                               "MASTER_PORT": str(s.getsockname()[1])})
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from trainer.config import TrainConfig
    from trainer.data import prepare
    from trait.config import load

    config = load(TrainConfig, config_path)
    stage = config.stages[0]
    total = stage.steps
    world = int(os.environ["WORLD_SIZE"])
    # The exact sequences our trainer's global stream yields, in its order (rank 0 of 1, the data seed). Under
    # N processes accelerate deals consecutive micro-batches to the ranks, ours deals consecutive samples: each
    # optimizer step still trains on the same global_batch_size sequences.
    stream = prepare(stage.data, config.model).stream(None, 0, 1)
    ids = torch.from_numpy(stream.next_batch(total * stage.global_batch_size))

    class Packed(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": ids[i]}  # run_clm: labels = input_ids, the model shifts them

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends = []  # (perf_counter, process_time) at the end of optimizer step len(ends)

        def on_step_end(self, *a, **kw):
            self.ends.append((time.perf_counter(), time.process_time()))

    model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    # "auto": filled from the TrainingArguments, as run_clm's ds_config files do; no optimizer or scheduler
    # section, so the Trainer builds torch AdamW and the schedule and DeepSpeed wraps them (as ours does).
    ds = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "gradient_clipping": "auto", "zero_optimization": {"stage": 1}, "bf16": {"enabled": False},
          "fp16": {"enabled": False}}
    targs = TrainingArguments(
        output_dir=str(Path(config.output_dir).parent / "hf_out"), use_cpu=True, deepspeed=ds, max_steps=total,
        per_device_train_batch_size=stage.micro_batch_size,
        gradient_accumulation_steps=stage.global_batch_size // (stage.micro_batch_size * world),
        learning_rate=stage.lr, lr_scheduler_type="cosine_with_min_lr",
        # min_lr_rate, not min_lr: HF's min_lr divides by optimizer.defaults["lr"], which DeepSpeed's ZeRO
        # optimizer wrapper does not have (AttributeError in transformers 5.23 + deepspeed 0.19.8).
        lr_scheduler_kwargs={"min_lr_rate": stage.min_lr / stage.lr}, warmup_steps=stage.warmup_steps,
        weight_decay=stage.weight_decay, adam_beta1=stage.betas[0],
        adam_beta2=stage.betas[1], adam_epsilon=stage.eps, max_grad_norm=stage.grad_clip,
        train_sampling_strategy="sequential", logging_steps=config.log_every, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=config.seed)
    clock = StepClock()
    trainer = Trainer(model=model, args=targs, train_dataset=Packed(), callbacks=[clock])
    trainer.train()
    engine = trainer.model_wrapped
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if not (isinstance(engine, DeepSpeedEngine) and engine.zero_optimization_stage() == 1
            and isinstance(engine.optimizer, DeepSpeedZeroOptimizer)):
        raise RuntimeError(f"the HF Trainer did not run DeepSpeed ZeRO-1: {type(engine).__name__}, "
                           f"{type(getattr(engine, 'optimizer', None)).__name__}")
    if len(clock.ends) != total:
        raise RuntimeError(f"the HF Trainer ran {len(clock.ends)} optimizer steps, expected {total}")
    # ends[k - 1] is the end of optimizer step k: the interval (end of step warmup, end of step warmup + steps].
    losses = {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}
    (w0, c0), (w1, c1) = clock.ends[args.warmup - 1], clock.ends[args.warmup + args.steps - 1]
    return {"seconds": w1 - w0, "cpu_seconds": c1 - c0, "losses": losses,
            "zero_stage": engine.zero_optimization_stage(), "optimizer": type(engine.optimizer).__name__,
            "backend": torch.distributed.get_backend(), "adamw": _adamw_kind(engine.optimizer.optimizer),
            "optim": str(getattr(targs.optim, "value", targs.optim))}


def _adamw_kind(optimizer) -> str:
    """'fused', 'foreach' or 'single-tensor': which torch AdamW implementation steps the ZeRO partition."""
    d = optimizer.defaults
    return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "single-tensor"


def run_worker(args) -> None:
    import torch

    work = Path(args.work)
    started = time.perf_counter()
    fn = worker_ours if args.worker == "ours" else worker_hf
    r = fn(args, work / "train.yaml")
    tokens = args.steps * args.micro_batch * args.grad_accum * args.procs * args.seq_len  # all ranks
    r.update(kind=args.worker, tokens=tokens, threads=torch.get_num_threads(), process_s=time.perf_counter() - started,
             peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (work / f"result-{args.worker}-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(r, indent=1))


def measure(args, kind: str, work: Path, round_no: int) -> dict:
    """One run of ``kind`` in fresh processes; its result: rank 0's wall clock, CPU time and memory of all ranks."""
    results = [work / f"result-{kind}-{rank}.json" for rank in range(args.procs)]
    for path in results:
        path.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    launch = [sys.executable] if args.procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.procs}"]
    cmd = [*launch, "-m", "benchmarks.train_throughput", "--worker", kind, "--work", str(work)]
    for flag in ("procs", "steps", "warmup", "log_every", "micro_batch", "grad_accum", "seq_len"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    log = work / f"{kind}-{round_no}.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode or not all(path.exists() for path in results):
        raise RuntimeError(f"{kind} run failed ({proc.returncode}); see {log}")
    ranks = [json.loads(path.read_text()) for path in results]
    r = ranks[0]
    r.update(round=round_no, wall_s=time.perf_counter() - started, tokens_per_s=r["tokens"] / r["seconds"],
             cpu_seconds=sum(x["cpu_seconds"] for x in ranks), peak_rss_mib=sum(x["peak_rss_mib"] for x in ranks))
    r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_seconds"]
    return r


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    work = Path(args.work).resolve()
    args.work = str(work)
    work.mkdir(parents=True, exist_ok=True)
    _, cfg = set_up(args, work)
    (work / "train.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    results = []
    for round_no in range(1, args.rounds + 1):
        # hf, ours, then ours, hf, ...: a load that rises or falls through the run (other work on the machine)
        # favours the second run of a round; alternating which goes second cancels that over pairs of rounds.
        for kind in ("hf", "ours") if round_no % 2 else ("ours", "hf"):
            r = measure(args, kind, work, round_no)
            results.append(r)
            print(f"round {round_no} {kind:4s}: {r['tokens']:,} tokens in {r['seconds']:.2f} s = "
                  f"{r['tokens_per_s']:,.0f} tokens/s; {r['cpu_seconds']:.2f} CPU s = {r['tokens_per_cpu_s']:,.0f} "
                  f"tokens/CPU-s (process {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mib']:,.0f} MiB)", flush=True)
    hf, ours = ([r for r in results if r["kind"] == kind] for kind in ("hf", "ours"))  # in round order
    ratios = {key: [o[key] / h[key] for h, o in zip(hf, ours)] for key in ("tokens_per_s", "tokens_per_cpu_s")}
    ratio = statistics.median(ratios["tokens_per_s"])
    med = {kind: {key: statistics.median(r[key] for r in rs) for key in ("tokens_per_s", "tokens_per_cpu_s")}
           for kind, rs in (("hf", hf), ("ours", ours))}
    # Same weights, data, order and schedule: the loss curves must agree (a check that both did the same work).
    hf_loss, ours_loss = ({int(s): v for s, v in r["losses"].items()} for r in (hf[0], ours[0]))  # JSON keys: str
    common = sorted(set(hf_loss) & set(ours_loss))
    gap = max(abs(hf_loss[s] - ours_loss[s]) for s in common) if common else None
    tokens_per_step = args.micro_batch * args.grad_accum * args.procs * args.seq_len
    print(f"\ncommand: python -m benchmarks.train_throughput {' '.join(sys.argv[1:])}".rstrip())
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, {args.heads} heads, MLP {args.intermediate}, "
          f"fp32; seq {args.seq_len}, micro-batch {args.micro_batch} x accumulation {args.grad_accum} x {args.procs} "
          f"process(es) = "
          f"{tokens_per_step:,} tokens/step; {args.warmup} warm-up + {args.steps} timed steps, log every "
          f"{args.log_every}; OMP_NUM_THREADS={args.threads}; HF: ZeRO stage {hf[0]['zero_stage']} "
          f"({hf[0]['optimizer']}, {hf[0]['backend']}), optim {hf[0]['optim']} ({hf[0]['adamw']} AdamW); ours: ZeRO "
          f"stage {ours[0]['zero_stage']}, {ours[0]['adamw']} AdamW")
    print("\n| round | run | seconds | tokens/s | CPU s | tokens/CPU-s | process s | peak RSS MiB |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['round']} | {r['kind']} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | "
              f"{r['cpu_seconds']:.2f} | {r['tokens_per_cpu_s']:,.0f} | {r['wall_s']:.1f} | {r['peak_rss_mib']:,.0f} |")
    print(f"\nmedian tokens/s: hf {med['hf']['tokens_per_s']:,.0f}, ours {med['ours']['tokens_per_s']:,.0f}; median "
          f"tokens/CPU-s: hf {med['hf']['tokens_per_cpu_s']:,.0f}, ours {med['ours']['tokens_per_cpu_s']:,.0f}")
    if gap is not None:
        print(f"loss at logged steps {common[0]}..{common[-1]}: largest |hf - ours| = {gap:.2e} (round 1)")
    cpu = ratios["tokens_per_cpu_s"]
    print(f"ours / hf tokens/CPU-s per round: {', '.join(f'{x:.3f}' for x in cpu)}; median "
          f"{statistics.median(cpu):.3f}x")
    print(f"ours / hf tokens/s per round: {', '.join(f'{x:.3f}' for x in ratios['tokens_per_s'])}; median "
          f"{ratio:.3f}x")
    (work / ("bench-quick.json" if args.quick else "bench.json")).write_text(json.dumps(
        {"args": vars(args), "results": results, "ratios": ratios, "median_ratio": ratio, "medians": med,
         "max_loss_gap": gap, "goal": GOAL}, indent=1))
    record("train_throughput", [Gate("train_throughput", "trait train / HF Trainer + DeepSpeed ZeRO-1, tokens/s "
                                     "(median of rounds)", ratio, QUICK_GOAL if args.quick else GOAL)], args.quick,
           {"ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
