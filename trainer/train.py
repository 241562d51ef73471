"""The training loop of ``trait train``: the stages of a TrainConfig, in order, with DeepSpeed ZeRO-1.

``run_training`` runs in every process of a run: one process (``trait train``), N local processes under torchrun
(``trait train --nproc N``; trainer/launch.py), or one torchrun per node under Slurm (``sbatch
infra/slurm/train.sbatch X.yaml``, which requeues itself after a pre-emption stop). ``python -m trainer.train`` is
the workers' command line: ``trait train``'s own parser. Each stage: load the initial weights (base model, or the
previous stage's export), tokenise and pack the stage's mixture (``trainer.data.prepare``), resume from the newest
complete checkpoint if any, train ``ceil(token_budget / (global_batch_size x seq_len))`` optimizer steps, export
``<stage>/final``.

SIGTERM or SIGUSR1 (pre-emption; Slurm's ``--signal``) make every rank checkpoint at the next step boundary and
exit with code 75 (EX_TEMPFAIL); rerunning the same command resumes there.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import random
import signal
import sys
import time
from pathlib import Path

from trainer import checkpoint
from trainer.config import StageConfig, TrainConfig, check_inputs
from trainer.engine import Dist, build_engine, init_distributed, lr_factor, resolve_precision
from trainer.loss import check_chunked_loss, use_chunked_loss
from trainer.metrics import MetricsLogger, detect_peak_flops, matmul_params, mfu, model_flops_per_token
from trainer.model import drop_exports_after, export_model, load_model, step_export_dir, verified_export
from trait.config import ConfigError, to_dict

log = logging.getLogger("trainer")

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again"; the checkpoint of the stop step is complete
# Stage settings that may change between a checkpoint and its resume (they do not change the loss curve).
_RESUME_MAY_CHANGE = {"checkpoint_every", "keep_checkpoints", "export_every"}


class Preempted(Exception):
    """Stopped by SIGTERM/SIGUSR1 after saving a checkpoint; rerun to resume."""


class StopRequest:
    """Records SIGTERM/SIGUSR1; ranks agree on stopping at a step boundary (one all-reduce of a flag per step)."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            # Outside the main thread (an embedding caller) there is no signal handling: no pre-emption stop.
            with contextlib.suppress(ValueError):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        log.warning("got %s: checkpointing at the next step boundary, then exiting", signal.Signals(signum).name)

    def agreed(self, d: Dist) -> bool:
        """True on every rank if any rank got a signal (ranks may get it a step apart)."""
        if d.world_size == 1:
            return self.signum is not None
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.signum is not None else 0.0], device=d.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _make_stream(config: TrainConfig, stage: StageConfig, vocab_size: int, d: Dist):
    """The stage's batch source for this rank: a MixtureStream over the packed mixture, or random tokens."""
    if stage.synthetic_data is not None:
        from trainer.synthetic import SyntheticStream

        syn = stage.synthetic_data
        return SyntheticStream(syn.vocab_size or vocab_size, syn.seq_len, syn.seed, d.rank, d.world_size)
    from trainer.data import prepare

    # Every rank calls prepare: the token cache is built once under a file lock and the other ranks wait and
    # read it. Each source is tokenised as far as its share of the tokens the stage draws needs. seed None: the
    # data order is data.seed's.
    return prepare(stage.data, config.model, stage.steps * stage.tokens_per_step).stream(None, d.rank, d.world_size)


def _barrier(d: Dist) -> None:
    if d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _stage_fingerprint(stage: StageConfig) -> dict:
    return {k: v for k, v in to_dict(stage).items() if k not in _RESUME_MAY_CHANGE}


def _check_resumable(client: dict, stage: StageConfig, d: Dist, path: Path) -> None:
    """Refuse a checkpoint written under another world size or another stage config (its data position and LR
    schedule would not mean the same thing)."""
    if client.get("world_size") != d.world_size:
        raise ConfigError(f"checkpoint {path} was written by {client.get('world_size')} ranks, this run has "
                          f"{d.world_size}: each rank's data position belongs to its rank; resume with the same "
                          "number of processes, or start a new output_dir")
    saved, now = client.get("stage_config", {}), _stage_fingerprint(stage)
    diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]
    if diff:
        raise ConfigError(f"checkpoint {path} was written under another config for stage {stage.name!r} "
                          f"({'; '.join(diff)}); restore those settings, or use a new output_dir "
                          "(--resume never starts over only in an empty one)")


def train_stage(config: TrainConfig, index: int, init_dir: Path, d: Dist, precision: str, peak: float | None,
                resume: str, stop: StopRequest) -> dict:
    """Train stage ``index`` from the weights at ``init_dir``; export it; return its summary."""
    import torch

    stage = config.stages[index]
    stage_dir = Path(config.output_dir) / stage.name
    ckpt_root = stage_dir / "checkpoints"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    _seed_all(config.seed + index)
    model = load_model(init_dir, dtype, d.device, random_init=config.random_init and stage.init_from == "base",
                       attn_implementation=config.attn_implementation)
    mcfg = model.config
    if stage.seq_len > getattr(mcfg, "max_position_embeddings", stage.seq_len):
        raise ConfigError(f"stage {stage.name!r}: seq_len {stage.seq_len} exceeds the model's "
                          f"max_position_embeddings {mcfg.max_position_embeddings}")
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.loss_chunk_tokens:
        own, chunked = check_chunked_loss(model, mcfg.vocab_size)
        use_chunked_loss(model, config.loss_chunk_tokens)
        log.info("stage %s: output layer and loss in chunks of %d tokens (torch linear_cross_entropy; check on 16 "
                 "tokens: %.6f, the model's own %.6f)", stage.name, config.loss_chunk_tokens, chunked, own)
    total = stage.steps
    engine, _, ds_config = build_engine(model, stage, precision, d.world_size, total, d.device)
    if config.compile:
        engine.compile()
    accum, micro = ds_config["gradient_accumulation_steps"], stage.micro_batch_size
    stream = _make_stream(config, stage, mcfg.vocab_size, d)

    start, resumed_from = 0, None
    if resume == "auto":
        found = checkpoint.latest(ckpt_root)
        if found is not None:
            step, path = found
            _, client = engine.load_checkpoint(str(ckpt_root), tag=path.name, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
            _check_resumable(client, stage, d, path)
            mine = client["ranks"][d.rank]
            stream.load_state_dict(mine["stream"])
            checkpoint.set_rng_state(mine["rng"])
            start, resumed_from = client["step"], str(path)
            log.info("stage %s: resumed from %s (step %d of %d)", stage.name, path, start, total)
    if d.is_main:
        for gone in drop_exports_after(stage_dir, start):
            log.info("stage %s: removed %s (made after step %d, where this run starts)", stage.name, gone, start)

    n_matmul = matmul_params(model)
    head_dim = getattr(mcfg, "head_dim", None) or mcfg.hidden_size // mcfg.num_attention_heads
    attn_dim = mcfg.num_attention_heads * head_dim
    flops_per_token = model_flops_per_token(n_matmul, mcfg.num_hidden_layers, attn_dim, stage.seq_len)
    factor = lr_factor(stage, total)
    logger = MetricsLogger(stage_dir, stage.name, total, start, d.rank)
    logger.write({"event": "start", "step": start, "total_steps": total, "resumed_from": resumed_from,
                  "init_from": str(init_dir), "world_size": d.world_size, "precision": precision,
                  "device": str(d.device), "matmul_params": n_matmul, "flops_per_token": flops_per_token,
                  "peak_flops_per_device": peak, "deepspeed": ds_config})
    log.info("stage %s: %d steps x %d sequences x %d tokens (accumulation %d x micro %d x %d ranks), %.3g "
             "model FLOPs/token", stage.name, total, stage.global_batch_size, stage.seq_len, accum, micro,
             d.world_size, flops_per_token)

    t_stage = time.perf_counter()
    t_last, steps_since, pause = time.perf_counter(), 0, 0.0
    rates, last = [], {}

    offset = sum(s.steps * s.tokens_per_step for s in config.stages[:index])  # tokens of the earlier stages

    def export(step: int, out_dir: Path) -> None:
        tokens = step * stage.tokens_per_step
        export_model(getattr(engine.module, "_orig_mod", engine.module), config.model, out_dir,
                     {"stage": stage.name, "stage_index": index, "step": step, "steps": total, "tokens": tokens,
                      "tokens_cumulative": offset + tokens})

    def save(step: int) -> None:
        client = {"step": step, "tokens": step * stage.tokens_per_step, "stage_index": index,
                  "stage": stage.name, "world_size": d.world_size, "stage_config": _stage_fingerprint(stage)}
        checkpoint.save(engine, ckpt_root, step, client, {"stream": stream.state_dict(),
                                                          "rng": checkpoint.rng_state()},
                        d.rank, d.world_size, stage.keep_checkpoints)
        logger.mixture(step, stream.realised())  # over the global stream: the same on every rank

    engine.train()
    for step in range(start, total):
        loss_sum = torch.zeros((), device=d.device)
        for _ in range(accum):
            batch = torch.from_numpy(stream.next_batch(micro)).to(d.device, non_blocking=True)
            # input_ids = labels: the model shifts labels by one inside its loss (mean over the micro-batch's
            # micro x (seq_len - 1) predicted tokens); engine.backward divides by the accumulation steps.
            loss = engine(input_ids=batch, labels=batch).loss
            engine.backward(loss)
            engine.step()  # an optimizer step (and LambdaLR step) only at the accumulation boundary
            loss_sum += loss.detach().float()
        done, steps_since = step + 1, steps_since + 1
        logger.advance()
        if done % config.log_every == 0 or done == total:
            # The logged loss is this step's: the mean over its accumulation x world_size micro-batches. Not an
            # average over the log interval, so a run resumed mid-interval logs the same numbers.
            if d.world_size > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_sum)
            loss_value = loss_sum.item() / (accum * d.world_size)
            grad_norm = engine.get_global_grad_norm()
            elapsed = time.perf_counter() - t_last - pause
            tps = steps_since * stage.tokens_per_step / elapsed
            last = {"step": done, "tokens": done * stage.tokens_per_step, "loss": loss_value,
                    "lr": stage.lr * factor(step),
                    "grad_norm": None if grad_norm is None else float(grad_norm),
                    "tokens_per_s": tps, "tokens_per_s_per_device": tps / d.world_size,
                    "mfu": mfu(tps / d.world_size, flops_per_token, peak), "step_time_s": elapsed / steps_since}
            logger.train_step(last)
            rates.append((steps_since, elapsed))
            t_last, steps_since, pause = time.perf_counter(), 0, 0.0
        t0 = time.perf_counter()
        # Export before the checkpoint of the same step: a kill right after that checkpoint keeps the export.
        if stage.export_every and done % stage.export_every == 0 and done < total and d.is_main:
            export(done, step_export_dir(stage_dir, done))
        stopping = stop.agreed(d)
        if done < total and ((stage.checkpoint_every and done % stage.checkpoint_every == 0) or stopping):
            save(done)
        pause += time.perf_counter() - t0
        if stopping and done < total:  # at the last step, finishing (the export) is the better use of the time
            logger.close()
            raise Preempted(f"stage {stage.name!r} stopped by a signal at step {done} of {total}; "
                            f"checkpoint saved under {ckpt_root}")

    realised = stream.realised()
    logger.mixture(total, realised)
    logger.close()
    wall = time.perf_counter() - t_stage
    steps_timed = sum(n for n, _ in rates)
    mean_tps = steps_timed * stage.tokens_per_step / sum(t for _, t in rates) if rates else None
    summary = {"stage": stage.name, "index": index, "steps": total, "tokens": total * stage.tokens_per_step,
               "resumed_from": resumed_from, "init_from": str(init_dir), "final_loss": last.get("loss"),
               "tokens_per_s": mean_tps, "tokens_per_s_per_device": mean_tps and mean_tps / d.world_size,
               "mfu": mean_tps and mfu(mean_tps / d.world_size, flops_per_token, peak),
               "flops_per_token": flops_per_token, "matmul_params": n_matmul, "world_size": d.world_size,
               "precision": precision, "wall_s": wall, "realised_mixture": realised, "deepspeed": ds_config,
               # per source: documents and tokens used, planned epochs, rejected rows included or left out
               "data": stream.mixture.stats() if stage.data is not None else None,
               "stage_config": _stage_fingerprint(stage), "init_from_stage": _init_source(config, index)}
    if config.export and d.is_main:
        export(total, stage_dir / "final")
    if d.is_main:
        tmp = stage_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=str))
        tmp.replace(stage_dir / "summary.json")
    _barrier(d)
    if hasattr(engine, "destroy"):
        engine.destroy()
    engine = model = None  # free the weights and optimizer state before the next stage loads its own
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summary


def _stage_done(config: TrainConfig, index: int) -> bool:
    """True if stage ``index`` finished in an earlier run under the same settings (then it is skipped)."""
    stage = config.stages[index]
    stage_dir = Path(config.output_dir) / stage.name
    if not (stage_dir / "summary.json").is_file():
        return False
    done = json.loads((stage_dir / "summary.json").read_text())
    saved, now = done.get("stage_config", {}), _stage_fingerprint(stage)
    diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]
    if diff or done.get("init_from_stage") != _init_source(config, index):
        raise ConfigError(f"stage {stage.name!r} already finished in {stage_dir} under other settings "
                          f"({'; '.join(diff) or 'init_from'}); use a new output_dir, or delete {stage_dir} and "
                          "the stages after it to retrain")
    if config.export:
        verified_export(stage_dir / "final")
    return True


def _init_source(config: TrainConfig, index: int) -> str:
    """What stage ``index`` starts from: 'base:<model>' or 'stage:<previous stage name>'."""
    stage = config.stages[index]
    return f"base:{config.model}" if stage.init_from == "base" else f"stage:{config.stages[index - 1].name}"


def run_training(config: TrainConfig, resume: str = "auto") -> dict:
    """Train every stage in order (skipping stages already finished when resuming). Returns the run summary:
    ``{"stages": {name: summary}, "counts": {name: {steps, tokens, final_loss}}}``."""
    if resume not in ("auto", "never"):
        raise ConfigError(f"--resume {resume!r}: choose 'auto' (continue from the newest complete checkpoint) "
                          "or 'never'")
    check_inputs(config)
    checkpoint.check_output_dir(config)
    out = Path(config.output_dir)
    if resume == "never":
        existing = [s.name for s in config.stages if (out / s.name).exists() and any((out / s.name).iterdir())]
        if existing:
            raise ConfigError(f"{out} already holds training output ({', '.join(existing)}); use --resume auto to "
                              "continue it, or another (or an emptied) output_dir to start over")
    d = init_distributed()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines would drown ours
    precision = resolve_precision(config.precision)
    peak = detect_peak_flops(config.peak_flops_per_device)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(to_dict(config), indent=1))
    stop = StopRequest()
    summaries = {}
    try:
        for i, stage in enumerate(config.stages):
            if resume == "auto" and _stage_done(config, i):
                log.info("stage %s: already finished (%s); skipping", stage.name, out / stage.name / "summary.json")
                summaries[stage.name] = json.loads((out / stage.name / "summary.json").read_text())
                continue
            if stage.init_from == "base":
                init_dir = Path(config.model)
            else:
                init_dir = out / config.stages[i - 1].name / "final"
                verified_export(init_dir)
            summaries[stage.name] = train_stage(config, i, init_dir, d, precision, peak, resume, stop)
        result = {"stages": summaries,
                  "counts": {n: {"steps": s["steps"], "tokens": s["tokens"], "final_loss": s["final_loss"]}
                             for n, s in summaries.items()}}
        if d.is_main:
            (out / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    finally:
        stop.restore()
        import torch.distributed as dist

        if dist.is_initialized():  # NCCL warns (and may leak) when a process exits with its group alive
            dist.destroy_process_group()
    return result


if __name__ == "__main__":  # torchrun's and Slurm's worker command line: the same parser as `trait train`
    from trait.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
