"""Problem sets: every shipped one loads with independently counted problems; test splits are refused."""

from __future__ import annotations

import csv
import glob
import gzip
import json
from pathlib import Path

import pytest

from synth.problem_sets import (
    PROBLEM_SETS_DIR,
    TestSplitError,
    check_not_test_split,
    load_problem_set,
    load_problem_sets,
    load_problems,
    problem_id,
)
from trait import UserError
from trait.config import ConfigError

from .conftest import SHARED_DATA


def _lines(rel: str) -> list[str]:
    return [line for line in (SHARED_DATA / rel).read_text(encoding="utf-8").splitlines() if line.strip()]


def _expected_counts() -> dict[str, int]:
    """Counted with plain file reading, not with the loader."""
    math_rows = [json.loads(line) for line in _lines("benchmarks/math/train_7500_problems_answers.jsonl")]
    with open(SHARED_DATA / "benchmarks/svamp/mawps-asdiv-a_svamp_train.csv", newline="") as fh:
        svamp = sum(1 for _ in csv.DictReader(fh))
    mmlu = 0
    for p in glob.glob(str(SHARED_DATA / "benchmarks/mmlu/*/*.csv")):
        if Path(p).parent.name not in ("dev", "val"):
            continue
        with open(p, newline="") as fh:
            mmlu += sum(1 for _ in csv.reader(fh))
    labels = [json.loads(line) for line in _lines("ads/webis_generative_native_ads/responses-validation-labels.jsonl")]
    offers = {}
    abt_buy = SHARED_DATA / "ads/ecommerce_product_matching_ditto/er_magellan__Textual__Abt-Buy__train.txt.gz"
    with gzip.open(abt_buy, "rt") as fh:
        for line in fh:
            for offer in line.rstrip("\n").split("\t")[:2]:
                offers[offer.strip()] = offer.split("COL description VAL", 1)[1].split("COL price VAL")[0].strip()
    return {
        "gsm8k": len(_lines("benchmarks/gsm8k/train.jsonl")),
        "math": sum(1 for r in math_rows if str(r["answer"]).strip()),  # 2 rows have an empty answer
        "mawps_asdiv_a": svamp,
        "tabmwp": len(json.loads((SHARED_DATA / "benchmarks/tabmwp/problems_dev1k.json").read_text())),
        "mmlu": mmlu,
        "qadsm": len(_lines("ads/xglue_qadsm_de/train.tsv")),
        "webis_ad_detection": len(_lines("ads/webis_generative_native_ads/responses-validation.jsonl")),
        "webis_query_to_ad": sum(1 for r in labels if r["label"] == 1),
        "product_title": sum(1 for d in offers.values() if d),
    }


def test_every_shipped_problem_set_loads_with_the_expected_count():
    expected = _expected_counts()
    definitions = load_problem_sets()
    assert sorted(d.name for d in definitions) == sorted(expected)
    # the published figures from each SOURCE.md, as a cross-check of the independent count
    math_counts = (expected["gsm8k"], expected["mawps_asdiv_a"], expected["tabmwp"], expected["mmlu"])
    assert math_counts == (7473, 3138, 1000, 1816)
    assert (expected["qadsm"], expected["webis_ad_detection"], expected["webis_query_to_ad"]) == (9000, 3257, 1182)
    for definition in definitions:
        problems, report = load_problems(definition, SHARED_DATA)
        assert len(problems) == expected[definition.name], definition.name
        assert report.version == definition.version == 1
        assert len({p.id for p in problems}) == len(problems)
        assert all(p.task == definition.name and p.text for p in problems)
        if definition.kind == "entity_centric":
            assert all(p.entities for p in problems)


def test_fields_become_problems_exactly():
    (gsm8k,) = load_problem_sets(["gsm8k"])
    problems, _ = load_problems(gsm8k, SHARED_DATA)
    first = json.loads(_lines("benchmarks/gsm8k/train.jsonl")[0])
    assert problems[0].text == first["question"]
    assert problems[0].answer == "72"  # "#### 72" at the end of the worked solution
    assert problems[0].id == problem_id("gsm8k", "benchmarks/gsm8k/train.jsonl:1")
    svamp, _ = load_problems(load_problem_sets(["mawps_asdiv_a"])[0], SHARED_DATA)
    assert svamp[0].text.startswith("Bryan took a look at his books as well . If Bryan has 56 books in each of his 9 ")
    assert svamp[0].answer == "504"
    webis, _ = load_problems(load_problem_sets(["webis_query_to_ad"])[0], SHARED_DATA)
    response = json.loads(_lines("ads/webis_generative_native_ads/responses-validation.jsonl")[0])["response"]
    assert webis[0].answer == response[0:103].strip()  # sen_span "(0, 103)" of id 3413-000212-A
    assert webis[0].entities == ("td easy web", "td bank")
    products, report = load_problems(load_problem_sets(["product_title"])[0], SHARED_DATA)
    assert report.malformed["empty_problem"] > 0 and report.duplicates > 0
    assert all(len(p.entities) == 1 and " " not in p.entities[0] for p in products)  # the brand: first word


@pytest.mark.parametrize("path", ["benchmarks/gsm8k/test.jsonl", "benchmarks/math/test_5000_harness.jsonl",
                                  "benchmarks/tabmwp/problems_test1k.json", "benchmarks/mmlu/test/anatomy_test.csv",
                                  "ads/webis_generative_native_ads/responses-test.jsonl",
                                  "ads/xglue_qadsm_de/test.tsv", "benchmarks/svamp/SVAMP.json",
                                  "benchmarks/sat_math/agieval_sat-math.jsonl"])
def test_test_split_is_refused(path):
    with pytest.raises(TestSplitError, match="cannot seed synthetic passages"):
        check_not_test_split(path)


@pytest.mark.parametrize("path", ["benchmarks/gsm8k/train.jsonl", "benchmarks/mmlu/val/anatomy_val.csv",
                                  "ads/xglue_qadsm_de/train.tsv", "corpora/latest.jsonl"])
def test_train_files_pass(path):
    check_not_test_split(path)


def _write_task(tmp_path: Path, **changes) -> Path:
    data = json.loads(json.dumps(__import__("yaml").safe_load((PROBLEM_SETS_DIR / "gsm8k.yaml").read_text())))
    data.update(changes)
    path = tmp_path / "task.yaml"
    path.write_text(__import__("yaml").safe_dump(data))
    return path


def test_definition_errors_say_what_to_do(tmp_path):
    with pytest.raises(TestSplitError, match="its name says test"):
        load_problem_set(_write_task(tmp_path, files=["benchmarks/gsm8k/test.jsonl"]))
    with pytest.raises(TestSplitError, match="split 'test'"):
        load_problem_set(_write_task(tmp_path, split="test"))
    with pytest.raises(ConfigError, match="did you mean 'problem'"):
        load_problem_set(_write_task(tmp_path, problme="{question}"))
    with pytest.raises(ConfigError, match="needs `entity`"):
        load_problem_set(_write_task(tmp_path, kind="entity_centric"))
    with pytest.raises(UserError, match="unknown problem set"):
        load_problem_sets(["no_such_task"])


def test_malformed_rows_are_counted_per_reason(tmp_path):
    (tmp_path / "seeds").mkdir()
    rows = ['{"question": "q1", "answer": "x\\n#### 1"}', "not json", '{"question": "q3"}', "[1, 2]",
            '{"question": "q5", "answer": "no marker"}', "", '{"question": "q1", "answer": "#### 1"}']
    (tmp_path / "seeds/train.jsonl").write_text("\n".join(rows) + "\n")
    problems, report = load_problems(load_problem_set(_write_task(tmp_path, files=["seeds/train.jsonl"])), tmp_path)
    assert [(p.text, p.answer) for p in problems] == [("q1", "1"), ("q1", "1")]  # ids are by row: both kept
    assert dict(report.malformed) == {"invalid_json": 1, "missing_field": 2, "not_an_object": 1}
    assert report.files[0].blank_lines == 1 and report.files[0].records == 6
