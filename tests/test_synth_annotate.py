"""``trait synth annotate`` without a generator: config, the seeded document sample, the cut, clear input errors.

The runs against the real vLLM server (labels, quarantine, resume, training a quality classifier on the labels)
are in test_synth_e2e.py, which shares one server start.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.annotate import AnnotateConfig, cut, sample_documents
from trait.cli import main
from trait.config import ConfigError, from_dict
from trait.contract import SUCCESS_MARKER, ContractError, part_name

from .support.corpus import documents, write_dataset


def config(**kwargs) -> AnnotateConfig:
    return from_dict(AnnotateConfig, kwargs)


def test_config_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="did you mean 'sample_size'"):
        config(sample_sise=3)
    with pytest.raises(ConfigError, match="output_format must be one of json, text"):
        config(output_format="yaml")
    with pytest.raises(ConfigError, match="sample_size, batch_docs"):
        config(sample_size=0)


def test_cut_ends_at_white_space_in_the_last_fifth():
    assert cut("short text", 100) == "short text"
    assert cut("alpha beta gamma delta", 13) == "alpha beta"  # "alpha beta ga" -> back to the space at 10 >= 13*4//5
    assert cut("x" * 50, 10) == "x" * 10  # no white space: a hard cut
    assert cut("a " + "y" * 40, 20) == ("a " + "y" * 40)[:20]  # the only space is too early: a hard cut


def test_sample_is_seeded_and_ignores_file_layout(tmp_path):
    rows = documents(30, 30)
    one = write_dataset(tmp_path / "one", rows)
    three = write_dataset(tmp_path / "three", rows[::-1], parts=3)
    docs, drawn = sample_documents(one, config(sample_size=12, seed=7))
    again, _ = sample_documents(three, config(sample_size=12, seed=7))
    other, _ = sample_documents(one, config(sample_size=12, seed=8))
    assert drawn == {"available": 60, "sampled": 12}
    assert [d["id"] for d in docs] == [d["id"] for d in again]
    assert {d["id"] for d in docs} != {d["id"] for d in other}
    by_id = {r["id"]: r for r in rows}
    assert all(d == by_id[d["id"]] for d in docs)  # whole rows, untouched
    math, _ = sample_documents(one, config(sample_size=100, sources=["math/"]))
    assert len(math) == 30 and {d["source"] for d in math} == {"math/planetmath"}


def test_bad_inputs_are_clear_errors(tmp_path):
    rows = documents(3, 0)
    with pytest.raises(ContractError, match="not a finished dataset"):
        sample_documents(write_dataset(tmp_path / "unfinished", rows, finished=False), config())
    with pytest.raises(ContractError, match="ids must be unique.*trait dedup"):
        sample_documents(write_dataset(tmp_path / "dup", rows + rows[:1]), config())
    with pytest.raises(ConfigError, match="no rows with a source starting with"):
        sample_documents(write_dataset(tmp_path / "ok", rows), config(sources=["web/"]))
    no_url = tmp_path / "no_url"
    no_url.mkdir()
    pq.write_table(pa.Table.from_pylist(rows).drop_columns(["url"]), no_url / part_name(0))
    (no_url / SUCCESS_MARKER).write_text("")
    with pytest.raises(ContractError, match=r"column\(s\) \['url'\] not found"):
        sample_documents(str(no_url), config())


def test_cli_reports_a_missing_input_without_a_trace(tmp_path, capsys):
    assert main(["synth", "annotate", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    assert "trait: error:" in capsys.readouterr().err
    assert not (tmp_path / "out._chunks").exists()  # nothing started, nothing written


def test_each_document_gets_its_own_reproducible_seed():
    from trait.serving.client import request_sampling

    sampling = {"temperature": 1.0, "seed": 0}
    a, b = request_sampling(sampling, "doc-a"), request_sampling(sampling, "doc-b")
    assert a == request_sampling(sampling, "doc-a") and a["seed"] != b["seed"] and 0 <= a["seed"] < 2**31
    assert a["temperature"] == 1.0 and sampling == {"temperature": 1.0, "seed": 0}  # the config is not changed
    assert request_sampling({"temperature": 0.0}, "doc-a") == {"temperature": 0.0}
    assert request_sampling(sampling, "doc-a") != request_sampling({**sampling, "seed": 1}, "doc-a")
