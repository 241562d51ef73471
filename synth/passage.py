"""Parse a generator's output into problem paragraphs and an enlightenment paragraph, check its shape, and
assemble the passage text from the parts.

Two output formats (``synth.prompts.OUTPUT_FORMATS``): ``json``, the structured output {"problems": [{"index",
"paragraph", "final_answer"}], "enlightenment"} that vLLM constrains to the schema; and ``text``, the fallback
layout for endpoints without structured outputs (``### Problem 1`` ... ``Final answer: ...`` ... ``###
Enlightenment``). Either way a failure has one reason from ``PARSE_REASONS``, so the parse-failure rate can be
counted per reason (``parse_failure_summary``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

PARSE_REASONS = (
    "empty_output",  # nothing but white space came back
    "invalid_json",  # json format: not one JSON object
    "schema_mismatch",  # json format: keys or types differ from the schema
    "wrong_problem_count",  # a different number of problem paragraphs than problems asked about
    "bad_problem_index",  # problem indices are not 1..n, each once
    "empty_paragraph",  # a problem paragraph is missing or blank
    "missing_enlightenment",  # no enlightenment paragraph, or a blank one
)
_HEADING = re.compile(r"^[ \t]*#{2,4}[ \t]*(problem[ \t]*(\d+)|enlightenment)\b[^\n]*$", re.IGNORECASE | re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls except tab and newline
_FINAL_ANSWER = re.compile(r"^[ \t]*\**final answer\**[ \t]*:\**[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class ParsedPassage:
    """The parts of one passage: a paragraph and a final answer (None: not stated) per problem, in problem order,
    and the enlightenment paragraph. Strings are stripped of surrounding white space."""

    paragraphs: tuple[str, ...]
    final_answers: tuple[str | None, ...]
    enlightenment: str

    def text(self, problem_texts: list[str] | None = None) -> str:
        """The passage: each problem's paragraph (after its statement when ``problem_texts`` is given), then the
        enlightenment paragraph, separated by blank lines. A stated final answer is appended to its paragraph as a
        "Final answer: X" line unless the paragraph's last words already contain it (a reader sees it once)."""
        parts = []
        for i, (paragraph, answer) in enumerate(zip(self.paragraphs, self.final_answers)):
            if problem_texts is not None:
                parts.append(problem_texts[i].strip())
            if answer and answer not in paragraph[-max(len(answer) + 40, 80):]:
                paragraph = f"{paragraph}\nFinal answer: {answer}"
            parts.append(paragraph)
        parts.append(self.enlightenment)
        return "\n\n".join(parts)


def without_enlightenment(text: str, enlightenment: str | None) -> str:
    """``text`` without its closing enlightenment paragraph: the passage of the paper's "no enlightenment" ablation.

    ``text`` is a generated row's passage (``ParsedPassage.text``: paragraphs, then the enlightenment, separated by
    blank lines) and ``enlightenment`` its ``enlightenment`` column. A row whose output never parsed has none (null)
    and keeps its text. Raises ValueError when ``text`` does not end with the enlightenment paragraph (a row
    assembled some other way), rather than returning a passage that still holds it.
    """
    if not enlightenment:
        return text
    body = text[:len(text) - len(enlightenment)] if text.endswith(enlightenment) else None
    if body is None or (body and not body.endswith("\n\n")):
        raise ValueError(f"the passage does not end with its enlightenment paragraph {enlightenment[:60]!r}")
    return body.rstrip()


@dataclass(frozen=True)
class ParseResult:
    """A parsed passage, or the reason (one of ``PARSE_REASONS``) and a short detail of why not."""

    passage: ParsedPassage | None
    reason: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.passage is not None


def _fail(reason: str, detail: str) -> ParseResult:
    return ParseResult(None, reason, detail)


def _check_parts(count: int, items: list[tuple[int, str, str | None]], enlightenment: str | None) -> ParseResult:
    """Shared shape check: ``items`` are (index, paragraph, final answer) as found, in output order."""
    if len(items) != count:
        return _fail("wrong_problem_count", f"expected {count} problem paragraphs, found {len(items)}")
    indices = sorted(index for index, _, _ in items)
    if indices != list(range(1, count + 1)):
        return _fail("bad_problem_index", f"problem indices {[i for i, _, _ in items]}, expected 1..{count}")
    ordered = sorted(items)  # by index: a generator that answered in another order is still usable
    for index, paragraph, _ in ordered:
        if not paragraph.strip():
            return _fail("empty_paragraph", f"problem {index} has an empty paragraph")
    if not enlightenment or not enlightenment.strip():
        return _fail("missing_enlightenment", "no enlightenment paragraph" if enlightenment is None
                     else "the enlightenment paragraph is empty")
    answers = tuple((a.strip() or None) if a is not None else None for _, _, a in ordered)
    return ParseResult(ParsedPassage(tuple(p.strip() for _, p, _ in ordered), answers, enlightenment.strip()))


def parse_json_output(raw: str, count: int) -> ParseResult:
    """Parse the structured output (one JSON object; surrounding white space and a ``` fence are tolerated)."""
    body = raw.strip()
    if not body:
        return _fail("empty_output", "the output is empty")
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    try:
        # strict=False: vLLM's JSON grammar lets raw control characters into strings (the JSON spec does not);
        # they are recoverable, so they are read here and removed from the parts below, not a parse failure.
        data = json.loads(fenced.group(1) if fenced else body, strict=False)
    except json.JSONDecodeError as exc:
        return _fail("invalid_json", f"{exc.msg} at char {exc.pos} of {len(body)}")
    if not isinstance(data, dict) or not isinstance(data.get("problems"), list):
        return _fail("schema_mismatch", "expected an object with a 'problems' list")
    if set(data) - {"problems", "enlightenment"}:
        return _fail("schema_mismatch", f"unexpected keys {sorted(set(data) - {'problems', 'enlightenment'})}")
    enlightenment = data.get("enlightenment")
    if enlightenment is not None and not isinstance(enlightenment, str):
        return _fail("schema_mismatch", "'enlightenment' is not a string")
    items = []
    for position, item in enumerate(data["problems"], start=1):
        if not isinstance(item, dict):
            return _fail("schema_mismatch", f"problems[{position - 1}] is not an object")
        index, paragraph, answer = item.get("index", position), item.get("paragraph"), item.get("final_answer")
        if paragraph is None:
            return _fail("empty_paragraph", f"problems[{position - 1}] has no 'paragraph'")
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(paragraph, str) \
                or not (answer is None or isinstance(answer, (str, int, float))) or isinstance(answer, bool):
            return _fail("schema_mismatch", f"problems[{position - 1}]: index must be an integer, paragraph and "
                         "final_answer strings")
        items.append((index, _CONTROL.sub("", paragraph), None if answer is None else _CONTROL.sub("", str(answer))))
    return _check_parts(count, items, enlightenment if enlightenment is None else _CONTROL.sub("", enlightenment))


def parse_text_output(raw: str, count: int) -> ParseResult:
    """Parse the fallback layout: ``### Problem <i>`` sections (a ``Final answer:`` line is taken out of the
    paragraph as its final answer) and one ``### Enlightenment`` section; text before the first heading is ignored."""
    if not raw.strip():
        return _fail("empty_output", "the output is empty")
    marks = list(_HEADING.finditer(raw))
    items, enlightenment = [], None
    for i, mark in enumerate(marks):
        body = raw[mark.end():marks[i + 1].start() if i + 1 < len(marks) else len(raw)]
        if mark.group(2) is None:
            if enlightenment is not None:
                return _fail("missing_enlightenment", "more than one enlightenment section")
            enlightenment = body
            continue
        if enlightenment is not None:
            return _fail("bad_problem_index", "a problem section follows the enlightenment paragraph")
        found = list(_FINAL_ANSWER.finditer(body))
        answer = found[-1].group(1) if found else None
        if found:
            body = body[:found[-1].start()] + body[found[-1].end():]
        items.append((int(mark.group(2)), body, answer))
    if not items and enlightenment is None:
        return _fail("wrong_problem_count", f"no '### Problem <i>' headings; expected {count}")
    return _check_parts(count, items, enlightenment)


def parse_output(raw: str, count: int, output_format: str) -> ParseResult:
    """Parse ``raw`` as ``output_format`` ("json" or "text") for a group of ``count`` problems."""
    if output_format == "json":
        return parse_json_output(raw, count)
    if output_format == "text":
        return parse_text_output(raw, count)
    raise ValueError(f"output format {output_format!r} is not 'json' or 'text'")


_SCORE_LINE = re.compile(r"educational score\W*([0-5])\b", re.IGNORECASE)


def parse_annotation(raw: str, output_format: str) -> tuple[int | None, str | None]:
    """(score 0-5, None) from an ``annotate_v1`` output, or (None, reason): json {"justification", "score"}, or
    text ending in "Educational score: N" (the last such line counts). Reasons: empty_output, invalid_json,
    schema_mismatch, missing_score, score_out_of_range."""
    if not raw.strip():
        return None, "empty_output"
    if output_format == "text":
        found = _SCORE_LINE.findall(raw)
        return (int(found[-1]), None) if found else (None, "missing_score")
    try:
        data = json.loads(raw.strip(), strict=False)
    except json.JSONDecodeError:
        return None, "invalid_json"
    if not isinstance(data, dict) or "score" not in data:
        return None, "schema_mismatch"
    score = data["score"]
    if isinstance(score, bool) or not isinstance(score, int):
        return None, "schema_mismatch"
    return (score, None) if 0 <= score <= 5 else (None, "score_out_of_range")


def parse_failure_summary(results: Iterable[ParseResult]) -> dict:
    """{"outputs": n, "parse_failures": f, "parse_failure_rate": f / n (0.0 when n = 0), "by_reason": {...}}."""
    reasons = Counter()
    total = 0
    for result in results:
        total += 1
        if not result.ok:
            reasons[result.reason] += 1
    failures = sum(reasons.values())
    return {"outputs": total, "parse_failures": failures,
            "parse_failure_rate": failures / total if total else 0.0, "by_reason": dict(sorted(reasons.items()))}
