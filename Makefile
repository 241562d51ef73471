# The README's commands. Every target first runs infra/setup.sh, which installs only what is missing.
.PHONY: setup demo test bench bench-score bench-dsir bench-synth bench-train lint

setup:
	bash infra/setup.sh

# The TRAIT experiment on this machine, end to end: selection, passages, every arm trained and evaluated, the
# ablation table (runs/math_tiny/ablation.md) and the run page (runs/math_tiny/index.html).
demo: setup
	.venv/bin/trait pipeline run --config infra/configs/pipeline/math_tiny.yaml

# Two pytest workers, a test file each at a time (module fixtures such as a vLLM server start once): most tests wait
# on servers, daemons and subprocesses, so a serial run keeps ~0.5 of the 2 cores busy (28.5 min against 18.3 min).
test: setup
	.venv/bin/python -m pytest -n 2 --dist loadfile

bench: bench-score bench-dsir bench-synth bench-train

bench-score: setup
	.venv/bin/python -m benchmarks.score_throughput

bench-dsir: setup
	.venv/bin/python -m benchmarks.dsir_throughput

bench-synth: setup
	.venv/bin/python -m benchmarks.synth_throughput

bench-train: setup
	.venv/bin/python -m benchmarks.train_throughput

lint: setup
	.venv/bin/ruff check .
