"""Generated thresholds for ``trait select`` (issue 15.8): any text as ``COLUMN:KEY=VALUE`` (``Threshold.parse``)
and as ``--set domain.KEY=VALUE`` overrides through ``trait.config.load_config``: numbers, inf and nan, negative
and huge values, YAML and random text. Each either gives a valid threshold or is a ``trait.UserError`` with a
one-line message; no other exception."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from spark_jobs.select import SelectConfig, Threshold
from trait import UserError
from trait.config import load_config

KEYS = ("min", "percentile", "token_budget")
SPECIAL = ["inf", "-inf", "nan", "NaN", "Infinity", "1e400", "-1e400", "1e308", "-0", "0", "100", "99.999", "1e6",
           "1_000", " 5 ", "0x10", "1:2", "", "null", "~", "true", "[1]", "{a: 1}", "'90'", '"', "!!binary x",
           "!!python/object:os.system x", "&a 1", "*a", "- 1", "90\n91", "é", "\x00"]
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30))
values = st.one_of(st.sampled_from(SPECIAL), numbers.map(str), numbers.map(repr), st.text(max_size=20))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
columns = st.one_of(st.just("score_domain_math_v1"), st.text(max_size=12))
threshold_texts = st.one_of(st.builds(lambda c, k, v: f"{c}:{k}={v}", columns, keys, values), st.text(max_size=40))
SETTINGS = settings(max_examples=300, deadline=None)


def _valid(t: Threshold) -> None:
    given_ = {k: getattr(t, k) for k in KEYS if getattr(t, k) is not None}
    assert len(given_) == 1, t
    (key, value), = given_.items()
    assert isinstance(value, int if key == "token_budget" else float) and math.isfinite(value), t
    assert {"min": lambda v: 0 <= v <= 1, "percentile": lambda v: 0 <= v < 100,
            "token_budget": lambda v: v > 0}[key](value), t


def _one_line(error: UserError) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, repr(message)


@SETTINGS
@given(threshold_texts)
@example("score:percentile=abc")
@example("score:token_budget=inf")
@example("score:token_budget=nan")
@example("score:min=-0.5")
def test_threshold_parse_gives_a_valid_threshold_or_one_user_error_line(text):
    try:
        threshold = Threshold.parse(text)
    except UserError as e:
        _one_line(e)
    else:
        _valid(threshold)


def _load(overrides: list[str]) -> None:
    try:
        config = load_config(SelectConfig, None, overrides)
    except UserError as e:
        _one_line(e)
    else:
        for threshold in config.thresholds().values():
            _valid(threshold)
        assert sum(t.token_budget is not None for t in config.thresholds().values()) <= 1, config


@SETTINGS
@given(keys, values)
@example("percentile", "abc")
@example("percentile", "inf")
@example("token_budget", "nan")
@example("min", "-1")
def test_set_overrides_give_a_valid_select_config_or_one_user_error_line(key, value):
    _load(["domain.column=score_domain_math_v1", f"domain.{key}={value}"])


@SETTINGS
@given(threshold_texts, st.one_of(st.none(), threshold_texts))
def test_threshold_strings_as_config_values_give_a_valid_config_or_one_user_error_line(domain, quality):
    _load([f"domain={domain}", *([f"quality={quality}"] if quality is not None else [])])
