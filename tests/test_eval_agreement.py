"""Our GSM8K and MATH tasks give the same verdict per sample as lm-eval's own ``gsm8k_cot`` and
``minerva_math_algebra`` scoring, on the same fixed model outputs.

lm-eval's tasks are built from its installed YAMLs (``!function`` hooks resolved, includes merged) with the dataset
replaced by the shared test files, so nothing is downloaded; both sides then run their real filters and
``process_results``. Where our protocol deliberately differs from lm-eval (it follows math-evaluation-harness, or is
more lenient about equal numbers), the cases are listed in ``*_DIFFERENCES`` with both verdicts, and tested.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import lm_eval.tasks
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.tasks.minerva_math.utils import last_boxed_only_string, remove_boxed

from eval.math_tasks import DOC_BUILDERS
from trait.benchmarks import EVAL_FILES

from .conftest import REPO, SHARED_DATA, read_jsonl

LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent
N_DOCS = 25


def lm_eval_task(yaml_path: Path, rows: list[dict]) -> ConfigurableTask:
    """lm-eval's task from its own YAML, reading ``rows`` as its test split."""
    config = load_yaml(yaml_path)
    config["custom_dataset"] = lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
    return ConfigurableTask(config=config)


def reference_and_ours(ours: dict, benchmark: str, reference_yaml: str, task: str) -> tuple:
    """The first N_DOCS test rows of ``benchmark`` (its registry file), lm-eval's task ``reference_yaml`` over
    them, and our ``task``."""
    rows = read_jsonl(SHARED_DATA / EVAL_FILES[benchmark].path, N_DOCS)
    return rows, lm_eval_task(LM_EVAL_TASKS / reference_yaml, rows), ours[task]


@pytest.fixture(scope="module")
def ours() -> dict[str, ConfigurableTask]:
    manager = TaskManager(include_path=str(REPO / "eval" / "tasks"), include_defaults=False)
    return manager.load(["trait_gsm8k", "trait_minerva_math"])["tasks"]


def verdicts(task: ConfigurableTask, doc: dict, output: str) -> dict[str, int]:
    """``{"metric,filter": 0/1}``: the task's filters and process_results on one output, as lm-eval's evaluator."""
    instance = Instance("generate_until", doc, ("", {}), 0, metadata=(task.config.task, 0, 1))
    instance.resps = [output]
    scores = {}
    for ensemble in task._filters:
        ensemble.apply([instance])
        for metric, value in task.process_results(doc, [instance.filtered_resps[ensemble.name]]).items():
            scores[f"{metric},{ensemble.name}"] = int(value)
    return scores


def gsm8k_reference(answer: str) -> str:
    """A GSM8K reference solution as a chain-of-thought answer: no <<calc>> notes, "The answer is X." at the end."""
    work, final = answer.split("####")
    return re.sub(r"<<[^>]*>>", "", work).strip() + f" The answer is {final.strip()}."


def gsm8k_outputs(rows: list[dict], i: int) -> list[str]:
    """Fixed outputs for problem i: its reference, a neighbour's (wrong) reference, awkward forms of the gold,
    a near miss, no answer at all."""
    plain = rows[i]["answer"].split("####")[-1].strip().replace(",", "")
    thousands = f"{int(plain):,}"
    return [gsm8k_reference(rows[i]["answer"]), gsm8k_reference(rows[(i + 1) % len(rows)]["answer"]),
            f"So the total is {thousands}. The answer is {thousands}.", f"The answer is {plain}.",
            f"The answer is {plain} dollars.", f"She makes 9 * 2 = ${plain} every day.", f"It is -{plain}.",
            f"The answer is {int(plain) + 1}.", "I cannot tell from the question.", ""]


# (output, gold, ours {strict, flexible}, lm-eval's {strict, flexible}, why they differ)
GSM8K_DIFFERENCES = [
    ("The answer is 18.00.", "18", (1, 1), (0, 0), "we compare numbers; lm-eval compares strings"),
    ("The answer is $18.", "18", (1, 1), (0, 1), 'our strict form allows "$"; lm-eval\'s regex wants a digit'),
    ("The answer is 17. No, wait: the answer is 18.", "18", (1, 1), (0, 1),
     'strict takes the last "The answer is" (math-evaluation-harness); lm-eval the first'),
    ("The answer is 18. Check: 18 - 3 = 15.", "18", (1, 1), (1, 0),
     'flexible tries "The answer is" before the last number (math-evaluation-harness); lm-eval takes the last number'),
]


@pytest.fixture(scope="module")
def gsm8k_tasks(ours):
    return reference_and_ours(ours, "gsm8k", "gsm8k/gsm8k-cot.yaml", "trait_gsm8k")


def test_gsm8k_verdicts_agree_with_gsm8k_cot(gsm8k_tasks):
    rows, reference, trait_gsm8k = gsm8k_tasks
    their_docs, our_docs = list(reference.test_docs()), list(trait_gsm8k.test_docs())[:N_DOCS]
    correct = 0
    for i, (their_doc, our_doc) in enumerate(zip(their_docs, our_docs, strict=True)):
        assert our_doc["question"] == their_doc["question"]
        for output in gsm8k_outputs(rows, i):
            theirs, mine = verdicts(reference, their_doc, output), verdicts(trait_gsm8k, our_doc, output)
            assert mine == theirs, (output, our_doc["answer"])
            correct += mine["exact_match,strict-match"]
    assert correct == N_DOCS * 4  # the reference and the three awkward forms of the gold answer


@pytest.mark.parametrize(("output", "gold", "ours_expected", "theirs_expected", "why"), GSM8K_DIFFERENCES)
def test_gsm8k_deliberate_differences(gsm8k_tasks, output, gold, ours_expected, theirs_expected, why):
    rows, reference, trait_gsm8k = gsm8k_tasks
    their_doc = {**list(reference.test_docs())[0], "answer": f"#### {gold}"}
    our_doc = {**list(trait_gsm8k.test_docs())[0], "answer": gold}
    keys = ("exact_match,strict-match", "exact_match,flexible-extract")
    assert tuple(verdicts(trait_gsm8k, our_doc, output)[k] for k in keys) == ours_expected, why
    assert tuple(verdicts(reference, their_doc, output)[k] for k in keys) == theirs_expected, why


def minerva(answer: str) -> str:
    return f"Final Answer: The final answer is ${answer}$. I hope it is correct."


def math_outputs(rows: list[dict], i: int) -> list[str]:
    """Fixed outputs for MATH problem i: the reference solution with the Minerva final line (its boxed answer
    as written, so unnormalised), with a neighbour's answer, without the final line, the final line alone, none."""
    boxed = remove_boxed(last_boxed_only_string(rows[i]["solution"]))
    other = remove_boxed(last_boxed_only_string(rows[(i + 1) % len(rows)]["solution"]))
    return [f"{rows[i]['solution']}\n{minerva(boxed)}", f"{rows[i]['solution']}\n{minerva(other)}",
            rows[i]["solution"], minerva(boxed), f"The answer is {boxed}.", "I do not know.", ""]


# Hand-written awkward outputs: (reference solution, output, the strict verdict both must give).
MATH_AWKWARD = [
    (r"So $x=\boxed{\frac{1}{2}}$.", minerva("0.5"), 1),  # a decimal for a fraction
    (r"So $x=\boxed{\frac{1}{2}}$.", minerva(r"\dfrac12"), 1),
    (r"The total is $\boxed{1000}$.", minerva("1,000"), 1),  # thousands separator
    (r"It is $\boxed{10\text{ inches}}$ long.", minerva(r"10\text{ inches}"), 1),  # a unit
    (r"It is $\boxed{10\text{ inches}}$ long.", minerva("10"), 1),
    (r"We get $\boxed{\frac{\sqrt{3}}{2}}$.", r"so $\sin 60^\circ = \boxed{\frac{\sqrt{3}}{2}}$", 0),  # boxed only
    (r"We get $\boxed{\frac{\sqrt{3}}{2}}$.", minerva(r"\frac{\sqrt{3}}{2}"), 1),  # nested braces
    (r"We get $\boxed{\frac{\sqrt{3}}{2}}$.", minerva(r"\frac{\sqrt{2}}{2}"), 0),
    (r"The answer is $\boxed{[2,5)}$.", minerva("[2,5)"), 1),  # an interval sympy cannot parse
    (r"There are $\boxed{12}$ ways.", minerva("12") + "\n\nProblem: 1+1?", 1),
    (r"There are $\boxed{12}$ ways.", "Final Answer: The final answer is 12", 0),  # no closing sentence
]
# (reference solution, output, ours {strict, flexible, math_verify}, lm-eval's {exact_match, math_verify}, why)
MATH_DIFFERENCES = [
    (r"In polar form $\boxed{\left( 3, \frac{\pi}{2} \right)}$.", minerva(r"(3, \pi/2)"), (1, 1, 1), (0, 1),
     "lm-eval's sympy check cannot parse a tuple; ours then asks math-verify about the two final answers"),
]


@pytest.fixture(scope="module")
def math_tasks(ours):
    return reference_and_ours(ours, "math", "minerva_math/minerva_math_algebra.yaml", "trait_minerva_math")


def math_verdicts(reference, trait_math, their_doc, our_doc, output) -> tuple[dict, dict]:
    theirs, mine = verdicts(reference, their_doc, output), verdicts(trait_math, our_doc, output)
    assert set(theirs) == {"exact_match,none", "math_verify,none"}
    assert set(mine) == {"exact_match,strict-match", "exact_match,flexible-extract", "math_verify,flexible-extract"}
    assert mine["exact_match,flexible-extract"] >= mine["exact_match,strict-match"]
    return theirs, mine


def test_math_verdicts_agree_with_minerva_math(math_tasks):
    rows, reference, trait_math = math_tasks
    their_docs, our_docs = list(reference.test_docs()), list(trait_math.test_docs())[:N_DOCS]
    correct = 0
    for i, (their_doc, our_doc) in enumerate(zip(their_docs, our_docs, strict=True)):
        assert (our_doc["problem"], our_doc["answer"]) == (their_doc["problem"], their_doc["answer"])
        for output in math_outputs(rows, i):
            theirs, mine = math_verdicts(reference, trait_math, their_doc, our_doc, output)
            assert mine["exact_match,strict-match"] == theirs["exact_match,none"], (output, our_doc["answer"])
            assert mine["math_verify,flexible-extract"] == theirs["math_verify,none"], (output, our_doc["answer"])
            correct += mine["exact_match,strict-match"]
    assert correct == N_DOCS * 2  # the reference with its final line, and the final line alone


@pytest.mark.parametrize(("solution", "output", "strict"), MATH_AWKWARD)
def test_math_awkward_outputs_agree(math_tasks, solution, output, strict):
    _, reference, trait_math = math_tasks
    row = {"problem": "awkward", "solution": solution}
    their_doc = reference.config.process_docs(datasets.Dataset.from_list([row]))[0]
    our_doc = {**DOC_BUILDERS["math"](row), "target": ""}
    theirs, mine = math_verdicts(reference, trait_math, their_doc, our_doc, output)
    assert mine["exact_match,strict-match"] == theirs["exact_match,none"] == strict
    assert mine["math_verify,flexible-extract"] == theirs["math_verify,none"]


@pytest.mark.parametrize(("solution", "output", "ours_expected", "theirs_expected", "why"), MATH_DIFFERENCES)
def test_math_deliberate_differences(math_tasks, solution, output, ours_expected, theirs_expected, why):
    _, reference, trait_math = math_tasks
    row = {"problem": "differs", "solution": solution}
    their_doc = reference.config.process_docs(datasets.Dataset.from_list([row]))[0]
    theirs, mine = math_verdicts(reference, trait_math, their_doc, {**DOC_BUILDERS["math"](row), "target": ""}, output)
    assert (mine["exact_match,strict-match"], mine["exact_match,flexible-extract"],
            mine["math_verify,flexible-extract"]) == ours_expected, why
    assert (theirs["exact_match,none"], theirs["math_verify,none"]) == theirs_expected, why
