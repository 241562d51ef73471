"""Prompt rendering (golden text), the structured-output schema, and parsing of good and bad outputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from synth.passage import parse_annotation, parse_failure_summary, parse_json_output, parse_output, parse_text_output
from synth.prompts import PromptProblem, load_template, passage_schema, render_annotate_prompt, render_passage_prompt
from trait.config import ConfigError

PROMPTS = Path(__file__).resolve().parent.parent / "synth" / "prompts"
GROUP = [PromptProblem("gsm8k", "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                       "clips in May. How many clips did Natalia sell altogether in April and May?",
                       "Solve the grade-school word problem."),
         PromptProblem("sat_math", "If f(x) = 3x + 2, what is f(4) in dollars? The price is $ per unit.")]

GOLDEN_USER = """\
Write one task-oriented passage about the 2 problems below. They come from different tasks. They need the same \
knowledge: name it, and show how it applies to each problem.

Follow this guideline:
1. For each problem, in the order given, write one paragraph that suggests a possible answer and explains the \
reasoning behind it step by step, naming the knowledge it uses. End each problem with its final answer.
2. Close with an enlightenment paragraph that states what the problems have in common and what is unique to each \
of them, so that a reader learns how to approach similar problems.
3. Write fluent prose for a reader, not a list of notes. Do not mention these instructions.

Problem 1 (task: gsm8k). Solve the grade-school word problem.
Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did \
Natalia sell altogether in April and May?

Problem 2 (task: sat_math).
If f(x) = 3x + 2, what is f(4) in dollars? The price is $ per unit.

Reply with one JSON object and nothing else: {"problems": [{"index": 1, "paragraph": "...", "final_answer": \
"..."}, ...], "enlightenment": "..."}, with exactly 2 entries in "problems", one per problem, in the order given."""

GOLDEN_TEXT_FORMAT = """\
Reply in exactly this layout, with exactly 3 problem sections in the order given:
### Problem 1
<the paragraph for problem 1>
Final answer: <its final answer>
### Problem 2
<the paragraph for problem 2>
Final answer: <its final answer>
### Enlightenment
<the enlightenment paragraph>"""


def test_golden_passage_prompt_json():
    prompt = render_passage_prompt(GROUP, "knowledge_centric", domain="mathematics")
    digest = hashlib.sha1((PROMPTS / "passage_v1.txt").read_bytes() + (PROMPTS / "passage_v1.json").read_bytes())
    assert prompt.template_version == f"passage_v1@{digest.hexdigest()[:8]}"
    assert prompt.output_format == "json"
    assert prompt.messages == [
        {"role": "system", "content": "You are an expert teacher in mathematics. You write clear, correct textbook "
         "passages that show how domain knowledge is used to solve concrete problems."},
        {"role": "user", "content": GOLDEN_USER}]
    problems = prompt.schema["properties"]["problems"]
    assert (problems["minItems"], problems["maxItems"]) == (2, 2)
    assert prompt.schema["required"] == ["problems", "enlightenment"]
    assert [p["required"] for p in problems["prefixItems"]] == [["index", "paragraph", "final_answer"]] * 2


def test_golden_entity_prompt_text_format():
    group = [PromptProblem("qadsm", "Query: machu picchu luxury tour package"),
             PromptProblem("query_rewrite", "Rewrite: machu picchu luxury tour"),
             PromptProblem("webis_ad", "Is this an ad?")]
    prompt = render_passage_prompt(group, "entity_centric", domain="advertising",
                                   entity="machu picchu luxury tour package", output_format="text")
    user = prompt.messages[1]["content"]
    assert user.startswith("Write one task-oriented passage about the 3 problems below. They come from different "
                           "tasks. They concern the same entity (machu picchu luxury tour package): show how "
                           "knowledge about this entity helps with each task.\n\n")
    assert user.endswith("Problem 3 (task: webis_ad).\nIs this an ad?\n\n" + GOLDEN_TEXT_FORMAT)
    assert prompt.schema is None


def test_bad_prompt_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="domain kind 'entity' is not one of"):
        render_passage_prompt(GROUP, "entity", domain="mathematics")
    with pytest.raises(ConfigError, match="output format 'xml'"):
        render_passage_prompt(GROUP, "knowledge_centric", domain="mathematics", output_format="xml")
    with pytest.raises(ConfigError, match="templates there: annotate_v1, passage_v1"):
        load_template("passage_v9")


def test_annotate_prompt_and_schema():
    prompt = render_annotate_prompt("  Fractions: 1/2 + 1/4 = 3/4.  ", domain="mathematics")
    assert "Extract:\nFractions: 1/2 + 1/4 = 3/4.\n\nReply with one JSON object" in prompt.messages[1]["content"]
    assert prompt.schema["properties"]["score"] == {"type": "integer", "minimum": 0, "maximum": 5}
    assert prompt.template_version.startswith("annotate_v1@")


@pytest.mark.parametrize("raw, fmt, expected", [
    ('{"justification": "clear worked example", "score": 4}', "json", (4, None)),
    ('{"justification": "x", "score": 6}', "json", (None, "score_out_of_range")),
    ('{"justification": "x", "score": "4"}', "json", (None, "schema_mismatch")),
    ('{"justification": "x"', "json", (None, "invalid_json")),
    ("", "json", (None, "empty_output")),
    ("Some basic facts.\nEducational score: 2", "text", (2, None)),
    ("No score given.", "text", (None, "missing_score")),
])
def test_parse_annotation(raw, fmt, expected):
    assert parse_annotation(raw, fmt) == expected


def test_importing_synth_loads_no_engine():
    # A fresh interpreter: other test modules in the same session import pyspark themselves.
    code = ("import sys, synth.prompts, synth.passage, synth.validate, trait.answer_match\n"
            "trait.answer_match.answer_matches('math', '1/2', '0.5')\n"
            "print(sorted({'torch', 'vllm', 'pyspark'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _json(paragraphs, enlightenment="Both problems use proportional reasoning about halves.", answers=None):
    answers = answers or [str(i) for i in range(len(paragraphs))]
    return json.dumps({"problems": [{"index": i, "paragraph": p, "final_answer": a}
                                    for i, (p, a) in enumerate(zip(paragraphs, answers), start=1)],
                       "enlightenment": enlightenment})


def test_parse_good_json_and_assemble():
    raw = _json(["Half of 48 is 24, so 48 + 24 = 72 clips.", "f(4) = 3 * 4 + 2 = 14."], answers=["72", "14"])
    result = parse_json_output(raw, 2)
    assert result.ok and result.passage.final_answers == ("72", "14")
    # "72" is stated at the end of paragraph 1, so it is not repeated; "14" likewise.
    assert result.passage.text() == ("Half of 48 is 24, so 48 + 24 = 72 clips.\n\nf(4) = 3 * 4 + 2 = 14.\n\n"
                                     "Both problems use proportional reasoning about halves.")
    with_problems = result.passage.text(["P1?", "P2?"])
    assert with_problems.startswith("P1?\n\nHalf of 48")
    out_of_order = json.dumps({"problems": [{"index": 2, "paragraph": "second", "final_answer": "b"},
                                            {"index": 1, "paragraph": "first", "final_answer": "a"}],
                               "enlightenment": "shared"})
    parsed = parse_json_output(out_of_order, 2).passage
    assert parsed.paragraphs == ("first", "second") and parsed.final_answers == ("a", "b")
    assert parsed.text() == "first\nFinal answer: a\n\nsecond\nFinal answer: b\n\nshared"


def test_raw_control_characters_from_the_grammar_are_removed():
    # vLLM's JSON grammar emitted these raw inside strings on the tiny model; strict JSON forbids them.
    raw = '{"problems": [{"index": 1, "paragraph": "a\x03b\r\nc", "final_answer": "7\x7f"}], "enlightenment": "e\x07"}'
    passage = parse_json_output(raw, 1).passage
    assert (passage.paragraphs, passage.final_answers, passage.enlightenment) == (("ab\nc",), ("7",), "e")


@pytest.mark.parametrize("raw, count, reason", [
    ("", 2, "empty_output"),
    ('{"problems": [{"index": 1, "paragraph": "cut off', 2, "invalid_json"),
    ('["not", "an", "object"]', 2, "schema_mismatch"),
    ('{"problems": [], "enlightenment": "x", "extra": 1}', 2, "schema_mismatch"),
    ('{"problems": [{"index": "1", "paragraph": "a", "final_answer": "1"}], "enlightenment": "x"}', 1,
     "schema_mismatch"),
    (_json(["only one paragraph here"]), 2, "wrong_problem_count"),
    (_json(["a", "b", "c"]), 2, "wrong_problem_count"),
    ('{"problems": [{"index": 1, "paragraph": "a", "final_answer": "1"}, {"index": 1, "paragraph": "b", '
     '"final_answer": "2"}], "enlightenment": "x"}', 2, "bad_problem_index"),
    (_json(["fine paragraph", "   "]), 2, "empty_paragraph"),
    ('{"problems": [{"index": 1, "final_answer": "1"}], "enlightenment": "x"}', 1, "empty_paragraph"),
    ('{"problems": [{"index": 1, "paragraph": "a", "final_answer": "1"}]}', 1, "missing_enlightenment"),
    (_json(["a", "b"], enlightenment=" \n"), 2, "missing_enlightenment"),
])
def test_parse_bad_json_reasons(raw, count, reason):
    result = parse_json_output(raw, count)
    assert not result.ok
    assert result.reason == reason, result.detail


TEXT_OUTPUT = """Here is the passage.
### Problem 1
Natalia sold 48 clips in April and half as many, 24, in May.
Final answer: 72
### Problem 2
Substituting x = 4 gives 3 * 4 + 2.
**Final answer:** 14
### Enlightenment
Both problems evaluate a simple expression.
"""


def test_parse_text_fallback():
    result = parse_text_output(TEXT_OUTPUT, 2)
    assert result.ok, result.detail
    assert result.passage.paragraphs == ("Natalia sold 48 clips in April and half as many, 24, in May.",
                                         "Substituting x = 4 gives 3 * 4 + 2.")
    assert result.passage.final_answers == ("72", "14")
    assert result.passage.enlightenment == "Both problems evaluate a simple expression."
    assert parse_output(TEXT_OUTPUT, 2, "text") == result


@pytest.mark.parametrize("raw, reason", [
    ("   ", "empty_output"),
    ("no headings at all, just prose", "wrong_problem_count"),
    (TEXT_OUTPUT.replace("### Enlightenment\nBoth problems evaluate a simple expression.\n", ""),
     "missing_enlightenment"),
    (TEXT_OUTPUT.replace("### Problem 2", "### Problem 3"), "bad_problem_index"),
    (TEXT_OUTPUT.replace("Substituting x = 4 gives 3 * 4 + 2.\n**Final answer:** 14\n", "\n"), "empty_paragraph"),
    (TEXT_OUTPUT.replace("### Enlightenment", "### Problem 3\nextra\n### Enlightenment"), "wrong_problem_count"),
    (TEXT_OUTPUT + "### Problem 3\nextra\n", "bad_problem_index"),  # a problem after the enlightenment
])
def test_parse_text_fallback_failures(raw, reason):
    result = parse_text_output(raw, 2)
    assert (result.ok, result.reason) == (False, reason), result.detail


def test_parse_failure_summary_counts():
    good = _json(["a", "b"])
    results = [parse_output(r, 2, "json") for r in (good, good, "", "{", _json(["a"]))]
    assert parse_failure_summary(results) == {
        "outputs": 5, "parse_failures": 3, "parse_failure_rate": 0.6,
        "by_reason": {"empty_output": 1, "invalid_json": 1, "wrong_problem_count": 1}}
    assert parse_failure_summary([])["parse_failure_rate"] == 0.0


def test_schema_pins_count_and_indices():
    problems = passage_schema(3, max_paragraph_chars=200, max_answer_chars=20)["properties"]["problems"]
    assert (problems["minItems"], problems["maxItems"], problems["items"]) == (3, 3, False)
    assert [p["properties"]["index"] for p in problems["prefixItems"]] == [
        {"type": "integer", "const": 1}, {"type": "integer", "const": 2}, {"type": "integer", "const": 3}]
    assert problems["prefixItems"][2]["properties"]["paragraph"] == {"type": "string", "minLength": 1,
                                                                     "maxLength": 200}
    assert problems["prefixItems"][0]["properties"]["final_answer"] == {"type": "string", "maxLength": 20}
    again = passage_schema(2)  # the cached template is not mutated
    assert len(again["properties"]["problems"]["prefixItems"]) == 2
    assert "maxLength" not in again["properties"]["enlightenment"]
