"""Text normalisation for the fastText classifiers and named token counters.

Training and scoring must see exactly the same normalisation, so both call ``normalise`` and the model card
records ``NORMALISER_VERSION``; the scorer refuses a model trained under another version.

Since v2, math markup is mapped to the form plain-text math has, so a classifier learns the vocabulary and structure
of mathematics rather than its typography (LaTeX sources vs markup-stripped encyclopedia text and word problems):
the delimiters ``$``, double quotes, braces, ``^``, ``_``, ``&`` and ``~`` become spaces; a LaTeX command becomes
its plain form (``\\frac{a}{b}`` -> ``a / b``, ``\\leq`` -> ``<=``, ``\\cdot`` -> ``*``), its name as a word
(``\\alpha`` -> ``alpha``, ``\\sin`` -> ``sin``), or nothing for layout (``\\begin``, ``\\left``, ``\\mathbb``,
``\\,``); Unicode math symbols take the same plain forms (``≤`` -> ``<=``, ``×`` -> ``*``, ``∈`` -> ``in``).
On the validation sets (docs/selection-validation.md), quotes and Unicode symbols on top of the LaTeX mapping moved
Wikipedia's math articles from ROC-AUC 0.29 to 0.85.
"""

from __future__ import annotations

import re

NORMALISER_VERSION = "v2"

# Punctuation becomes tokens of its own ("x=2." -> "x = 2 .") so the math signal survives. Chained str.replace (a C
# fast path) does this at ~34 MB/s; str.translate with multi-character targets or a regex measured 10-18 MB/s,
# slower than fastText's predict itself; gluing punctuation to words (52 MB/s) cut the domain classifier's
# held-out recall from 0.98 to 0.58.
_SPACED = tuple("=()[],.;:!?+-*/<>|%'\"")
# Markup with no plain-text counterpart, and double quotes (the 2015 Wikipedia dump quotes every math variable,
# '"G"', where LaTeX italicises it): a space.
_MARKUP = tuple('${}^_&~"')
# Unicode math symbols: the plain form LaTeX commands map to as well.
_SYMBOLS = {"−": "-", "×": "*", "∗": "*", "·": "*", "⋅": "*", "÷": "/", "→": "->", "≤": "<=", "≥": ">=", "≠": "!=",
            "∈": " in ", "∞": " infinity ", "≈": "~", "…": "...", "′": "'"}
# LaTeX commands: a plain-text form; layout and font commands carry no content ("").
_COMMANDS = {
    "frac": "/", "dfrac": "/", "tfrac": "/", "over": "/", "cdot": "*", "times": "*", "div": "/", "pm": "+-",
    "le": "<=", "leq": "<=", "leqslant": "<=", "ge": ">=", "geq": ">=", "geqslant": ">=", "ne": "!=", "neq": "!=",
    "lt": "<", "gt": ">", "approx": "~", "equiv": "=", "to": "->", "rightarrow": "->", "implies": "=>",
    "infty": "infinity", "%": "%", "ldots": "...", "cdots": "...", "dots": "...", "prime": "'",
    **dict.fromkeys(("begin", "end", "left", "right", "big", "bigg", "bigl", "bigr", "mathrm", "mathbf", "mathbb",
                     "mathcal", "mathit", "mathsf", "mathfrak", "boldsymbol", "text", "textbf", "textit", "textrm",
                     "emph", "operatorname", "displaystyle", "textstyle", "label", "ref", "eqref", "cite", "quad",
                     "qquad", "hspace", "vspace", "noindent", "item", "limits", "nonumber", "newline"), ""),
}
_COMMAND = re.compile(r"\\([a-z]+|.)", re.DOTALL)
_FRACTION = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")  # \frac{a}{b} -> a / b (no nested braces)


def _command(match: re.Match) -> str:
    name = match.group(1)
    return f" {_COMMANDS.get(name, name if name.isalpha() else '')} "


def normalise(text: str) -> str:
    """Lower-case, math markup to plain form (module doc), space out punctuation, collapse all white space (fastText
    refuses '\\n') to single spaces."""
    text = text.lower()
    if "\\" in text:
        text = _COMMAND.sub(_command, _FRACTION.sub(r" \1 / \2 ", text))
    for symbol, plain in _SYMBOLS.items():
        if symbol in text:
            text = text.replace(symbol, plain)
    for mark in _MARKUP:
        if mark in text:
            text = text.replace(mark, " ")
    for mark in _SPACED:
        if mark in text:
            text = text.replace(mark, f" {mark} ")
    return " ".join(text.split())
_WORDS = re.compile(r"\w+|[^\w\s]")


class TokenCounter:
    """Counts tokens with a named tokenizer: ``words`` (regex words and punctuation marks) or
    ``hf:<path to tokenizer.json>`` (a Hugging Face fast tokenizer, e.g. the one the trainer will use)."""

    def __init__(self, name: str):
        self.name = name
        self._hf = None
        if name.startswith("hf:"):
            from tokenizers import Tokenizer

            self._hf = Tokenizer.from_file(name[3:])
        elif name != "words":
            raise ValueError(f"unknown tokenizer {name!r}; use 'words' or 'hf:/path/to/tokenizer.json'")

    def count(self, texts: list[str]) -> list[int]:
        """Token count of each text (no special tokens)."""
        if self._hf is not None:
            return [len(e.ids) for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        return [len(_WORDS.findall(t)) for t in texts]
