"""Evaluation on lm-evaluation-harness tasks (math benchmarks, ads tasks), training curves and the data map."""
