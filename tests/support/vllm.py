"""Where the tests find the vLLM environment: where a server started with the product's defaults looks for it."""

from __future__ import annotations

import pytest

from trait.serving.server import REPO_ROOT, ServerConfig

VLLM_PYTHON = REPO_ROOT / ServerConfig().vllm_python
# The one skip condition of every test that starts a real vLLM server.
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="run infra/vllm/setup_vllm_cpu.sh first")
