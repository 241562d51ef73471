"""Evaluation on lm-evaluation-harness: the paper's math benchmarks and ads-style tasks as lm-eval tasks read from
local files (``eval/tasks``), the ``trait eval`` runner, training curves and the data map. Never imports pyspark."""
