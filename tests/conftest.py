"""Shared fixtures: one local Spark session, the shared data directory, small real datasets cut from it, and the
trainer's tiny model and contract datasets."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

from trait.benchmarks import default_shared_data

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(default_shared_data()).resolve()  # the product's resolver: $TRAIT_SHARED_DATA, else ../shared/data


def pytest_configure(config):
    if not (SHARED_DATA / "corpora").is_dir():
        raise pytest.UsageError(f"shared data not found at {SHARED_DATA}; set TRAIT_SHARED_DATA")


def read_jsonl(path: Path, n: int, start: int = 0) -> list[dict]:
    """The records ``start .. start+n`` of a (gzipped) JSONL file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, start, start + n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="session")
def spark():
    from spark_jobs.session import get_spark

    session = get_spark("trait-tests", "local[2]", {"spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def small_corpus(spark, tmp_path_factory):
    """Finished datasets cut from the shared data: ``seed`` (400 PlanetMath + 100 OpenStax entries) and ``pool``
    (600 Wikipedia articles and 150 Pile documents)."""
    from spark_jobs.ingest import IngestConfig, run_ingest
    from trait.config import from_dict

    root = tmp_path_factory.mktemp("corpus")
    planetmath = read_jsonl(SHARED_DATA / "corpora/math/planetmath/planetmath_entries.jsonl.gz", 400)
    openstax = read_jsonl(SHARED_DATA / "corpora/math/openstax/college_algebra_trig_precalculus_2e.jsonl.gz", 100)
    wiki = read_jsonl(SHARED_DATA / "corpora/general/enwiki_2015_part1.jsonl.gz", 600)
    pile = read_jsonl(SHARED_DATA / "corpora/general/web_samples/dsir_toy_pile_data.jsonl", 150)
    inputs = {"seed": [(write_jsonl(root / "raw/planetmath.jsonl", planetmath), "math/planetmath", "text"),
                       (write_jsonl(root / "raw/openstax.jsonl", openstax), "math/openstax", "text")],
              "pool": [(write_jsonl(root / "raw/wiki.jsonl", wiki), "wiki/enwiki-2015", "text"),
                       (write_jsonl(root / "raw/pile.jsonl", pile), "web/pile", "contents")]}
    out = {}
    for name, specs in inputs.items():
        cfg = from_dict(IngestConfig, {"inputs": [{"path": str(p), "source": s, "text_field": f}
                                                  for p, s, f in specs]})
        run_ingest(spark, cfg, str(root / name))
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="session")
def classifiers(small_corpus, tmp_path_factory):
    """A domain classifier (seed vs Wikipedia) and a quality classifier (OpenStax + Wikipedia vs the Pile)."""
    from spark_jobs.classifier import ClassifierConfig, train_classifier
    from trait.config import from_dict

    root = tmp_path_factory.mktemp("models")
    domain = from_dict(ClassifierConfig, {"name": "domain_math", "positives": [small_corpus["seed"]],
                                          "negatives": [small_corpus["pool"]], "seed": 1})
    quality = from_dict(ClassifierConfig, {
        "name": "quality_edu",
        "positives": [{"path": small_corpus["seed"], "sources": ["math/openstax"]},
                      {"path": small_corpus["pool"], "sources": ["wiki/"], "max_docs": 100}],
        "negatives": [{"path": small_corpus["pool"], "sources": ["web/pile"]}], "seed": 1})
    train_classifier(domain, root / "domain_math")
    train_classifier(quality, root / "quality_edu")
    return [str(root / "domain_math"), str(root / "quality_edu")]


@pytest.fixture(scope="session")
def scored(spark, small_corpus, classifiers, tmp_path_factory):
    """The pool scored by both classifiers."""
    from spark_jobs.score import ScoreConfig, run_score
    from trait.config import from_dict

    out = str(tmp_path_factory.mktemp("scored") / "scored")
    run_score(spark, from_dict(ScoreConfig, {"models": classifiers}), small_corpus["pool"], out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama (trait.tiny_model, ~344k parameters) in a Hugging Face directory."""
    from trait.tiny_model import TinyModelConfig, build_tiny_model

    return build_tiny_model(TinyModelConfig(), cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> dict[str, str]:
    """The TRAIT sources as finished contract datasets: in-domain seed (PlanetMath), selected (OpenStax), general
    replay (Wikipedia), and synthetic task-oriented passages (GSM8K train problems with their worked solutions stand
    in for them)."""
    from trait.contract import write_text_dataset

    root = tmp_path_factory.mktemp("data")
    corpora = SHARED_DATA / "corpora"
    gsm8k = read_jsonl(SHARED_DATA / "benchmarks/gsm8k/train.jsonl", 400)
    return {
        "in_domain": write_text_dataset(root / "in_domain", "math/planetmath", [
            r["text"] for r in read_jsonl(corpora / "math/planetmath/planetmath_entries.jsonl.gz", 200)]),
        "selected": write_text_dataset(root / "selected", "math/openstax", [
            r["text"] for r in read_jsonl(corpora / "math/openstax/college_algebra_trig_precalculus_2e.jsonl.gz",
                                          100)]),
        "replay_general": write_text_dataset(root / "replay_general", "wiki/enwiki-2015", [
            r["text"] for r in read_jsonl(corpora / "general/enwiki_2015_part1.jsonl.gz", 100)]),
        "synthetic": write_text_dataset(root / "synthetic", "synth/passage_v1",
                                    [f"{r['question']}\n{r['answer']}" for r in gsm8k]),
    }
