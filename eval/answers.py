"""Final answers of the math benchmarks: extraction from a model's output, and equivalence with the gold answer.

Every task in ``eval/tasks/math`` scores through this module. An answer has a *kind*:

- ``number``: GSM8K, SVAMP, ASDiv, MAWPS and TabMWP's numeric answers ("1,234", "$18.50", "3/4", "40%").
- ``math``: MATH's LaTeX answers ("\\frac{\\sqrt{3}}{2}", "[2,5)", "(1,-2)").
- ``choice``: an option letter A-E (MathQA, MMLU-STEM, SAT-math).
- ``text``: words (TabMWP's and ASDiv's non-numeric answers: "yes", "Champ", "3:30 p.m.").

Two extractions, reported side by side (lm-eval filters ``strict-match`` and ``flexible-extract``):

- *strict* takes only the form the few-shot prompt teaches: "The answer is X" (GSM8K-style prompts), "Final
  Answer: The final answer is X. I hope it is correct." (Minerva MATH), "answer is (X)" (multiple choice).
- *flexible* is math-evaluation-harness's cascade: the strict form, else the last ``\\boxed{...}`` (nested braces
  kept), else "The answer is X", else the last number; for choices the last "answer: X" or "(X)".

Equivalence (``answers_equal``): numbers compare as numbers (whole numbers exactly, others within the relative
tolerance 1e-4 of the harness's ``math_equal``; thousands separators, "$", units after the number and "%"
ignored; "3/4" equals 0.75); MATH answers first by lm-eval's Minerva normalisation and sympy equivalence
(``is_equiv``), then as numbers, then by math-verify (``trait.answer_match.math_equal``, the one math-verify matcher of
the project); text by words, case-insensitively.
Each verdict is True or False, so every per-sample score is 0 or 1.
"""

from __future__ import annotations

import math
import re

from lm_eval.tasks.minerva_math.utils import (
    get_unnormalized_answer,
    is_equiv,
    last_boxed_only_string,
    normalize_final_answer,
)

from trait.answer_match import choice_letter, math_equal, normalise_label

ANSWER_KINDS = ("number", "math", "choice", "text")
# A number as written in prose: sign, "$", thousands groups or plain digits, decimals, a "/d" fraction, "%".
_NUMBER = re.compile(r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?\s?%?|-?\$?\.\d+%?")
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)
# math-evaluation-harness's multiple-choice form, made case-insensitive and held to a whole letter ("answer is a
# prime" names no option); "choice is (B)" counts as well.
_CHOICE_IS = re.compile(r"(?:answer|choice) is:?\s*\(?([A-E])\)?(?![\w])", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"\(([A-E])\)")
_REL_TOL = 1e-4  # math-evaluation-harness grader.numeric_equal


def check_kind(kind: str) -> str:
    if kind not in ANSWER_KINDS:
        raise ValueError(f"answer kind {kind!r} is not one of {', '.join(ANSWER_KINDS)}")
    return kind


def parse_number(text: str | None) -> float | None:
    """The value of a number as written ("1,234.5", "$18", "-3/4", "40%" -> 40.0); None for anything else."""
    if text is None:
        return None
    text = text.strip().rstrip(".").replace("$", "").replace(",", "").replace(" ", "").removesuffix("%")
    try:
        if text.count("/") == 1:
            top, bottom = text.split("/")
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def last_boxed(output: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x``), nested braces kept."""
    boxed = last_boxed_only_string(output)
    if boxed is None:
        return None
    for opening in ("\\boxed{", "\\fbox{"):
        if boxed.startswith(opening):
            return boxed[len(opening):-1]
    return boxed.removeprefix("\\boxed ")


def _after_answer_is(output: str) -> str | None:
    """The rest of the line after the last "answer is", without a trailing full stop."""
    found = list(_ANSWER_IS.finditer(output))
    if not found:
        return None
    rest = output[found[-1].end():].lstrip(" :").split("\n", 1)[0].strip()
    return rest.removesuffix(".").strip() or None


def _first_number(text: str | None) -> str | None:
    if not text:
        return None
    if text.lstrip("$ ").startswith("\\"):  # "The answer is $\frac{3}{4}$": a formula, compared by math-verify
        return text
    found = _NUMBER.search(text)
    return found.group(0).strip() if found else None


def _last_number(output: str) -> str | None:
    found = _NUMBER.findall(output)
    return found[-1].strip() if found else None


def strict_answer(kind: str, output: str) -> str | None:
    """The answer in the form the few-shot prompt teaches, or None when the output has none."""
    kind = check_kind(kind)
    if kind == "math":
        answer = get_unnormalized_answer(output)
        return None if answer == "[invalidanswer]" else answer
    if kind == "choice":
        found = _CHOICE_IS.search(output.split("Problem:", 1)[0])
        return found.group(1).upper() if found else None
    rest = _after_answer_is(output)
    return _first_number(rest) if kind == "number" else rest


def flexible_answer(kind: str, output: str) -> str | None:
    """The strict answer, else math-evaluation-harness's fallbacks (see the module docstring); None if none."""
    strict = strict_answer(kind, output)
    if strict is not None:
        return strict
    if kind == "choice":
        letter = choice_letter(output, leading=False)
        letters = _PAREN_LETTER.findall(output)
        return letter or (letters[-1] if letters else None)
    boxed = last_boxed(output)
    if boxed is not None:
        return boxed
    if kind == "text":
        return None
    rest = _after_answer_is(output)
    if kind == "math" and rest:
        return rest
    return _first_number(rest) or _last_number(output)


def numbers_equal(gold: float, answer: float) -> bool:
    """Two whole numbers must be equal (70001 is not 70000, though the harness's tolerance lets it pass); otherwise
    within the harness's relative tolerance (0.3333 equals 1/3, 0.4 equals 2/5)."""
    if gold.is_integer() and answer.is_integer():
        return gold == answer
    return math.isclose(gold, answer, rel_tol=_REL_TOL, abs_tol=1e-9)


def _number_values(text: str) -> list[float]:
    """What a written number may stand for: "40%" is 40 or 0.4 (the gold may state either), "40" is 40."""
    value = parse_number(text)
    if value is None:
        return []
    return [value, value / 100] if text.strip().rstrip(".").endswith("%") else [value]


def answers_equal(kind: str, gold: str, answer: str | None) -> bool:
    """Does an extracted answer match the gold answer? No answer (None or blank) is never a match."""
    kind = check_kind(kind)
    if answer is None or not answer.strip():
        return False
    if kind == "choice":
        return answer.strip().upper() == gold.strip().upper()
    if kind == "math" and is_equiv(normalize_final_answer(answer), gold):
        return True
    gold_values, values = _number_values(gold), _number_values(answer)
    if gold_values and values:
        return any(numbers_equal(g, v) for g in gold_values for v in values)
    if kind == "text":
        return normalise_label(answer) == normalise_label(gold)
    return math_equal(gold, answer.strip().strip("$").strip())
