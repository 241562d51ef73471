"""Numeric settings that make no sense are one-line ConfigErrors when a config is built, before any work: sizes,
counts, timeouts and limits that are zero, negative or not finite (a limit of 0 had meant 'all' and -3 'all but 3',
a num_heads of 0 was a ZeroDivisionError)."""

from __future__ import annotations

import pytest

from trait.config import ConfigError, from_dict

SETS = {"problem_sets": ["gsm8k", "math"]}


def _cases():
    from eval.run import EvalOptions
    from synth.annotate import AnnotateConfig
    from synth.generate import SynthConfig
    from synth.grouping import GroupingConfig
    from synth.validate import ValidationConfig
    from trait.serving.server import ServerConfig
    from trait.tiny_model import TinyModelConfig

    return [
        (SynthConfig, {**SETS, "limit": 0}, "limit must be >= 1, or null for no limit; got 0"),
        (SynthConfig, {**SETS, "limit": -3}, "limit must be >= 1, or null for no limit; got -3"),
        (SynthConfig, {**SETS, "max_problems_per_task": 0}, "max_problems_per_task must be >= 1"),
        (SynthConfig, {**SETS, "max_answer_chars": 0}, "max_answer_chars must be >= 1"),
        (SynthConfig, {**SETS, "timeout_s": 0}, "timeout_s must be a positive number of seconds"),
        (SynthConfig, {**SETS, "max_retries": -1}, "max_retries >= 0, got 300.0 and -1"),
        (SynthConfig, {**SETS, "grouping": {"min_similarity": 1.5}}, "min_similarity is a cosine similarity"),
        (SynthConfig, {**SETS, "validation": {"min_paragraph_words": -1}}, "min_paragraph_words must be >= 0"),
        (SynthConfig, {**SETS, "server": {"tensor_parallel_size": 0}}, "tensor_parallel_size and cpu_kvcache_gib"),
        (SynthConfig, {**SETS, "server": {"max_model_len": 0}}, "max_model_len must be >= 1 tokens"),
        (SynthConfig, {**SETS, "server": {"stop_grace_s": -1}}, "stop_grace_s >= 0"),
        (SynthConfig, {**SETS, "server": {"tiny_model": {"num_heads": 0}}}, "num_heads 0: every size must be >= 1"),
        (AnnotateConfig, {"timeout_s": -5}, "timeout_s must be a positive number of seconds"),
        (AnnotateConfig, {"server": {"cpu_kvcache_gib": 0}}, "tensor_parallel_size and cpu_kvcache_gib"),
        (GroupingConfig, {"min_similarity": -2}, "min_similarity is a cosine similarity, in \\[-1, 1\\]"),
        (ServerConfig, {"startup_timeout_s": 0}, "startup_timeout_s must be a positive number of seconds"),
        (TinyModelConfig, {"num_layers": 0}, "num_layers 0: every size must be >= 1"),
        (ValidationConfig, {"min_paragraph_words": -2}, "min_paragraph_words must be >= 0, got -2"),
        (EvalOptions, {"batch_size": 0}, "batch_size and num_concurrent must be >= 1"),
        (EvalOptions, {"num_concurrent": -1}, "batch_size and num_concurrent must be >= 1"),
        (EvalOptions, {"num_fewshot": -1}, "num_fewshot must be >= 0"),
        (EvalOptions, {"max_gen_toks": 0}, "max_gen_toks must be >= 1"),
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_nonsense_numbers_are_refused_when_the_config_is_built(case):
    cls, data, message = _cases()[case]
    with pytest.raises(ConfigError, match=message) as caught:
        from_dict(cls, data)
    assert "\n" not in str(caught.value)


def test_the_defaults_and_edge_values_pass():
    from synth.generate import SynthConfig

    cfg = from_dict(SynthConfig, {**SETS, "limit": 1, "max_problems_per_task": None, "max_retries": 0,
                                  "grouping": {"min_similarity": -1}, "server": {"stop_grace_s": 0}})
    assert cfg.limit == 1 and cfg.grouping.min_similarity == -1


def test_non_finite_numbers_in_configs_built_in_code_are_refused():
    """The YAML loader refuses inf and nan; a config built in code is checked by its own validate."""
    from spark_jobs.classifier import ClassifierConfig, DataRef
    from trainer.config import StageConfig, SyntheticDataConfig

    def stage(**kw):
        return StageConfig(**{"name": "knowledge", "token_budget": 10, "global_batch_size": 1, "lr": 1e-3,
                              "synthetic_data": SyntheticDataConfig(seq_len=8), **kw})

    for bad, message in [(stage(lr=float("inf")), "need lr > 0"),
                         (stage(weight_decay=float("nan")), "weight_decay and grad_clip must be numbers >= 0"),
                         (stage(eps=float("inf")), "eps a number > 0"),
                         (ClassifierConfig(name="x", positives=[DataRef("p")], negatives=[DataRef("n")],
                                           lr=float("nan")), "lr must be a positive number")]:
        with pytest.raises(ConfigError, match=message):
            bad.validate()
    stage().validate()
