"""The hooks the math task YAMLs name with ``!function utils.<name>``: lm-eval loads this file by its path, so the
code lives in the importable ``eval.math_tasks`` (and ``eval.answers``), where tests reach it too."""

from eval.math_tasks import (  # noqa: F401
    choice_exemplars,
    flexible_filter,
    gsm8k_exemplars,
    load_benchmark,
    minerva_exemplars,
    process_results,
    strict_filter,
)
