"""Does an answer match a problem's reference answer? The one math-verify matcher of the project.

Synth's passage validation asks it of each paragraph's final answer (``ValidationConfig.answer_match``), and eval's
answer equivalence (``eval.answers``) uses its math-verify comparison and its choice and label readers.

Matches (``MATCHES``): ``math`` compares mathematically with math-verify (``\\boxed{1/2}`` equals ``0.5``,
``1,000`` equals ``1000``); ``choice`` compares a multiple-choice letter (MMLU: "(B)", "B.", "The answer is B");
``label`` compares normalised text (case, white space and punctuation ignored: "Good" equals "good."); ``none``
checks nothing. ``auto`` picks ``none`` for a missing reference, ``choice`` for a single letter A-E, ``math`` when
the reference has a digit, a backslash, ``^`` or ``=``, no word of 3+ letters outside LaTeX commands, and
math-verify parses it; else ``none`` (free text such as a rewritten query cannot be matched exactly). (Not eval's
*answer kinds*, ``eval.answers.ANSWER_KINDS``: the form a benchmark's gold answer takes.)
"""

from __future__ import annotations

import re
import threading
import unicodedata

MATCHES = ("auto", "math", "choice", "label", "none")
_LETTER = re.compile(r"^\W*\(?([A-E])\)?(?:[.):]|\s|$)")
_ANSWER_IS = re.compile(r"answer(?: is|:)?\s*(?:option\s*)?\(?([A-E])\)?\b", re.IGNORECASE)
_BARE_LETTER = re.compile(r"^\(?([A-E])\)?$")
_MATHY = re.compile(r"[\d\\^=]")
_LATEX_COMMAND = re.compile(r"\\text\{[^{}]*\}|\\[A-Za-z]+")  # a \text{...} unit goes with its command
_WORD3 = re.compile(r"[A-Za-z]{3,}")
_TEXT = re.compile(r"\\text\{[^{}]*\}")


def _math_verify_timeouts() -> dict:
    # math-verify bounds its sympy work with signal.alarm, which only the main thread may set; elsewhere it
    # raises ValueError, so off the main thread the caller's own per-request timeout has to bound the work.
    if threading.current_thread() is threading.main_thread():
        return {}
    return {"parsing_timeout": None}


def _is_formula(text: str) -> bool:
    """No word of 3+ letters outside LaTeX commands and \\text{...}: "15\\pi", "1,000", "180\\text{ miles}", "5:6",
    but not "72 clips"."""
    return not _WORD3.search(_LATEX_COMMAND.sub("", text))


def _math_parse(text: str, short: bool = True):
    """math-verify's parse of a short answer or (``short=False``) of a paragraph's prose.

    A bare short formula is parsed as LaTeX first: without delimiters math-verify falls back to plain expressions
    and reads "15\\pi" as 15 and "\\frac 18" wrongly; prose ("72 clips", a paragraph) is left to its extraction."""
    from math_verify import parse  # imported on first use: sympy takes ~1 s to import

    if short and "$" not in text.replace("\\$", "") and "\\boxed" not in text and _is_formula(text):
        parsed = parse(f"${text}$", **_math_verify_timeouts())
        if parsed:
            return parsed
    return parse(text, **_math_verify_timeouts())


def resolve_match(match: str, reference: str | None) -> str:
    """The concrete match for a reference answer: ``auto`` resolved as the module docstring says."""
    if match not in MATCHES:
        raise ValueError(f"answer match {match!r} is not one of {', '.join(MATCHES)}")
    if match != "auto":
        return match
    if reference is None or not reference.strip():
        return "none"
    if _BARE_LETTER.match(reference.strip()):
        return "choice"
    # math-verify reads any word as a product of symbols ("Good" -> G*o^2*d) and pulls the number out of a title
    # ("Nike Air Max 90" -> 90), so a reference counts as math only when it has a digit or formula marks and no
    # word of 3+ letters outside LaTeX commands; auto errs towards unchecked, never towards a wrong rejection.
    if not _MATHY.search(_TEXT.sub("", reference)) or not _is_formula(reference):
        return "none"  # no digit or formula mark outside \text{...} ("\text{Monday}"), or prose
    return "math" if _math_parse(reference) else "none"


def normalise_label(text: str) -> str:
    """NFKC, case-folded, words only, single spaces: "  Good. " -> "good"."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))


def choice_letter(text: str, leading: bool = True) -> str | None:
    """The option letter a final answer names: a leading "B", "(B)", "B." or else the last "answer is B".
    ``leading=False`` for a whole paragraph, whose first word may be the article "A"."""
    text = text.strip()
    found = _LETTER.match(text) if leading else None
    if found:
        return found.group(1)
    stated = _ANSWER_IS.findall(text)
    return stated[-1].upper() if stated else None


def answer_matches(match: str, reference: str | None, final_answer: str | None, paragraph: str = "") -> bool | None:
    """True or False when the answer could be compared, None when ``match`` (after ``auto``) checks nothing.

    The final answer is what the generator stated; when it stated none, the paragraph is searched instead (the
    last boxed or final number for math, "answer is X" for choice). Nothing found counts as a wrong answer."""
    match = resolve_match(match, reference)
    if match == "none" or reference is None:
        return None
    stated = bool(final_answer and final_answer.strip())
    candidate = final_answer if stated else paragraph
    if match == "choice":
        want, got = choice_letter(reference), choice_letter(candidate, leading=stated)
        return want is not None and got == want
    if match == "label":
        return normalise_label(candidate) == normalise_label(reference)
    return math_equal(reference, candidate, short=stated)


def math_equal(reference: str, candidate: str, short: bool = True) -> bool:
    """math-verify's verdict on a candidate against a short reference answer (``\\frac{1}{2}`` equals ``0.5``).

    ``short`` says the candidate is a stated answer, parsed as a formula first; ``short=False`` for prose, which
    math-verify searches for its final answer. Nothing parseable on either side is False."""
    from math_verify import verify

    gold, pred = _math_parse(reference), _math_parse(candidate, short=short)
    if not gold or not pred:
        return False
    timeouts = {"timeout_seconds": None} if _math_verify_timeouts() else {}
    return bool(verify(gold, pred, **timeouts))
