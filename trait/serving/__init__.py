"""Serving a model over the OpenAI API: shared by synth (the generator), annotate and eval (a backend, the judge).

- ``trait.serving.server``: ``VllmServer``, a configured OpenAI-compatible endpoint or a local vLLM server started
  and stopped here (the vLLM engine runs in its own environment and process: nothing here imports vLLM or torch).
- ``trait.serving.client``: ``GeneratorClient``, the async client (bounded concurrency, retries on transient errors).

Light dependencies only: httpx, and numpy/tokenizers/safetensors for the embedded tiny model (``trait.tiny_model``).
"""
