"""Text normalisation for the fastText classifiers and named token counters.

Training and scoring must see exactly the same normalisation, so both call ``normalise`` and the model card
records ``NORMALISER_VERSION``; the scorer refuses a model trained under another version.
"""

from __future__ import annotations

import re
import string

NORMALISER_VERSION = "v1"

# Punctuation and LaTeX markup become separate tokens ("x^2" -> "x ^ 2", "\frac{a}{b}" -> "\ frac { a } { b }")
# so fastText sees math symbols as words. str.translate runs in C: this costs ~1 ms per 100 KB.
_SPACED = str.maketrans({c: f" {c} " for c in string.punctuation})


def normalise(text: str) -> str:
    """Lower-case, space out punctuation, collapse all white space (fastText refuses '\\n') to single spaces."""
    return " ".join(text.lower().translate(_SPACED).split())


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
