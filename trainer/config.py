"""The one training configuration: a base model, an output directory, and the stages trained in order.

Everything else is derived from it, never configured twice: the number of optimizer steps of a stage
(``ceil(token_budget / (global_batch_size * seq_len))``), the DeepSpeed config (``trainer.engine``), the
gradient accumulation (``global_batch_size / (micro_batch_size * world_size)``), the initial weights of each
stage (the base model, or the previous stage's exported ``final`` directory).

Load with ``trait.config.load(TrainConfig, path)``; the resolved config (``trait.config.to_dict``) is written to
``<output_dir>/train_config.json`` at the start of every run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from trainer.data import DataConfig
from trait.config import ConfigError, field

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
INIT_FROM = ("base", "previous")
ATTENTION = ("sdpa", "flash_attention_2", "eager")
# A stage's name is a directory under output_dir: keep it to one safe path component.
_STAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass
class SyntheticDataConfig:
    """Uniformly random token ids instead of a corpus: measures throughput (benchmarks/train_mfu.py) without data
    on the machine. The loss stays near ln(vocab_size): nothing can be learned from it."""

    seq_len: int = field(2048, help="tokens per training sequence")
    vocab_size: int | None = field(None, help="ids are drawn from [0, vocab_size); default: the model's vocabulary")
    seed: int = field(0, help="seed of the token draw (each rank draws its own sequence)")

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"synthetic_data.seq_len must be >= 2 (a next-token target), got {self.seq_len}")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError(f"synthetic_data.vocab_size must be >= 2, got {self.vocab_size}")


@dataclass
class StageConfig:
    """One stage of continual pre-training: a data mixture, a token budget and an optimizer schedule."""

    name: str = field(help="stage name and directory under output_dir: 'knowledge' (stage 1: in-domain + selected "
                      "+ replay) or 'task_alignment' (stage 2: synthetic passages + replay); any [a-z0-9_-] name")
    token_budget: int = field(help="tokens to train on (all ranks together); the stage runs "
                              "ceil(token_budget / (global_batch_size * seq_len)) optimizer steps")
    global_batch_size: int = field(help="sequences per optimizer step, all ranks and accumulation steps together")
    lr: float = field(help="peak learning rate (after warm-up)")
    data: DataConfig | None = field(None, help="the stage's data mixture (trainer.data.DataConfig: sources with "
                                    "weights, seq_len, ...); exactly one of data and synthetic_data")
    synthetic_data: SyntheticDataConfig | None = field(None, help="random tokens instead of data (benchmarks only)")
    micro_batch_size: int = field(1, help="sequences per forward/backward pass on one device")
    min_lr: float = field(0.0, help="learning rate at the end of the cosine decay")
    warmup_steps: int = field(0, help="optimizer steps of linear warm-up from lr/warmup_steps to lr")
    schedule: str = field("cosine", help="after warm-up: 'cosine' (lr -> min_lr over the remaining steps) or "
                          "'constant' (lr)")
    weight_decay: float = field(0.1, help="AdamW decoupled weight decay on matrices (not on norms and biases)")
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95], help="AdamW (beta1, beta2)")
    eps: float = field(1e-8, help="AdamW epsilon")
    grad_clip: float = field(1.0, help="clip the global gradient L2 norm to this (0: no clipping)")
    checkpoint_every: int = field(100, help="save a resumable checkpoint every N optimizer steps (0: only when "
                                  "pre-empted by SIGTERM/SIGUSR1)")
    keep_checkpoints: int = field(2, help="keep the newest N complete checkpoints of this stage, delete older ones")
    export_every: int = field(0, help="also export the weights every N optimizer steps as a Hugging Face directory "
                              "<stage>/exports/step_<NNNNNNNN> (training curves: trait curves); 0: final only")
    init_from: str | None = field(None, help="'base' (the model directory) or 'previous' (the previous stage's "
                                  "output_dir/<stage>/final); default: base for the first stage, previous after")

    @property
    def seq_len(self) -> int:
        """Tokens per training sequence, from the data (or synthetic data) config."""
        return self.data.seq_len if self.data is not None else self.synthetic_data.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    @property
    def steps(self) -> int:
        """Optimizer steps: the token budget rounded up to whole global batches."""
        return math.ceil(self.token_budget / self.tokens_per_step)

    def validate(self) -> None:
        where = f"stage {self.name!r}"
        if not _STAGE_NAME.match(self.name):
            raise ConfigError(f"stage name {self.name!r}: use lower-case letters, digits, '_' and '-' "
                              "(it names a directory), e.g. 'knowledge' or 'task_alignment'")
        if (self.data is None) == (self.synthetic_data is None):
            raise ConfigError(f"{where}: give exactly one of 'data' (the stage's mixture of contract datasets) and "
                              "'synthetic_data' (random tokens, benchmarks only)")
        if self.data is not None and not self.data.sources:
            raise ConfigError(f"{where}: data.sources is empty; list at least one contract dataset")
        for key in ("token_budget", "global_batch_size", "micro_batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}: {key} must be positive, got {getattr(self, key)}")
        if self.global_batch_size % self.micro_batch_size:
            near = self.micro_batch_size * max(1, round(self.global_batch_size / self.micro_batch_size))
            raise ConfigError(f"{where}: global_batch_size {self.global_batch_size} is not a multiple of "
                              f"micro_batch_size {self.micro_batch_size} (global = micro x ranks x accumulation "
                              f"steps); e.g. global_batch_size {near}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"{where}: unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 < self.lr < math.inf or not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"{where}: need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.export_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError(f"{where}: warmup_steps, checkpoint_every and export_every must be >= 0 and "
                              "keep_checkpoints >= 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}: betas must be two numbers in [0, 1), got {self.betas}")
        if not (0 <= self.weight_decay < math.inf and 0 <= self.grad_clip < math.inf and 0 < self.eps < math.inf):
            raise ConfigError(f"{where}: weight_decay and grad_clip must be numbers >= 0 and eps a number > 0, got "
                              f"{self.weight_decay}, {self.grad_clip} and {self.eps}")
        if self.init_from is not None and self.init_from not in INIT_FROM:
            raise ConfigError(f"{where}: init_from {self.init_from!r}: choose 'base' or 'previous'")


@dataclass
class TrainConfig:
    """Two-stage continual pre-training of a Hugging Face causal LM with DeepSpeed ZeRO-1."""

    model: str = field(help="Hugging Face causal-LM directory (config.json, weights, tokenizer files): the base "
                       "model; its tokenizer tokenises every stage's data and is copied into every export")
    output_dir: str = field(help="where checkpoints, logs and exports go: <output_dir>/<stage>/{checkpoints,final,"
                            "metrics.jsonl,tensorboard,summary.json}")
    stages: list[StageConfig] = field(help="stages trained in order, e.g. knowledge then task_alignment")
    seed: int = field(0, help="seed of the Python, numpy and torch RNGs (random_init weights, dropout); the "
                      "data order has its own seed, data.seed")
    precision: str = field("auto", help="'bf16', 'fp32' or 'auto' (bf16 on CUDA, fp32 on CPU)")
    peak_flops_per_device: float | None = field(None, help="peak dense FLOP/s of one device for MFU; default: "
                                                "detected for H100, H200, A100 (bf16), else MFU is null")
    log_every: int = field(10, help="log loss, lr, grad norm, tokens/s and MFU every N optimizer steps")
    attn_implementation: str = field("sdpa", help="attention kernel: 'sdpa' (PyTorch scaled_dot_product_attention, "
                                     "flash on CUDA), 'flash_attention_2' (needs the flash-attn package), 'eager'")
    gradient_checkpointing: bool = field(False, help="recompute activations in the backward pass (less memory, "
                                         "~1/3 more compute; MFU still counts model FLOPs only)")
    compile: bool = field(False, help="torch.compile the model (CUDA; the first steps pay the compile time)")
    loss_chunk_tokens: int = field(0, help="compute the output layer and loss with torch's chunked "
                                   "linear_cross_entropy, this many tokens at a time, never holding the whole "
                                   "(tokens x vocabulary) logits (trainer.loss); for large vocabularies, e.g. 512 "
                                   "for Gemma 3's 262k; 0: the model's own lm_head and loss")
    random_init: bool = field(False, help="build the model from <model>/config.json with random weights instead of "
                              "loading them (benchmarks); never for a real run")
    export: bool = field(True, help="export each stage's final model as a Hugging Face directory "
                         "<output_dir>/<stage>/final (needed by a following stage with init_from: previous)")

    def validate(self) -> None:
        if not self.stages:
            raise ConfigError("stages is empty; give at least one stage (e.g. knowledge, then task_alignment)")
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"stage names must be unique (they name directories); repeated: {', '.join(dup)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.attn_implementation not in ATTENTION:
            raise ConfigError(f"attn_implementation {self.attn_implementation!r}: choose one of {', '.join(ATTENTION)}")
        if self.loss_chunk_tokens < 0:
            raise ConfigError(f"loss_chunk_tokens must be >= 0 (0: the model's own loss), got {self.loss_chunk_tokens}")
        if self.log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {self.log_every}")
        if self.peak_flops_per_device is not None and not 0 < self.peak_flops_per_device < math.inf:
            raise ConfigError(f"peak_flops_per_device must be positive (FLOP/s, e.g. 989e12), got "
                              f"{self.peak_flops_per_device}")
        # Resolve init_from here, so the resolved config written beside the outputs says what actually happened.
        for i, stage in enumerate(self.stages):
            if stage.export_every and not self.export:
                raise ConfigError(f"stage {stage.name!r}: export_every {stage.export_every} needs export: true")
            if stage.init_from is None:
                stage.init_from = "base" if i == 0 else "previous"
            if stage.init_from == "previous":
                if i == 0:
                    raise ConfigError(f"stage {stage.name!r} is the first stage: init_from 'previous' has no "
                                      "previous stage; use 'base'")
                if not self.export:
                    raise ConfigError(f"stage {stage.name!r} starts from the previous stage's export, but export is "
                                      "false; set export: true")


def check_inputs(config: TrainConfig) -> None:
    """Fail before any training if an input is missing: the base model directory, or any stage's datasets.

    Stage 2's inputs are checked before stage 1 starts, so a missing synthetic dataset is reported in seconds,
    not after stage 1's hours.
    """
    model = Path(config.model)
    if not (model / "config.json").is_file():
        raise ConfigError(f"model {config.model!r}: no config.json there; give a Hugging Face model directory")
    if not config.random_init and not (list(model.glob("*.safetensors")) or list(model.glob("*.bin"))):
        raise ConfigError(f"model {config.model!r}: no weights (*.safetensors or *.bin); give a full model "
                          "directory, or random_init: true for a benchmark")
    uses_tokenizer = any(s.data is not None for s in config.stages)
    if uses_tokenizer and not (model / "tokenizer.json").is_file() and not (model / "tokenizer.model").is_file():
        raise ConfigError(f"model {config.model!r}: no tokenizer.json or tokenizer.model; the data is tokenised "
                          "with the model's own tokenizer")
    for stage in config.stages:
        for source in stage.data.sources if stage.data is not None else ():
            from trait.contract import finished_dataset  # pyarrow: only when there is data to read

            try:
                finished_dataset(str(source.path), (stage.data.text_column,))
            except Exception as exc:  # ContractError, or pyarrow's error for a missing directory
                raise ConfigError(f"stage {stage.name!r}, source {source.name!r}: input {source.path} is not "
                                  f"usable: {exc}") from exc
