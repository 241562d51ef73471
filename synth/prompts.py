"""Prompt templates: versioned text files under ``synth/prompts/`` rendered into chat messages, plus the JSON
schema the generator's structured output must follow.

A template file (``passage_v1.txt``) holds named sections (``[system]``, ``[user]``, ``[problem]``,
``[framing:<kind>]``, ``[format:json]``, ``[format:text]``) with ``$name`` placeholders (``string.Template``:
a ``$`` inside a problem's text is inserted as is, never re-expanded). The template version recorded in every
output row is ``<file stem>@<first 8 hex of sha1 of the file>``: editing a file without renaming it still changes
the version, so passage ids (which include it) never silently mix two prompts.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from synth.problem_sets import DOMAIN_KINDS
from trait.config import ConfigError

PROMPTS_DIR = Path(__file__).with_name("prompts")
DEFAULT_PASSAGE_TEMPLATE = "passage_v1"
DEFAULT_ANNOTATE_TEMPLATE = "annotate_v1"
OUTPUT_FORMATS = ("json", "text")  # json: structured outputs (a JSON schema); text: the checkable fallback layout
_SECTION = re.compile(r"^\[([a-z_]+(?::[a-z_]+)?)\]\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptProblem:
    """What a prompt needs of one problem: its task's name and instruction, and the problem text itself."""

    task: str
    text: str
    instruction: str = ""


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template file: its sections by name and its version string."""

    name: str
    version: str
    sections: dict[str, str]
    schema: dict | None = None  # the structured-output schema from <name>.json, when the file exists

    def section(self, key: str) -> Template:
        if key not in self.sections:
            raise ConfigError(f"prompt template {self.name}: no section [{key}]; sections are: "
                              f"{', '.join(self.sections)}")
        return Template(self.sections[key])


@dataclass(frozen=True)
class RenderedPrompt:
    """Chat messages for one request, the template version, and the schema when the format is json."""

    messages: list[dict] = field(hash=False)
    template_version: str
    output_format: str
    schema: dict | None = field(default=None, hash=False)


@functools.lru_cache(maxsize=16)
def load_template(name: str, directory: str | None = None) -> PromptTemplate:
    """Read ``<directory>/<name>.txt`` (default: the shipped ``synth/prompts``) and its optional ``<name>.json``."""
    root = Path(directory) if directory else PROMPTS_DIR
    path = root / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.txt"))
        raise ConfigError(f"prompt template {name!r} not found in {root}; templates there: {', '.join(known)}")
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    marks = list(_SECTION.finditer(text))
    # A section's body runs to the next header; the newline before that header is not part of the body.
    sections = {m.group(1): text[m.end() + 1:(marks[i + 1].start() if i + 1 < len(marks) else len(text))].rstrip("\n")
                for i, m in enumerate(marks)}
    schema_path = root / f"{name}.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8")) if schema_path.is_file() else None
    digest = hashlib.sha1(raw + (schema_path.read_bytes() if schema else b""))
    return PromptTemplate(name, f"{name}@{digest.hexdigest()[:8]}", sections, schema)


def passage_schema(count: int, template: str = DEFAULT_PASSAGE_TEMPLATE, max_paragraph_chars: int | None = None,
                   max_answer_chars: int | None = None) -> dict:
    """The template's JSON schema with ``problems`` fixed to exactly ``count`` items (minItems = maxItems).

    ``max_paragraph_chars`` (paragraphs and the enlightenment) and ``max_answer_chars`` add ``maxLength``: the
    grammar then has to close every string, so a generator that never stops a string on its own (a random-weight
    test model) still ends inside max_tokens when count * max_paragraph_chars fits in it."""
    base = load_template(template).schema
    if base is None:
        raise ConfigError(f"prompt template {template!r} has no {template}.json schema; structured output needs one")
    schema = copy.deepcopy(base)
    problems = schema["properties"]["problems"]
    problems.update(minItems=count, maxItems=count)
    item = problems["items"]["properties"]
    if max_paragraph_chars is not None:
        item["paragraph"]["maxLength"] = max_paragraph_chars
        schema["properties"]["enlightenment"]["maxLength"] = max_paragraph_chars
    if max_answer_chars is not None:
        item["final_answer"]["maxLength"] = max_answer_chars
    # Position i (from 1) must carry index i: prefixItems pins each item's index with const, so the grammar
    # cannot emit [2, 2] (a random-weight model did, 15 of 20 times, with only minimum/maximum on index).
    positions = []
    for i in range(1, count + 1):
        pinned = copy.deepcopy(problems["items"])
        pinned["properties"]["index"] = {"type": "integer", "const": i}
        positions.append(pinned)
    problems["prefixItems"] = positions
    problems["items"] = False
    return schema


def _problem_block(tpl: PromptTemplate, index: int, problem: PromptProblem) -> str:
    block = tpl.section("problem").substitute(index=index, task=problem.task, instruction=problem.instruction.strip(),
                                              text=problem.text.strip())
    header, newline, rest = block.partition("\n")
    return header.rstrip() + newline + rest  # no trailing blank where a task has no instruction


def render_passage_prompt(problems: list[PromptProblem], kind: str, *, domain: str, entity: str | None = None,
                          output_format: str = "json", template: str = DEFAULT_PASSAGE_TEMPLATE,
                          max_paragraph_chars: int | None = None,
                          max_answer_chars: int | None = None) -> RenderedPrompt:
    """Chat messages asking for one passage over ``problems`` (2 or more, from different tasks, in order).

    ``kind`` is the group's domain kind (entity_centric: the problems share ``entity``; knowledge_centric: they
    need the same knowledge); ``domain`` names the field for the teacher persona ("mathematics", "advertising").
    The ``max_*_chars`` bounds go into the JSON schema (``passage_schema``); the text format ignores them.
    """
    if kind not in DOMAIN_KINDS:
        raise ConfigError(f"domain kind {kind!r} is not one of {', '.join(DOMAIN_KINDS)}")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if not problems:
        raise ConfigError("a passage prompt needs at least one problem")
    tpl = load_template(template)
    count = len(problems)
    framing = tpl.section(f"framing:{kind}").substitute(entity=entity or "the same query, product or brand")
    blocks = [_problem_block(tpl, i, p) for i, p in enumerate(problems, start=1)]
    user = tpl.section("user").substitute(
        count=count, framing=framing, problems="\n\n".join(blocks),
        output_format=tpl.section(f"format:{output_format}").substitute(count=count))
    messages = [{"role": "system", "content": tpl.section("system").substitute(domain=domain)},
                {"role": "user", "content": user}]
    schema = (passage_schema(count, template, max_paragraph_chars, max_answer_chars)
              if output_format == "json" else None)
    return RenderedPrompt(messages, tpl.version, output_format, schema)


def render_annotate_prompt(document: str, *, domain: str, output_format: str = "json",
                           template: str = DEFAULT_ANNOTATE_TEMPLATE) -> RenderedPrompt:
    """Chat messages asking for a 0-5 educational-value score of ``document`` (the FineWeb-Edu rubric)."""
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    tpl = load_template(template)
    user = tpl.section("user").substitute(domain=domain, document=document.strip(),
                                          output_format=tpl.section(f"format:{output_format}").template)
    messages = [{"role": "system", "content": tpl.section("system").substitute(domain=domain)},
                {"role": "user", "content": user}]
    schema = copy.deepcopy(tpl.schema) if output_format == "json" else None
    return RenderedPrompt(messages, tpl.version, output_format, schema)
