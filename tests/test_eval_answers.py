"""Answer extraction and equivalence of the math tasks (eval.answers) on awkward outputs, and bad benchmark files."""

from __future__ import annotations

import json

import pytest

from eval.answers import answers_equal, flexible_answer, parse_number, strict_answer
from eval.math_tasks import read_benchmark
from trait.benchmarks import BenchmarkError


@pytest.mark.parametrize(("output", "strict", "flexible"), [
    ("She makes 9 * 2 = 18. The answer is 18.", "18", "18"),
    ("The total is 1,234,567 dollars. The answer is 1,234,567.", "1,234,567", "1,234,567"),
    ("The answer is $1,234.50.", "$1,234.50", "$1,234.50"),
    ("The answer is 18 dollars per week.", "18", "18"),  # a unit after the number
    ("The answer is: -3.", "-3", "-3"),
    ("The answer is 3/4.", "3/4", "3/4"),
    ("He pays 40% of it. The answer is 40%.", "40%", "40%"),
    ("The answer is $\\frac{3}{4}$.", "$\\frac{3}{4}$", "$\\frac{3}{4}$"),  # a formula is kept whole
    ("So 5 + 4 = 9 toys in all.", None, "9"),  # no stated answer: the last number
    ("Thus the result is $\\boxed{1,000}$ and 3 more steps.", None, "1,000"),  # a box before the last number
    ("The answer is seventeen.", None, None),  # a number in words is no number
    ("I do not know.", None, None),
    ("", None, None),
])
def test_number_extraction(output, strict, flexible):
    assert strict_answer("number", output) == strict
    assert flexible_answer("number", output) == flexible


@pytest.mark.parametrize(("gold", "answer", "equal"), [
    ("1234567", "1,234,567", True),  # thousands separators
    ("2,125", "2125", True),
    ("18", "$18", True),
    ("18", "18.00", True),
    ("0.75", "3/4", True),  # a fraction for a decimal
    ("3/10", "0.3", True),
    ("0.75", "\\frac{3}{4}", True),  # a LaTeX fraction goes to math-verify
    ("40%", "0.4", True),  # a percentage as a share
    ("40%", "40", True),
    ("0.333", "1/3", False),  # 1/3 is 1.0e-3 (relative) off 0.333: outside the tolerance of 1e-4
    ("0.3333", "1/3", True),  # 1.0e-4 off: inside
    ("70000", "70001", False),  # whole numbers compare exactly
    ("18", "17", False),
    ("18", None, False),  # no answer at all
    ("18", "  ", False),
])
def test_number_equivalence(gold, answer, equal):
    assert answers_equal("number", gold, answer) is equal


@pytest.mark.parametrize(("output", "strict", "flexible"), [
    ("so $x = \\boxed{\\frac{\\sqrt{3}}{2}}$.\nFinal Answer: The final answer is $\\frac{\\sqrt{3}}{2}$. "
     "I hope it is correct.", "$\\frac{\\sqrt{3}}{2}$", "$\\frac{\\sqrt{3}}{2}$"),
    ("Hence $\\boxed{\\left\\{ \\frac{1}{2}, \\sqrt{\\frac{a}{b}} \\right\\}}$ is the set.", None,
     "\\left\\{ \\frac{1}{2}, \\sqrt{\\frac{a}{b}} \\right\\}"),  # nested braces kept whole
    ("first \\boxed{1} then \\boxed{2}", None, "2"),  # the last box
    ("The answer is $(1, -2)$.", None, "$(1, -2)$"),
    ("so x is 5 and y is 7", None, "7"),
    ("no idea", None, None),
])
def test_math_extraction(output, strict, flexible):
    assert strict_answer("math", output) == strict
    assert flexible_answer("math", output) == flexible


@pytest.mark.parametrize(("gold", "answer", "equal"), [
    ("\\frac{1}{2}", "0.5", True),  # decimal for a fraction (sympy)
    ("\\frac{1}{2}", "$\\dfrac12$", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("1000", "1,000", True),
    ("10", "10\\text{ inches}", True),  # a unit
    ("\\left(3,\\frac{\\pi}{2}\\right)", "(3, \\pi/2)", True),  # a tuple: math-verify
    ("[2,5)", "[2,5)", True),
    ("[2,5)", "(2,5)", False),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("\\frac{1}{2}", None, False),
])
def test_math_equivalence(gold, answer, equal):
    assert answers_equal("math", gold, answer) is equal


# A parallel table to test_math_extraction's (output, strict answer, flexible answer), for multiple choice.
@pytest.mark.parametrize(("output", "strict", "flexible"), [
    ("Final Answer: The final answer is (B).", "B", "B"),
    ("so the answer is c", "C", "C"),
    ("The choice is (D). \n\nProblem: next one, the answer is (A)", "D", "D"),  # text after "Problem:" ignored
    ("The answer is a prime number, so (C).", "A", "A"),  # as the harness: the article reads as option A
    ("The answer is 12, which is option (C).", None, "C"),
    ("Answer: E", None, "E"),
    ("I think it is 12.", None, None),
])
def test_choice_extraction(output, strict, flexible):
    assert strict_answer("choice", output) == strict
    assert flexible_answer("choice", output) == flexible
    assert answers_equal("choice", flexible or "B", flexible) is (flexible is not None)


@pytest.mark.parametrize(("output", "gold", "equal"), [
    ("The answer is Spanish club.", "Spanish club", True),
    ("The answer is yes.", "yes", True),
    ("The answer is 3:30 P.M.", "3:30 p.m.", True),
    ("The answer is no.", "yes", False),
    ("Spanish club, I think", "Spanish club", False),  # no stated answer: text has no fallback
])
def test_text_answers(output, gold, equal):
    assert answers_equal("text", gold, flexible_answer("text", output)) is equal


def test_parse_number_and_unknown_kind():
    assert parse_number("$1,234.50") == 1234.5
    assert parse_number("-3/4") == -0.75
    assert parse_number("1/0") is None
    assert parse_number("\\frac{1}{2}") is None
    with pytest.raises(ValueError, match="not one of number, math, choice, text"):
        strict_answer("numeric", "The answer is 1.")


def test_bad_benchmark_files_are_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIT_SHARED_DATA", str(tmp_path))
    with pytest.raises(BenchmarkError, match=r"gsm8k/test.jsonl not found; set TRAIT_SHARED_DATA"):
        read_benchmark("gsm8k")
    path = tmp_path / "benchmarks" / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True)
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    path.write_text(f"{good}\n{{\"question\": \"cut off\n{good}\n")
    with pytest.raises(BenchmarkError, match=r"test.jsonl:2: not a JSON line"):
        read_benchmark("gsm8k")
    path.write_text(f"{good}\n\n{json.dumps({'question': 'no answer'})}\n")
    with pytest.raises(BenchmarkError, match=r"test.jsonl:3: cannot read a gsm8k problem .*'answer'"):
        read_benchmark("gsm8k")
    path.write_text(f"{good}\n\n{good}\n")  # a blank line is no record
    assert [d["answer"] for d in read_benchmark("gsm8k")] == ["2", "2"]
    with pytest.raises(BenchmarkError, match="unknown math benchmark 'gsm9k'"):
        read_benchmark("gsm9k")
