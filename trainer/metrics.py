"""Training metrics: model FLOPs per token, MFU against a device's peak, and the JSONL + TensorBoard + tqdm logger.

Only rank 0 writes. The JSONL log (``<stage>/metrics.jsonl``) is the loss curve of record: one line per logged
step (``event: "train"``) and mixture snapshots (``event: "mixture"``). On resume from step S the lines after S
are dropped (and TensorBoard purges them), so a resumed run's log reads as one uninterrupted curve.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Dense (no sparsity) bf16 tensor-core peaks per device, FLOP/s, from the vendors' data sheets. Matched in order
# against torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3"), so the PCIe H100 (756 TFLOP/s) is tested
# before the SXM default.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM5
    ("H200", 989e12),  # same compute die as the H100 SXM, more and faster memory
    ("A100", 312e12),
)


def detect_peak_flops(override: float | None) -> float | None:
    """Peak FLOP/s of one device: ``override`` if given, else looked up by CUDA device name; None on CPU or an
    unknown GPU (MFU is then null rather than a guess)."""
    if override is not None:
        return float(override)
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak
    log.warning("no known peak FLOP/s for device %r; MFU will be null (set peak_flops_per_device)", name)
    return None


def matmul_params(model) -> int:
    """N: parameters that take part in a matrix multiply per token: every ``nn.Linear`` weight (and bias),
    ``lm_head`` included (a tied lm_head shares the embedding matrix but is still a vocab x hidden matmul), the
    input embedding lookup excluded (a gather, no FLOPs), norms excluded (elementwise, negligible)."""
    import torch

    return sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
               for p in m.parameters(recurse=False))


def model_flops_per_token(n_matmul_params: int, n_layers: int, attn_dim: int, seq_len: int) -> int:
    """Training FLOPs per token, the PaLM paper's formula (Chowdhery et al. 2022, appendix B), attention included.

    ``6 N + 12 L d T`` with N = ``n_matmul_params`` (see ``matmul_params``), L layers, d = ``attn_dim`` (query
    heads x head_dim, the hidden size for Llama), T = ``seq_len``:

    - a weight matrix of d_in x d_out costs 2 d_in d_out FLOPs per token forward (a multiply and an add per
      weight); the backward pass costs twice that (gradients with respect to the input and to the weight):
      2 + 4 = 6 FLOPs per parameter per token, 6 N;
    - attention's two matmuls without weights, Q K^T and softmax(.) V, cost 2 T d each per token and layer
      forward, 4 T d, and three times that with the backward pass: 12 T d per layer, 12 L d T (the full T x T
      score matrix, as PaLM counts it, not the causal half).

    Model FLOPs, not hardware FLOPs: activation recomputation is not counted, so it lowers MFU.
    Example, the 1B benchmark model (hidden 2048, 16 layers, MLP 5632, vocab 32000, T 2048):
    N = 16 x (4 x 2048^2 + 3 x 2048 x 5632) + 32000 x 2048 = 887.6e6; 6 N = 5.33e9; 12 x 16 x 2048 x 2048 =
    0.81e9; 6.13e9 FLOPs per token, so 40% MFU on an H100 (989e12) is 0.4 x 989e12 / 6.13e9 = 64.5k tokens/s.
    """
    return 6 * n_matmul_params + 12 * n_layers * attn_dim * seq_len


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s of one device over its peak; None without a peak."""
    if not peak:
        return None
    return tokens_per_s_per_device * flops_per_token / peak


class MetricsLogger:
    """JSONL + TensorBoard + a tqdm bar for one stage, on rank 0 only (every method is a no-op elsewhere)."""

    def __init__(self, stage_dir: Path, stage: str, total_steps: int, start_step: int, rank: int):
        self.enabled = rank == 0
        self.stage = stage
        self.path = Path(stage_dir) / "metrics.jsonl"
        self.tb = None
        self.bar = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after the checkpoint we resume from.
            self.tb = SummaryWriter(str(Path(stage_dir) / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)
        except ImportError:  # a bare GPU box with torch + transformers + deepspeed only: the JSONL still holds all
            log.warning("tensorboard is not installed; metrics go to %s only", self.path)
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc=stage, unit="step", dynamic_ncols=True,
                        mininterval=1.0, disable=None)  # disable=None: no bar when stderr is not a terminal

    def _truncate_after(self, step: int) -> None:
        """Keep only the lines up to ``step`` (the resume point); atomic, so a kill here loses nothing."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        """Append one JSON line (flushed: a SIGKILL right after loses nothing written)."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"stage": self.stage, "time": round(time.time(), 3), **record}) + "\n")

    def train_step(self, record: dict) -> None:
        """A logged step: JSONL, TensorBoard scalars (train/<key>) and the progress bar's postfix."""
        if not self.enabled:
            return
        self.write({"event": "train", **record})
        step = record["step"]
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):  # mfu is None on CPU: not plotted
                    self.tb.add_scalar(f"train/{key}", value, step)
            self.tb.flush()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)

    def mixture(self, step: int, realised: dict) -> None:
        """The realised data mixture so far (per source); also as TensorBoard scalars when numeric."""
        if not self.enabled:
            return
        self.write({"event": "mixture", "step": step, "realised": realised})
        if self.tb is not None:
            for source, stats in realised.items():
                for key, value in (stats.items() if isinstance(stats, dict) else [("value", stats)]):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.tb.add_scalar(f"mixture/{source}/{key}", value, step)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
