"""The classifiers' normaliser: math markup maps to the plain form that markup-stripped math text has."""

from __future__ import annotations

import pytest

from spark_jobs.text import NORMALISER_VERSION, normalise


@pytest.mark.parametrize("text, expected", [
    # Delimiters, braces, sub- and superscripts are markup: gone; punctuation stays a token of its own.
    ("Let $x^2 + y_1 = 3$.", "let x 2 + y 1 = 3 ."),
    (r"$\frac{a}{b} \leq \sqrt{c}$", "a / b < = sqrt c"),
    (r"\begin{align} f(x) &= \alpha \cdot x \end{align}", "align f ( x ) = alpha * x align"),
    (r"$\mathbb{R}^n$, $\sin\theta \neq 0$", "r n , sin theta ! = 0"),
    (r"costs \$5 or 50\%", "costs 5 or 50 %"),
    ("Line one\n\nLine\ttwo", "line one line two"),
    # The 2015 Wikipedia dump's quoted variables and Unicode symbols take the LaTeX side's plain form.
    ('a function "f" : "X" → "Y" with "f"("x") ≤ 2 × "y"', "a function f : x - > y with f ( x ) < = 2 * y"),
])
def test_markup_maps_to_plain_form(text, expected):
    assert normalise(text) == expected


def test_latex_and_plain_text_math_meet():
    # The same statement typeset and in an encyclopedia's stripped plain text share their normalised form.
    assert normalise(r"If $a \geq b$ then $a^2 \ge b^2$ for $a, b \ge 0$.") == normalise(
        "If a >= b then a 2 >= b 2 for a, b >= 0.")
    assert NORMALISER_VERSION == "v2"

