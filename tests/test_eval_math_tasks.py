"""The nine math benchmarks load as lm-eval tasks from eval/tasks with their full test sets and the protocol's
few-shot prompts, and a real lm-eval run (hf backend, the tiny random model) reports every metric, 0/1 per sample."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager

REPO = Path(__file__).resolve().parents[1]
# task: (test-set size, shots, the text that opens each exemplar and the question)
NINE = {
    "trait_gsm8k": (1319, 8, "Question: "),
    "trait_minerva_math": (5000, 4, "Problem:\n"),
    "trait_svamp": (1000, 8, "Question: "),
    "trait_asdiv": (2215, 8, "Question: "),
    "trait_mawps": (2065, 8, "Question: "),
    "trait_tabmwp": (1000, 8, "Question: "),
    "trait_mathqa": (1000, 4, "Problem:\n"),
    "trait_mmlu_stem": (3018, 4, "Problem:\n"),
    "trait_sat_math": (32, 4, "Problem:\n"),
}
SEPARATE = {"trait_minerva_math500": (500, 4, "Problem:\n"), "trait_sat_math_agieval": (220, 4, "Problem:\n")}


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    return TaskManager(include_path=str(REPO / "eval" / "tasks"), include_defaults=False)


@pytest.fixture(scope="module")
def tasks(task_manager):
    return task_manager.load([*NINE, *SEPARATE])["tasks"]


def test_group_holds_the_nine(task_manager):
    loaded = task_manager.load(["trait_math_all"])
    assert set(loaded["tasks"]) == set(NINE)
    assert loaded["groups"]["trait_math_all"].child_names == list(NINE)


@pytest.mark.parametrize("name", [*NINE, *SEPARATE])
def test_task_sizes_and_prompts(tasks, name):
    size, shots, opening = {**NINE, **SEPARATE}[name]
    task = tasks[name]
    docs = list(task.test_docs())
    assert len(docs) == size
    assert task.config.metadata["version"] >= 1.0
    assert task.config.num_fewshot == shots
    exemplars = list(task.fewshot_docs())
    assert len(exemplars) == shots
    test_questions = {d["question"] for d in docs}
    assert not any(e.get("question", e.get("problem")) in test_questions for e in exemplars)  # no test item as shot
    for doc in (docs[0], docs[-1]):
        prompt = task.fewshot_context(doc, num_fewshot=shots)
        assert prompt.count(opening) == shots + 1
        assert all(e["target"] in prompt for e in exemplars)
        assert prompt.endswith(task.doc_to_text(doc))
        assert doc["kind"] in ("number", "math", "choice", "text") and doc["answer"].strip()
    assert [f.name for f in task._filters] == ["strict-match", "flexible-extract"]


def test_choice_prompts_follow_the_harness(tasks):
    prompt = tasks["trait_sat_math"].fewshot_context(list(tasks["trait_sat_math"].test_docs())[0], num_fewshot=4)
    assert "What of the following is the right choice? Explain your answer.\n(A) [-5,-2), (B) [2,5)" in prompt
    assert "Final Answer: The final answer is (B).\n\n\nProblem:\n" in prompt
    assert prompt.endswith("(A) $f(-6)=0$ (B) $f(6)=-6$ (C) $f(-6)=6$ (D) $f(0)=-6$\nSolution:")


def test_simple_evaluate_with_the_tiny_model(task_manager, tiny_model):
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model},dtype=float32", tasks=["trait_math_all"],
        task_manager=task_manager, device="cpu", limit=2, gen_kwargs={"max_gen_toks": 8}, log_samples=True,
        bootstrap_iters=0)
    for name in NINE:
        metrics = results["results"][name]
        assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(metrics), name
        samples = results["samples"][name]
        assert len(samples) == 2 * 2  # two documents under each of the two filters
        assert all(s["exact_match"] in (0, 1) for s in samples)
        assert {s["filter"] for s in samples} == {"strict-match", "flexible-extract"}
    math_verify = [s["math_verify"] for s in results["samples"]["trait_minerva_math"] if "math_verify" in s]
    assert len(math_verify) == 2 and set(math_verify) <= {0, 1}
    assert "math_verify,flexible-extract" in results["results"]["trait_minerva_math"]
    assert "exact_match,strict-match" in results["results"]["trait_math_all"]
