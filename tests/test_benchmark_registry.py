"""One registry of benchmark test files (trait.benchmarks): eval, decontamination and the seed guard each read every
file in it, so a file cannot be evaluated yet left out of decontamination (AGIEval SAT-math was)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval.math_tasks import DOC_BUILDERS, benchmark_path
from synth.problem_sets import TestSplitError, check_not_test_split
from trait.benchmarks import BENCHMARKS, EVAL_FILES, OTHER_TEST_COPIES, TEST_FILES
from trait.decontam import DecontamConfig

from .conftest import REPO, SHARED_DATA


class _TaskLoader(yaml.SafeLoader):
    """lm-eval's task YAML: ``!function`` tags are read as nothing."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def evaluated_benchmarks() -> dict[str, str]:
    """Benchmark name -> the task that evaluates it, from eval/tasks/math/*.yaml (``dataset_kwargs.benchmark``)."""
    found = {}
    for path in sorted((REPO / "eval" / "tasks" / "math").glob("trait_*.yaml")):
        task = yaml.load(path.read_text(), Loader=_TaskLoader)
        benchmark = (task.get("dataset_kwargs") or {}).get("benchmark")
        if benchmark:
            found[benchmark] = task["task"]
    return found


@pytest.mark.parametrize("name", sorted(EVAL_FILES))
def test_every_registry_file_reaches_every_consumer(name):
    spec = EVAL_FILES[name]
    assert (SHARED_DATA / spec.path).is_file()
    decontaminated = {f.path for files in DecontamConfig(shared_data=str(SHARED_DATA)).sources().values()
                      for f in files}
    assert str(SHARED_DATA / spec.path) in decontaminated, "decontamination does not check it by default"
    assert name in evaluated_benchmarks(), "no eval task reads it"
    assert name in DOC_BUILDERS and benchmark_path(name, SHARED_DATA) == SHARED_DATA / spec.path
    with pytest.raises(TestSplitError, match="cannot seed synthetic passages"):
        check_not_test_split(spec.path)


def test_eval_reads_only_registry_files():
    assert set(evaluated_benchmarks()) == set(DOC_BUILDERS) == set(EVAL_FILES)
    assert DecontamConfig().benchmarks == list(BENCHMARKS)


@pytest.mark.parametrize("path", OTHER_TEST_COPIES)
def test_other_copies_of_test_problems_are_refused_as_seeds(path):
    assert (SHARED_DATA / path).is_file() and path in TEST_FILES
    with pytest.raises(TestSplitError, match="it is a benchmark evaluation file"):
        check_not_test_split(path)
    assert not any(part.startswith("test") for part in Path(path).parts)  # the file name alone would not say so
