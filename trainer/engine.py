"""Process group, optimizer, learning-rate schedule and the DeepSpeed ZeRO-1 engine, all derived from one
``StageConfig`` so the batch arithmetic cannot drift between the trainer and DeepSpeed.

Works in one process (a single-member process group on a free loopback port) and in N processes under torchrun
(which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), locally or per node under Slurm (srun starts
one torchrun per node with a c10d rendezvous). Backend: NCCL on CUDA, gloo on CPU. The process group's store
listens on MASTER_ADDR only (trainer.rendezvous).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from trainer.config import StageConfig
from trainer.rendezvous import process_group_store
from trait.config import ConfigError
from trait.net import free_port

log = logging.getLogger(__name__)


@dataclass
class Dist:
    """Where this process sits: global rank, world size, local rank, and its torch device."""

    rank: int
    world_size: int
    local_rank: int
    device: object  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join (or create) the process group. Without torchrun's variables this is a world of one; under a bare
    ``srun`` (one task per GPU, no torchrun) Slurm's SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID stand in, with
    MASTER_ADDR and MASTER_PORT given by the batch script."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.constants import default_pg_timeout

    env = os.environ
    # SLURM_STEP_ID: inside an srun step, not merely an sbatch script whose allocation has several tasks.
    if "RANK" not in env and "SLURM_STEP_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            raise ConfigError("under srun without torchrun, set MASTER_ADDR and MASTER_PORT (the first node's "
                              "address and a free port), or start one torchrun per node")
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_STEP_NUM_TASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "RANK" not in env:
        env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1"})
        env.setdefault("MASTER_PORT", str(free_port()))
    if env.get("LOCAL_WORLD_SIZE") == env["WORLD_SIZE"]:
        # Every rank runs on this machine, so the collectives' own sockets (gloo's pairs, NCCL's bootstrap) stay on
        # loopback, whatever the environment names for other jobs; across machines they take the host name's
        # interface, or the one these variables name.
        env.update(GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
    local_rank, world_size = int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        # The store is made here, not by init_method="env://", whose server would listen on every interface.
        dist.init_process_group(backend, store=process_group_store(default_pg_timeout), rank=int(env["RANK"]),
                                world_size=world_size, timeout=default_pg_timeout,
                                device_id=device if backend == "nccl" and world_size > 1 else None)
        deepspeed.init_distributed(dist_backend=backend, verbose=False)  # DeepSpeed's wrapper of that group
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def accumulation_steps(stage: StageConfig, world_size: int) -> int:
    """Micro-batches per rank per optimizer step: global = micro x world_size x accumulation."""
    per_pass = stage.micro_batch_size * world_size
    if stage.global_batch_size % per_pass:
        raise ConfigError(f"stage {stage.name!r}: global_batch_size {stage.global_batch_size} is not divisible by "
                          f"micro_batch_size x ranks = {stage.micro_batch_size} x {world_size} = {per_pass}; "
                          "change global_batch_size, micro_batch_size or the number of processes")
    return stage.global_batch_size // per_pass


def deepspeed_config(stage: StageConfig, precision: str, world_size: int) -> dict:
    """The DeepSpeed config, derived: DeepSpeed re-checks train_batch_size = micro x accumulation x world."""
    return {
        "train_batch_size": stage.global_batch_size,
        "train_micro_batch_size_per_gpu": stage.micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps(stage, world_size),
        "gradient_clipping": stage.grad_clip,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # ZeRO stage 1: each rank keeps the fp32 master weights and Adam moments of 1/world_size of the
        # parameters (12 bytes per parameter over the ranks, instead of 12 on every rank); gradients are
        # reduce-scattered, updated partitions all-gathered.
        "zero_optimization": {"stage": 1},
        "steps_per_print": 2**31 - 1,  # our logger reports; DeepSpeed's own print would interleave with tqdm
        "wall_clock_breakdown": False,
    }


def resolve_precision(precision: str) -> str:
    import torch

    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return precision


def lr_factor(stage: StageConfig, total_steps: int):
    """The schedule as a function of the optimizer step s (0-based) to a multiplier of ``stage.lr``, for LambdaLR.

    Warm-up: (s + 1) / warmup_steps for s < warmup_steps (the first step already moves, at lr / warmup_steps).
    Cosine: min_lr + (lr - min_lr) x (1 + cos(pi x p)) / 2 with p = (s - warmup) / (total - warmup) in [0, 1).
    Constant: 1. A closure, not an object, so LambdaLR's state_dict holds only the step count and a resumed run
    takes the schedule from its config.
    """
    warmup, floor = stage.warmup_steps, stage.min_lr / stage.lr

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if stage.schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model, stage: StageConfig, device):
    """torch AdamW over two groups: matrices decay, vectors (norm weights, biases) do not.

    Why not DeepSpeed's FusedAdam: it is a CUDA kernel that DeepSpeed JIT-compiles with nvcc, so it cannot run on
    CPU (and its CPUAdam is meant for ZeRO-Offload). torch's own AdamW takes ``fused=True`` on CUDA and on CPU
    (torch >= 2.4), a single-kernel update without a compile step. ZeRO-1 lists torch.optim.AdamW as supported: it
    runs the optimizer on each rank's flat fp32 partition.

    Fused on CPU too: torch's CPU default is the single-tensor loop (foreach is CUDA-only), about ten passes over
    memory per step. Over the flat partition of 5.2M fp32 parameters on one thread a step took 65 ms single-tensor,
    24 ms foreach and 8 ms fused: ~3% of a 1.8 s step of benchmarks/train_throughput.py's model. Hugging Face
    Trainer's default optim (``adamw_torch_fused`` since torch 2.8) is the same kernel.
    """
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if getattr(device, "type", "cpu") in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=stage.lr, betas=tuple(stage.betas), eps=stage.eps, **fused)


def build_engine(model, stage: StageConfig, precision: str, world_size: int, total_steps: int, device):
    """deepspeed.initialize with our optimizer and LambdaLR; returns (engine, scheduler, ds_config)."""
    import deepspeed
    import torch

    optimizer = build_optimizer(model, stage, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(stage, total_steps))
    ds_config = deepspeed_config(stage, precision, world_size)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine, scheduler, ds_config
