# The README's commands. Every target first runs infra/setup.sh, which installs only what is missing.
.PHONY: setup demo test test-fast docs bench bench-quick bench-env bench-score bench-dsir bench-synth bench-train \
	bench-dedup lint

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

# Benchmarks (docs/benchmarks.md), never part of `make test`. Each prints its tables and its gates (figure, ratio,
# goal, PASS/FAIL: benchmarks/gates.py); `make bench` runs them all (about 1.5 hours) and ends with one summary table,
# also written to runs/bench/summary.json; `make bench-quick` runs a reduced version of each (runs/bench-quick/) as a
# regression check. A benchmark that fails goes on to the next; the summary shows it as FAIL and make exits 1.
BENCHES = score_throughput dsir_throughput synth_throughput train_throughput dedup_agreement embed_throughput \
	prepare_throughput stage_throughput
bench: setup bench-env
	.venv/bin/python -m benchmarks.gates begin --expect $(BENCHES)
	for b in $(BENCHES); do .venv/bin/python -m benchmarks.$$b || echo "bench: $$b failed" >&2; done
	.venv/bin/python -m benchmarks.gates summary

bench-quick: setup bench-env
	.venv/bin/python -m benchmarks.gates begin --quick --expect $(BENCHES)
	for b in $(BENCHES); do .venv/bin/python -m benchmarks.$$b --quick || echo "bench: $$b failed" >&2; done
	.venv/bin/python -m benchmarks.gates summary --quick

# The tools TRAIT is measured against, in their own environment (.venv-bench: datatrove 0.10.1).
bench-env:
	bash infra/setup_bench.sh

bench-score: setup bench-env
	.venv/bin/python -m benchmarks.score_throughput

bench-dsir: setup
	.venv/bin/python -m benchmarks.dsir_throughput

bench-synth: setup
	.venv/bin/python -m benchmarks.synth_throughput

bench-train: setup
	.venv/bin/python -m benchmarks.train_throughput

bench-dedup: setup bench-env
	.venv/bin/python -m benchmarks.dedup_agreement

lint: setup
	.venv/bin/ruff check .

# The config reference at the end of docs/configuration.md, from the config classes (tests/test_docs.py fails when
# it is stale).
docs: setup
	.venv/bin/python -m trait.docs

# The edit loop, under 3 minutes: no server, daemon or Spark session, and no test of more than ~15 s. Left out: the
# slow markers, the test files that start a local Spark session (directly or through the shared dataset fixtures)
# or a server without a marker, two such tests in files that are otherwise fast, and the slowest model-running
# tests (a tiny model through lm-eval, the embedder, ranks in processes; 15-60 s each on the loaded 2-core machine).
# `make test` runs them all.
FAST_MARKERS = not (cluster or train or demo or vllm or slurm or pipeline or science)
FAST_SKIP = baselines classifier compare contract_writers daemon decontaminate dedup dsir eval_run ingest ingest_inputs \
	ingest_property listeners output_guard output_writable packaging parquet_append report score select session \
	synth_server
FAST_DESELECT = test_synth_validate.py::test_real_vllm_structured_passages_always_parse \
	test_cli.py::test_the_chain_through_the_command_line \
	test_eval_bpb.py::test_long_document_is_scored_in_windows \
	test_eval_math_tasks.py::test_simple_evaluate_with_the_tiny_model \
	test_trainer_data.py::test_two_ranks_preparing_at_once_build_once \
	test_trainer_data.py::test_thread_workers_give_the_same_bytes_as_one \
	test_eval_datamap.py::test_sampling_is_seeded_and_reads_every_kind_of_source \
	test_eval_datamap.py::test_datamap_of_real_sources \
	test_eval_agreement.py::test_math_verdicts_agree_with_minerva_math \
	test_synth_embed_cache.py::test_second_run_reads_every_vector_from_disk \
	test_synth_embed_cache.py::test_only_missing_texts_are_embedded_and_repeats_once \
	test_quality_signals.py::test_the_score_job_adds_the_signal_column
test-fast: setup
	.venv/bin/python -m pytest -n 2 -q -m "$(FAST_MARKERS)" $(FAST_SKIP:%=--ignore=tests/test_%.py) \
		$(FAST_DESELECT:%=--deselect tests/%)
