# The README's commands. Every target first runs infra/setup.sh, which installs only what is missing.
.PHONY: setup demo test test-fast docs bench bench-score bench-dsir bench-synth bench-train lint

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

# The config reference at the end of docs/configuration.md, from the config classes (tests/test_docs.py fails when
# it is stale).
docs: setup
	.venv/bin/python -m trait.docs

# The edit loop: no server, daemon or Spark session. Left out: the slow markers, the test files that start a local
# Spark session (directly or through the shared dataset fixtures) or a server without a marker, and two such tests in
# files that are otherwise fast. `make test` runs them all.
FAST_MARKERS = not (cluster or train or demo or vllm or slurm or pipeline or science)
FAST_SKIP = baselines classifier compare contract_writers decontaminate dedup dsir ingest ingest_inputs \
	ingest_property listeners output_guard output_writable packaging parquet_append report score select synth_server
FAST_DESELECT = test_synth_validate.py::test_real_vllm_structured_passages_always_parse \
	test_cli.py::test_the_chain_through_the_command_line
test-fast: setup
	.venv/bin/python -m pytest -n 2 -q -m "$(FAST_MARKERS)" $(FAST_SKIP:%=--ignore=tests/test_%.py) \
		$(FAST_DESELECT:%=--deselect tests/%)
