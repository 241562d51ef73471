# The README's commands. Every target first runs infra/setup.sh, which installs only what is missing.
.PHONY: setup demo test bench lint

setup:
	bash infra/setup.sh

demo: setup
	.venv/bin/trait demo

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python -m benchmarks.score_throughput

lint: setup
	.venv/bin/ruff check .
