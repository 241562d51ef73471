"""Task-oriented synthetic passages from an OpenAI-compatible (vLLM) generator over HTTP. Never imports torch."""
