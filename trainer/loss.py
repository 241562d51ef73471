"""The output layer and next-token loss computed in chunks of tokens (``TrainConfig.loss_chunk_tokens``), with
PyTorch's own ``torch.nn.functional.linear_cross_entropy`` with ``torch.nn.LinearCrossEntropyOptions`` (torch 2.13).

Why: a Hugging Face causal LM computes ``logits = lm_head(hidden)`` for every token, upcasts them to fp32 and
takes the cross-entropy, so a micro-batch of T tokens holds several (T, vocab) fp32 tensors at once (logits,
log-softmax, their gradient). With Gemma 3's 262,144-token vocabulary that is 1 GiB per tensor per 1,024 tokens:
measured on CPU at 2,048 tokens x hidden 640, the head + loss (forward and backward) peaked 8.2 GiB above its
inputs, chunked 512 tokens at a time 1.5 GiB, and took 22 s instead of 24 s (docs/benchmarks.md, issue 20).

How: the model's forward is replaced, on this instance only (the way Liger kernels patch a model for Hugging Face
Trainer), by one that runs the decoder (``model.get_decoder()``), shifts by one token exactly as
``transformers.loss.loss_utils.ForCausalLMLoss`` does (position t predicts label t + 1; label -100 is ignored;
the mean over the counted tokens) and hands hidden states, the output embedding's weight and the targets to
``linear_cross_entropy``, which computes the logits chunk by chunk and the head's gradients during the forward.
DeepSpeed's engine calls the same forward, so its backward hooks and ZeRO-1 are unchanged; the weights, their
names and the exports are the model's own. The returned output has ``loss`` only (no logits).

Why the chunk size is given, not torch's ``"auto"``: for fp32 on CPU torch's heuristic ("aspect_ratio:2") sizes a
chunk so its logits match the input, 1 to 4 tokens for a 262k x 640 head, and the step then re-reads the 640 MiB
weight for every chunk: 51 s instead of 6.4 s for 512 tokens (measured). 512 tokens is 512 MiB of fp32 logits
per chunk.

``check_chunked_loss`` compares the two paths on a few tokens before training (eval mode, no gradients) and
refuses a model whose head is not a plain ``lm_head(last_hidden_state)``: a logit soft-cap (Gemma 2) or a logit
scale would make the chunked loss a different loss.
"""

from __future__ import annotations

import types

from trait.config import ConfigError

IGNORE_INDEX = -100  # Hugging Face's label for "no target here" (ForCausalLMLoss pads the shifted labels with it)


def chunked_causal_lm_loss(model, input_ids, labels, chunk_tokens: int, **decoder_kwargs):
    """Mean next-token cross-entropy of ``model`` on ``input_ids`` (batch, seq) against ``labels`` (batch, seq; the
    model's convention: unshifted, -100 ignored), computed ``chunk_tokens`` tokens at a time; a 0-d tensor."""
    import torch
    import torch.nn.functional as F

    hidden = model.get_decoder()(input_ids=input_ids, **decoder_kwargs).last_hidden_state
    head = model.get_output_embeddings()
    # Position t predicts label t + 1: batch x (seq - 1) targets, as ForCausalLMLoss's shift.
    hidden = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk_tokens)
    return F.linear_cross_entropy(hidden, head.weight, targets, linear_bias=head.bias, ignore_index=IGNORE_INDEX,
                                  options=options)


def _require_linear_cross_entropy() -> None:
    import torch
    import torch.nn.functional as F

    if not hasattr(F, "linear_cross_entropy"):
        raise ConfigError(f"loss_chunk_tokens needs torch.nn.functional.linear_cross_entropy, which torch "
                          f"{torch.__version__} lacks (torch 2.13 has it); upgrade torch or set loss_chunk_tokens: 0")


def use_chunked_loss(model, chunk_tokens: int):
    """Make ``model(input_ids=..., labels=...)`` return its loss through ``chunked_causal_lm_loss``; returns it."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    _require_linear_cross_entropy()
    if chunk_tokens < 1:
        raise ConfigError(f"loss_chunk_tokens must be >= 1 for the chunked loss, got {chunk_tokens}")

    def forward(self, input_ids=None, labels=None, **kwargs):
        if labels is None:
            raise ValueError("the chunked loss computes no logits; call the model with labels")
        return CausalLMOutputWithPast(loss=chunked_causal_lm_loss(self, input_ids, labels, chunk_tokens, **kwargs))

    model.forward = types.MethodType(forward, model)
    return model


def check_chunked_loss(model, vocab_size: int, tokens: int = 16, rtol: float | None = None) -> tuple[float, float]:
    """The model's own loss and the chunked loss on one random sequence of ``tokens`` ids (eval mode, no
    gradients); ConfigError if they differ by more than ``rtol`` (relative; default 1e-4 in fp32, 1e-2 in 16-bit
    precision). Call it before ``use_chunked_loss``."""
    import torch

    _require_linear_cross_entropy()
    weight = model.get_output_embeddings().weight
    if rtol is None:
        rtol = 1e-4 if weight.dtype in (torch.float32, torch.float64) else 1e-2
    ids = torch.randint(0, vocab_size, (1, tokens), device=weight.device,
                        generator=torch.Generator(weight.device).manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            own = model(input_ids=ids, labels=ids).loss.item()
            chunked = chunked_causal_lm_loss(model, ids, ids, max(1, tokens // 4)).item()
    finally:
        model.train(was_training)
    if not abs(own - chunked) <= rtol * abs(own):
        cap = getattr(model.config, "final_logit_softcapping", None)
        why = f"it soft-caps its logits at {cap}" if cap else "its head is not a plain lm_head(last_hidden_state)"
        raise ConfigError(f"loss_chunk_tokens: the chunked loss of this model ({type(model).__name__}) is "
                          f"{chunked:.6f} where its own is {own:.6f} ({why}); set loss_chunk_tokens: 0")
    return own, chunked
