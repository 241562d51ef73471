"""The docs against the code: the generated config reference is current, and every ``trait ...`` command line in
README.md and docs/*.md names a real command with real flags."""

from __future__ import annotations

import argparse
import functools
import re
import shlex

import pytest

import trait.docs
from tests.conftest import REPO
from trait.cli import COMMANDS, build_parser

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(trait [^`]+)`")
PLACEHOLDER = re.compile(r"^(<.*>|[A-Z][A-Z_]*|\.\.\.)$")  # COMMAND, <x>, ...: a word the reader fills in


def command_lines(text: str) -> list[str]:
    """``trait ...`` lines: in code blocks (``\\`` continuations joined, ``# comments`` cut) and inline code."""
    lines = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line.strip())
            if line.startswith(("trait ", ".venv/bin/trait ")):
                lines.append(line.removeprefix(".venv/bin/"))
    prose = FENCE.sub("", text)
    return lines + INLINE.findall(re.sub(r"\s*\n\s*", " ", prose))


@functools.cache
def _parser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    """The parser of one command, with its options, as ``trait`` builds it."""
    parser = build_parser(list(command))
    for word in command:
        parser = next(a for a in parser._actions if a.dest in ("command", "action")).choices[word]
    return parser


def check(line: str) -> str | None:
    """What is wrong with one command line, or None."""
    words = [w.strip("[]") for w in shlex.split(line, comments=False)][1:]
    words = [w for w in words if w]
    command = next((c for c in COMMANDS if tuple(words[:len(c)]) == c), None)
    if command is None:
        if words and (PLACEHOLDER.match(words[0]) or words[0].startswith("-")):
            return None  # `trait COMMAND --help`, `trait --help`
        groups = {c[0] for c in COMMANDS if len(c) == 2}
        if len(words) == 1 and words[0] in groups:
            return None  # a group named on its own: `trait synth`
        return f"no command {' '.join(words[:2])!r}"
    parser = _parser(command)
    for word in words[len(command):]:
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and not re.fullmatch(r"-\d.*", flag) and flag not in parser._option_string_actions:
            return f"trait {' '.join(command)} has no option {flag}"
    return None


def test_finds_command_lines():
    text = ("```\ntrait score --input a \\\n    --output b   # a comment\n$ other\n```\n"
            "See `trait select --input x` and `trait\nreport`.")
    assert command_lines(text) == ["trait score --input a --output b", "trait select --input x", "trait report"]


@pytest.mark.parametrize("line, problem", [
    ("trait score --input a --output b", None),
    ("trait select --input x --domain c:token_budget=1 [--overwrite]", None),
    ("trait COMMAND --help", None),
    ("trait scroe --input a", "no command 'scroe --input'"),
    ("trait score --inptu a", "trait score has no option --inptu"),
    ("trait synth generate --chunk 1 --no-such", "trait synth generate has no option --no-such"),
])
def test_check_refuses_what_is_not_there(line, problem):
    assert check(line) == problem


def test_every_command_line_in_the_docs_is_real():
    found = {(path.relative_to(REPO), line) for path in DOCS for line in command_lines(path.read_text())}
    assert len(found) > 20  # the README and docs show commands; an extraction that finds none is broken
    problems = [f"{path}: {line}\n    {problem}" for path, line in sorted(found) if (problem := check(line))]
    assert not problems, "\n".join(problems)


def test_configuration_reference_is_current(monkeypatch):
    monkeypatch.delenv("TRAIT_SHARED_DATA", raising=False)  # defaults as `make docs` writes them
    monkeypatch.chdir(REPO)
    current = trait.docs.CONFIGURATION.read_text()
    assert trait.docs.MARKER in current
    assert current == trait.docs.configuration_text(current), "docs/configuration.md is stale: run `make docs`"


def test_configuration_reference_names_every_command():
    text = trait.docs.reference()
    for words in COMMANDS:
        assert f"`trait {' '.join(words)}`" in text
