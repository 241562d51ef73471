"""The frozen CLI: every command's options against tests/cli_snapshot.txt, so that no flag changes by accident.

A change on purpose is recorded with ``TRAIT_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/test_cli_snapshot.py``
(then review the file's diff and commit it with the change).
"""

from __future__ import annotations

import argparse
import os

from tests.conftest import REPO
from trait.cli import COMMANDS, build_parser

SNAPSHOT = REPO / "tests" / "cli_snapshot.txt"


def _option(action: argparse.Action) -> str:
    if action.nargs == 0:
        shape = "switch"
    elif action.nargs in (None, 1):
        shape = "value"
    else:
        shape = f"values({action.nargs})"
    choices = f" choices={sorted(map(str, action.choices))}" if action.choices else ""
    return f"  {' '.join(action.option_strings)}  {shape}{' required' if action.required else ''}{choices}"


def snapshot() -> str:
    """One block per command: its words, then each option with its shape (switch, value, values), whether it is
    required, and its choices."""
    parser = build_parser()
    lines = []
    for words in COMMANDS:
        p = parser
        for word in words:
            p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        lines.append("trait " + " ".join(words))
        lines += sorted(_option(a) for a in p._actions if a.option_strings and a.dest != "help")
    return "\n".join(lines) + "\n"


def test_cli_matches_the_snapshot():
    current = snapshot()
    if os.environ.get("TRAIT_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.read_text() == current, (
        "the CLI's options changed; if on purpose, run TRAIT_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest "
        "tests/test_cli_snapshot.py and commit tests/cli_snapshot.txt")


def test_snapshot_sees_a_flag_change():
    parser = build_parser(["score"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["score"]
    before = sorted(_option(a) for a in sub._actions if a.option_strings)
    sub.add_argument("--extra")
    after = sorted(_option(a) for a in sub._actions if a.option_strings)
    assert before != after and "  --extra  value" in after
    assert "trait score\n" in snapshot() and "  --input  value required" in SNAPSHOT.read_text()
