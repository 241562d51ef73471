"""GPU training throughput and MFU of `trait train`'s own loop on a ~1B-parameter Llama with random weights.

    python -m benchmarks.train_mfu                      # 1B Llama, seq 2048, bf16, ZeRO-1, one GPU
    python -m benchmarks.train_mfu --compile --micro-batch 16 --activation-checkpointing
    python -m benchmarks.train_mfu --model ~/.cache/trait/models/gemma3-270m --precision fp32 --seq-len 512 \
        --micro-batch 1 --warmup 1 --steps 3 --loss-chunk-tokens 512     # a real base on CPU (issue 20, point 5)

Nothing here trains differently from ``trait train``: the script writes the model's config.json (no weights) and
a one-stage TrainConfig with ``random_init: true`` and ``synthetic_data`` (uniform random token ids, so no corpus
or tokenizer is needed), then calls ``trainer.train.run_training``, the function behind ``trait train``, and reads
its metrics.jsonl: tokens/s per step after the warm-up steps (the first steps pay CUDA/cuBLAS initialisation and,
with --compile, the compilation). MFU = tokens/s per device x model FLOPs per token / peak, with FLOPs per token
= 6 N + 12 L d T (trainer.metrics.model_flops_per_token; 6.13e9 for the default shape) and the peak detected
from the device name (H100/H200 SXM: 989e12 dense bf16) unless --peak is given.

Measured on one H100 80GB HBM3 (2026-11-24; torch 2.11 + CUDA 13.0, transformers 5.17, deepspeed 0.19.8; default
shape, seq 2048, bf16, sdpa attention, ZeRO-1, one process; 15-20 timed steps after 5-8 warm-up steps):

| options | tokens/s | MFU | step | peak memory |
|---|---:|---:|---:|---:|
| (defaults: micro-batch 8) | 53,019 | 32.9% | 308 ms | 41.6 GiB |
| --compile | 64,887 | 40.2% | 248 ms | 31.9 GiB |
| --compile --micro-batch 16 | 72,933 | 45.2% | 447 ms | 51.3 GiB |
| --activation-checkpointing --micro-batch 16 | 46,504 | 28.8% | 701 ms | 26.7 GiB |

(MFU counts model FLOPs: with activation checkpointing the GPU also recomputes the forward pass, ~1/3 more work.)

Runs on a GPU machine with torch, transformers, deepspeed, numpy, pyarrow and pyyaml and this repository on
PYTHONPATH (the README's GPU section gives the exact command used on the lent H100, deepspeed carried as a wheel).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import statistics
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/trait_train_mfu", help="model config and training output go here")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16, help="attention heads (head_dim = hidden / heads = 128)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: heads, i.e. no GQA)")
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--peak", type=float, default=None, help="peak FLOP/s per device (default: detected)")
    p.add_argument("--export", action="store_true", help="also export the final model (times the HF save)")
    p.add_argument("--model", default=None, help="train this Hugging Face model directory with its own weights "
                   "(e.g. the prepared gemma3-270m) instead of a random Llama of the shape above")
    p.add_argument("--loss-chunk-tokens", type=int, default=0, help="TrainConfig.loss_chunk_tokens: the output "
                   "layer and loss in chunks of N tokens (trainer/loss.py); 0: the model's own")
    return p.parse_args(argv)


def write_model_config(args, path: Path) -> None:
    """config.json of a Llama-shaped model; the weights are drawn at load time (random_init)."""
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                num_key_value_heads=args.kv_heads or args.heads, intermediate_size=args.intermediate,
                vocab_size=args.vocab, max_position_embeddings=max(4096, args.seq_len), rope_theta=10000.0,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2).save_pretrained(path)


def train_config(args, workdir: Path) -> dict:
    global_batch = args.micro_batch * args.grad_accum  # one process: world size 1
    steps = args.warmup + args.steps
    return {
        "model": args.model or str(workdir / "model"), "output_dir": str(workdir / "out"), "seed": 0,
        "precision": args.precision, "peak_flops_per_device": args.peak, "log_every": 1,
        "attn_implementation": args.attn, "gradient_checkpointing": args.activation_checkpointing,
        "compile": args.compile, "random_init": args.model is None, "export": args.export,
        "loss_chunk_tokens": args.loss_chunk_tokens,
        "stages": [{"name": "benchmark", "synthetic_data": {"seq_len": args.seq_len},
                    "token_budget": steps * global_batch * args.seq_len, "micro_batch_size": args.micro_batch,
                    "global_batch_size": global_batch, "lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 2,
                    "checkpoint_every": 0}],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import torch

    from trainer.config import TrainConfig
    from trainer.metrics import detect_peak_flops
    from trainer.train import run_training
    from trait.config import from_dict

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    if args.model is None:
        write_model_config(args, workdir / "model")
    config = from_dict(TrainConfig, train_config(args, workdir))
    result = run_training(config, resume="never")
    summary = result["stages"]["benchmark"]
    lines = (workdir / "out" / "benchmark" / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r["event"] == "train"][args.warmup:]
    if not steps:
        print("no timed steps: raise --steps", file=sys.stderr)
        return 1
    tokens_per_step = config.stages[0].tokens_per_step
    seconds = sum(r["step_time_s"] for r in steps)
    tps = len(steps) * tokens_per_step / seconds
    peak = detect_peak_flops(args.peak)
    out = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": args.model or "random Llama",
        "shape": {k: getattr(args, k) for k in (("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab")
                                                if args.model is None else ()) + ("seq_len", "micro_batch",
                                                                                  "grad_accum")},
        "options": {"attn": args.attn, "compile": args.compile, "activation_checkpointing":
                    args.activation_checkpointing, "precision": summary["precision"],
                    "loss_chunk_tokens": args.loss_chunk_tokens},
        "matmul_params": summary["matmul_params"], "flops_per_token": summary["flops_per_token"],
        "timed_steps": len(steps), "step_time_s_median": statistics.median(r["step_time_s"] for r in steps),
        "tokens_per_s": tps, "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in steps),
        "peak_flops_per_device": peak,
        "mfu": tps * summary["flops_per_token"] / peak if peak else None,
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # the process, model load included
        "final_loss": steps[-1]["loss"],
    }
    (workdir / "result.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    mfu = f"{out['mfu']:.1%}" if out["mfu"] is not None else "n/a (no known peak; --peak)"
    print(f"\n{out['device']}: {tps:,.0f} tokens/s, MFU {mfu}, step {out['step_time_s_median'] * 1e3:.0f} ms "
          f"(median), {out['matmul_params'] / 1e6:.0f}M matmul params, {out['flops_per_token'] / 1e9:.2f} GFLOP/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
