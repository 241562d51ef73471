"""PassageValidator: answers (math-verify, MMLU letters, labels), length bounds, truncation, flag vs drop,
near-duplicate removal (trait.minhash) and decontamination against GSM8K's test split (trait.decontam)."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

import pytest

from synth.passage import parse_failure_summary, parse_output, without_enlightenment
from synth.prompts import PromptProblem, render_passage_prompt
from synth.validate import PassageValidator, ValidationConfig
from trait.answer_match import answer_matches, choice_letter, resolve_match
from trait.config import ConfigError, from_dict
from trait.decontam import DecontamConfig

from .conftest import SHARED_DATA
from .support.vllm import needs_vllm

FILLER = ("We read the problem carefully, name the quantities it gives, and write each step so that a student "
          "can follow the argument from the facts to the result.")


@dataclass(frozen=True)
class Problem:
    task: str
    text: str
    answer: str | None


def _output(answers, paragraphs=None, enlightenment=None) -> str:
    paragraphs = paragraphs or [f"{FILLER} Step {i} settles problem {i}." for i in range(1, len(answers) + 1)]
    return json.dumps({"problems": [{"index": i, "paragraph": p, "final_answer": a}
                                    for i, (p, a) in enumerate(zip(paragraphs, answers), start=1)],
                       "enlightenment": enlightenment or f"Both problems share one idea. {FILLER}"})


def _validator(**overrides) -> PassageValidator:
    settings = {"decontaminate": False, "deduplicate": False, "min_words": 20, **overrides}
    return PassageValidator(from_dict(ValidationConfig, settings))


MATH = [Problem("math", "What is 1/2 as a fraction?", "\\frac{1}{2}"), Problem("gsm8k", "How many?", "1000")]


@pytest.mark.parametrize("answers, reason", [
    (["\\boxed{1/2}", "1,000"], None),  # 1/2 = 0.5 = \frac{1}{2}; "1,000" = 1000
    (["0.5", "$1,000"], None),
    (["0.25", "1000"], "wrong_answer"),
    (["\\boxed{1/2}", "999"], "wrong_answer"),
])
def test_math_answers_with_math_verify(answers, reason):
    verdict = _validator().check(_output(answers), MATH, "json")
    assert verdict.reason == reason, verdict.detail
    assert verdict.answer_checks == ((True, True) if reason is None else tuple(a in ("\\boxed{1/2}", "0.5", "1,000",
                                                                               "$1,000", "1000") for a in answers))


@pytest.mark.parametrize("reference, stated, expected", [
    ("15\\pi", "\\boxed{15\\pi}", True),  # a bare LaTeX reference is read as LaTeX, not as the number 15
    ("15\\pi", "15", False),
    ("\\frac 18", "0.125", True),
    ("11,\\!880", "11880", True),
    ("5:6", "\\frac{5}{6}", True),
    ("72", "72 clips", True),
    ("72", "73 clips", False),
    ("180\\text{ miles}", "180", True),  # a unit in \text{} is not prose
    ("\\$32", "32", True),
])
def test_math_answer_forms(reference, stated, expected):
    assert resolve_match("auto", reference) == "math"
    assert answer_matches("auto", reference, stated) is expected


def test_math_answer_found_in_paragraph_when_not_stated():
    paragraphs = [f"{FILLER} So the value is $\\boxed{{\\frac{{1}}{{2}}}}$.", f"{FILLER} In total 1,000 items."]
    verdict = _validator().check(_output(["", ""], paragraphs), MATH, "json")
    assert verdict.reason is None and verdict.answer_checks == (True, True)


def test_math_verify_off_the_main_thread():
    seen = []
    worker = threading.Thread(target=lambda: seen.append((answer_matches("math", "0.5", "\\boxed{1/2}"),
                                                          answer_matches("math", "0.5", "0.75"))))
    worker.start()
    worker.join()
    assert seen == [(True, False)]


def test_mmlu_letter_match():
    problems = [Problem("mmlu", "Find all c in Z_3 ...", "B"), Problem("gsm8k", "How many?", "18")]
    validator = _validator()
    assert validator.check(_output(["(B) 1", "18"]), problems, "json").answer_checks == (True, True)
    assert validator.check(_output(["B.", "$18"]), problems, "json").reason is None
    wrong = validator.check(_output(["C", "18"]), problems, "json")
    assert (wrong.reason, wrong.answer_checks) == ("wrong_answer", (False, True))
    assert choice_letter("The correct answer is (D) because ...") == "D"
    assert choice_letter("A train leaves at noon; the answer is C.", leading=False) == "C"
    assert resolve_match("auto", "B") == "choice"


def test_label_and_free_text_answers():
    assert resolve_match("auto", "Good") == "none"  # free text: unchecked unless the task says label
    assert resolve_match("auto", None) == "none"
    assert resolve_match("auto", "\\text{Monday}") == "none"  # no digit or formula outside \text{}
    problems = [Problem("qadsm", "Is the ad relevant?", "Good"), Problem("title", "Title?", "Nike Air Max 90")]
    validator = _validator(answer_match={"qadsm": "label"})
    assert validator.check(_output(["good.", "anything"]), problems, "json").answer_checks == (True, None)
    assert validator.check(_output(["Bad", "anything"]), problems, "json").reason == "wrong_answer"
    with pytest.raises(ConfigError, match="answer_match .* each must be one of"):
        from_dict(ValidationConfig, {"answer_match": {"qadsm": "fuzzy"}, "decontaminate": False})


def test_length_bounds_and_short_paragraphs():
    ok = _output(["\\frac12", "1000"])
    words = len(_validator().check(ok, MATH, "json").text.split())
    assert _validator(min_words=words).check(ok, MATH, "json").reason is None
    assert _validator(min_words=words + 1).check(ok, MATH, "json").reason == "too_short"
    assert _validator(max_words=words - 1).check(ok, MATH, "json").reason == "too_long"
    assert _validator(max_chars=100).check(ok, MATH, "json").reason == "too_long"
    short = _output(["1/2", "1000"], paragraphs=[f"{FILLER} It is 1/2.", "It is 1000."])
    verdict = _validator().check(short, MATH, "json")
    assert (verdict.reason, verdict.detail) == ("paragraph_too_short", "problem 2: 3 words < 5")


@pytest.mark.parametrize("with_statements", [False, True])
def test_without_enlightenment_leaves_the_problem_paragraphs(with_statements):
    enlightenment = f"Both problems share one idea: a part of a whole. {FILLER}"
    verdict = _validator(include_problem_text=with_statements).check(
        _output(["1/2", "1000"], enlightenment=enlightenment), MATH, "json")
    assert verdict.passage.enlightenment == enlightenment and verdict.text.endswith(enlightenment)
    ablated = without_enlightenment(verdict.text, verdict.passage.enlightenment)
    # the passage is its paragraphs (after their statements) joined by blank lines, the enlightenment last
    paragraphs = verdict.text.split("\n\n")
    assert ablated == "\n\n".join(paragraphs[:-1]) and "share one idea" not in ablated
    assert ablated.startswith(MATH[0].text if with_statements else FILLER)
    assert ablated.endswith("Final answer: 1000") and len(ablated) < len(verdict.text) - len(enlightenment)
    assert without_enlightenment("never parsed", None) == "never parsed"  # no enlightenment column: text as is
    with pytest.raises(ValueError, match="does not end with its enlightenment"):
        without_enlightenment(verdict.text + "\n\nA later paragraph.", enlightenment)
    with pytest.raises(ValueError, match="does not end with its enlightenment"):  # only its tail, not the paragraph
        without_enlightenment(verdict.text, enlightenment[len("Both "):])


def test_parse_failure_truncation_and_flag_mode():
    flagging = _validator(on_failure="flag")
    truncated = flagging.check(_output(["1/2", "1000"]), MATH, "json", finish_reason="length")
    assert truncated.reason == "truncated" and flagging.keep(truncated)  # flagged: kept with its reason
    broken = flagging.check('{"problems": [', MATH, "json", finish_reason="stop")
    assert broken.reason == "invalid_json" and not flagging.keep(broken)  # nothing to keep
    dropping = _validator()
    assert not dropping.keep(dropping.check(_output(["0.3", "1000"]), MATH, "json"))
    with pytest.raises(ConfigError, match="on_failure must be 'drop' or 'flag'"):
        from_dict(ValidationConfig, {"on_failure": "keep", "decontaminate": False})
    with pytest.raises(ConfigError, match="did you mean 'min_words'"):
        from_dict(ValidationConfig, {"min_word": 3})


def test_dedup_removes_near_copy_and_counts_reasons():
    base = _output(["1/2", "1000"])
    near_copy = base.replace("Step 2 settles", "Step two settles")
    different = _output(["1/2", "1000"], paragraphs=[
        "Halving a quantity means dividing it by two, so one half written as a fraction is one over two exactly.",
        "Counting a thousand items in groups of one hundred takes ten groups, which gives one thousand in all."],
        enlightenment="Both problems rest on place value and on reading a fraction as a division of two numbers.")
    validator = _validator(deduplicate=True)
    verdicts = validator.check_many(["p2", "p1", "p3", "p4"], [
        (near_copy, MATH, "json", "stop"), (base, MATH, "json", "stop"), (different, MATH, "json", "stop"),
        ("not json", MATH, "json", "stop")])
    assert [v.reason for v in verdicts] == ["near_duplicate", None, None, "invalid_json"]
    assert verdicts[0].detail == "duplicates p1"  # the smallest id of the cluster is kept
    summary = validator.summary()
    assert summary["by_reason"] == {"invalid_json": 1, "near_duplicate": 1}
    assert (summary["outputs"], summary["accepted"], summary["rejected"]) == (4, 2, 2)
    assert (summary["parse_failures"], summary["parse_failure_rate"]) == (1, 0.25)
    assert summary["answer_checks"] == {"matched": 6}


def test_decontamination_rejects_a_quoted_gsm8k_test_question():
    with open(SHARED_DATA / "benchmarks" / "gsm8k" / "test.jsonl", encoding="utf-8") as fh:
        question = json.loads(fh.readline())["question"]  # Janet's ducks
    quoting = _output(["1/2", "1000"], paragraphs=[f"{FILLER} Consider this: {question}", f"{FILLER} It is 1000."])
    clean = _output(["1/2", "1000"])
    config = from_dict(ValidationConfig, {"min_words": 20, "deduplicate": False,
                                          "decontam": {"shared_data": str(SHARED_DATA), "benchmarks": ["gsm8k"]}})
    validator = PassageValidator(config)
    verdicts = validator.check_many(["a", "b"], [(quoting, MATH, "json", "stop"), (clean, MATH, "json", "stop")])
    assert [v.reason for v in verdicts] == ["contaminated", None]
    assert verdicts[0].detail.startswith("gsm8k: 'janet s ducks lay 16 eggs per day")
    assert validator.summary()["by_reason"] == {"contaminated": 1}
    with pytest.raises(Exception, match="unknown benchmark 'gsm8"):
        DecontamConfig(shared_data=str(SHARED_DATA), benchmarks=["gsm8"]).validate()


@needs_vllm
def test_real_vllm_structured_passages_always_parse():
    """The tiny random-weight model through a real vLLM server: the schema (count and indices pinned by
    prefixItems, maxLength so strings must close) makes every output parse, and validation then judges it."""
    from trait.serving.client import ChatRequest, GeneratorClient
    from trait.serving.server import VllmServer

    with open(SHARED_DATA / "benchmarks" / "gsm8k" / "train.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(next(fh)) for _ in range(8)]
    groups = [[Problem("gsm8k", a["question"], a["answer"].split("####")[-1].strip()),
               Problem("gsm8k_socratic", b["question"], None)] for a, b in zip(rows[::2], rows[1::2])]
    prompts = [render_passage_prompt([PromptProblem(p.task, p.text) for p in group], "knowledge_centric",
                                     domain="mathematics", max_paragraph_chars=200, max_answer_chars=20)
               for group in groups]
    sampling = {"temperature": 1.0, "max_tokens": 768, "seed": 0}

    async def generate(server):
        async with GeneratorClient.for_server(server, max_concurrency=4) as client:
            return await client.chat_many([ChatRequest(p.messages, dict(sampling), p.schema) for p in prompts])

    with VllmServer() as server:
        completions = asyncio.run(generate(server))
    assert [c.finish_reason for c in completions] == ["stop"] * 4
    assert parse_failure_summary(parse_output(c.text, 2, "json") for c in completions)["parse_failures"] == 0
    validator = PassageValidator(from_dict(ValidationConfig, {"decontaminate": False, "min_words": 1,
                                                               "min_paragraph_words": 1}))
    verdicts = validator.check_many([str(i) for i in range(4)],
                                    [(c.text, g, "json", c.finish_reason) for c, g in zip(completions, groups)])
    # Random weights cannot solve GSM8K: each passage's first answer is checked and wrong.
    assert [(v.reason, v.answer_checks[0]) for v in verdicts] == [("wrong_answer", False)] * 4
