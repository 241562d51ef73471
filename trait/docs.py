"""The generated part of docs/configuration.md: every command's config fields (key, type, default, help).

``python -m trait.docs`` (``make docs``) rewrites the file below its marker line; ``tests/test_docs.py`` fails when
the file differs from what this module would write.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from trait.config import describe, show, type_name

CONFIGURATION = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
MARKER = "<!-- generated below by `make docs` (python -m trait.docs) from the config classes; do not edit by hand -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference() -> str:
    """The reference section: one table per config class, the commands that use it named above it."""
    from trait.cli import COMMANDS

    users: dict[str, list[str]] = {}
    classes = {}
    for words, command in COMMANDS.items():
        users.setdefault(command.config, []).append("`trait " + " ".join(words) + "`")
        classes.setdefault(command.config, command)
    lines = [MARKER, "", "## Reference: every field", "",
             "Nested fields are listed by dotted key (`N` is a list index). A default of *required* must be given.",
             ""]
    for spec, commands in users.items():
        module, name = spec.split(":")
        lines += [f"### `{name}` ({', '.join(commands)})", "", f"`{module}.{name}`", "",
                  "| key | type | default | help |", "|---|---|---|---|"]
        for doc in describe(classes[spec].config_class()):
            if doc.default is dataclasses.MISSING:
                default = "*required*"
            elif dataclasses.is_dataclass(doc.default):
                default = "(fields below)"
            else:
                default = f"`{_cell(show(doc.default))}`"
            lines.append(f"| `{doc.key}` | `{_cell(type_name(doc.type))}` | {default} | {_cell(doc.help)} |")
        lines.append("")
    return "\n".join(lines)


def configuration_text(current: str) -> str:
    """``current`` (the file's text) with everything from the marker on replaced by :func:`reference`."""
    prose = current.split(MARKER, 1)[0].rstrip("\n")
    return prose + "\n\n" + reference()


def main() -> int:
    os.environ.pop("TRAIT_SHARED_DATA", None)  # defaults as a shell without it sees them (a test compares them so)
    os.chdir(CONFIGURATION.parent.parent)  # ... at the repository root
    CONFIGURATION.write_text(configuration_text(CONFIGURATION.read_text()))
    print(f"wrote {CONFIGURATION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
