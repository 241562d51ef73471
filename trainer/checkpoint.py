"""Resumable checkpoints: DeepSpeed's files plus a completion marker, and the RNG state of every rank.

Layout: ``<stage_dir>/checkpoints/step_00000100/`` holds what ``engine.save_checkpoint`` writes (the module
states with our ``client_state``, and one ZeRO optimizer partition per rank), then ``complete.json`` with every
file's size and sha256, written by rank 0 after all ranks have saved (a barrier) and hashed their share. A
directory without a marker that verifies is not a checkpoint: a kill mid-save, a truncated or missing file, is
skipped with a warning on resume and the previous complete one is used.

``client_state`` holds, for every rank (gathered to rank 0, which writes it): the MixtureStream position (so
resume never replays the stream), and the Python, numpy, torch CPU and CUDA RNG states; plus the step, tokens
seen, stage index and the stage config it was written under.

A run's ``output_dir`` holds only the run (``check_output_dir``): a folder per stage, ``train_config.json`` and
``summary.json``. A folder holding anything else, or one that overlaps the model or a data source, is refused
before anything is written, so resuming never mixes a run with other files.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.model import sha256_file, verify_files
from trait.outputs import check_output

if TYPE_CHECKING:
    from trainer.config import TrainConfig

log = logging.getLogger(__name__)

MARKER = "complete.json"
_PREFIX = "step_"
RUN_FILES = ("train_config.json", "summary.json")  # what trainer.train writes at the top of output_dir


def check_output_dir(config: TrainConfig) -> None:
    """Refuse an ``output_dir`` that holds anything but this run's files and stage folders, or that is, is inside
    or contains the model directory or a stage's data source (an OutputError: exit 2)."""
    data = [stage.data for stage in config.stages if stage.data is not None]
    out = Path(config.output_dir).resolve()
    # a token cache configured inside output_dir is the run's own too (its top folder there)
    caches = [d.token_cache().resolve() for d in data]
    own = [*RUN_FILES, *(stage.name for stage in config.stages),
           *(c.relative_to(out).parts[0] for c in caches if out in c.parents)]
    check_output(config.output_dir, inputs=[config.model, *(s.path for d in data for s in d.sources)], own=own,
                 dataset=False, name="output_dir")


def tag(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def rng_state() -> dict:
    """This process's RNG states: Python, numpy's global, torch CPU and (if any) the current CUDA device."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


def _gather(obj, world_size: int) -> list:
    import torch.distributed as dist

    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _barrier(world_size: int) -> None:
    import torch.distributed as dist

    if world_size > 1:
        dist.barrier()


def save(engine, ckpt_root: Path, step: int, client_state: dict, per_rank: dict, rank: int, world_size: int,
         keep: int) -> Path:
    """Save a checkpoint for ``step`` on all ranks (a collective: every rank must call it at the same step).

    ``per_rank`` is this rank's own state (stream position, RNG); the list of all ranks' goes into client_state.
    Returns the checkpoint directory. Keeps the newest ``keep`` complete checkpoints.
    """
    t0 = time.time()
    ckpt_root = Path(ckpt_root)
    path = ckpt_root / tag(step)
    # A directory of this step left by a killed save: DeepSpeed would write over some files and leave others.
    if rank == 0 and path.exists():
        shutil.rmtree(path)
    _barrier(world_size)
    states = _gather(per_rank, world_size)
    engine.save_checkpoint(str(ckpt_root), tag=tag(step),
                           client_state={**client_state, "ranks": states if rank == 0 else None},
                           save_latest=False)
    _barrier(world_size)  # every rank's files are on disk
    # Hash in parallel: rank r hashes files r, r + world, ... of the sorted listing (a shared file system).
    names = sorted(p.name for p in path.iterdir() if p.is_file())
    mine = {n: {"bytes": (path / n).stat().st_size, "sha256": sha256_file(path / n)}
            for n in names[rank::world_size]}
    tables = _gather(mine, world_size)
    if rank == 0:
        files = {k: v for t in tables for k, v in t.items()}
        marker = {"step": step, "world_size": world_size, "files": dict(sorted(files.items())),
                  "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = path / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=1))
        tmp.replace(path / MARKER)
        prune(ckpt_root, keep)
    _barrier(world_size)  # nobody runs ahead (or exits) before the marker exists
    log.info("checkpoint %s saved in %.1f s", path, time.time() - t0)
    return path


def _candidates(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every step_* directory, newest first."""
    out = []
    for p in Path(ckpt_root).glob(f"{_PREFIX}*") if Path(ckpt_root).is_dir() else ():
        suffix = p.name[len(_PREFIX):]
        if p.is_dir() and suffix.isdigit():
            out.append((int(suffix), p))
    return sorted(out, reverse=True)


def check(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint (its marker verifies), else why not."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no {MARKER} (the save did not finish)"
    try:
        meta = json.loads(marker.read_text())
    except ValueError:
        return f"{MARKER} is not valid JSON"
    return verify_files(path, meta["files"])


def latest(ckpt_root: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint (step, directory), skipping incomplete or damaged ones with a warning."""
    for step, path in _candidates(ckpt_root):
        problem = check(path)
        if problem is None:
            return step, path
        log.warning("skipping checkpoint %s: %s; trying the previous one", path, problem)
    return None


def prune(ckpt_root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (and anything older than the oldest kept).
    Incomplete directories newer than the newest complete one are left alone: a resume skips them, and the next
    save of that step replaces them."""
    complete = [(s, p) for s, p in _candidates(ckpt_root) if (p / MARKER).is_file()]
    if len(complete) <= keep:
        return
    oldest_kept = complete[keep - 1][0]
    for step, path in _candidates(ckpt_root):
        if step < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)
