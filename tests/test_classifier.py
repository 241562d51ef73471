"""``trait classifier train``: held-out metrics, determinism, graded labels, NaN retries, bad configurations."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.classifier import ClassifierConfig, binary_metrics, load_card, roc_auc, train_classifier
from trait.config import ConfigError, from_dict


def test_metrics_against_hand_computed_values():
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.4, 0.1, 0.8, 0.7])
    # Positive/negative pairs ranked right: (0.9: 3) + (0.4: beats 0.1, ties 0.4 -> 1.5) + (0.8: 3) = 7.5 of 9.
    assert roc_auc(labels, scores) == pytest.approx(7.5 / 9)
    m = binary_metrics(labels, scores)
    assert (m["precision"], m["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))


def test_domain_classifier_separates_math_and_is_reproducible(small_corpus, tmp_path):
    cfg = {"name": "domain_math", "positives": [small_corpus["seed"]], "negatives": [small_corpus["pool"]],
           "seed": 3}
    card = train_classifier(from_dict(ClassifierConfig, cfg), tmp_path / "a")
    again = train_classifier(from_dict(ClassifierConfig, cfg), tmp_path / "b")
    m = card["heldout_metrics"]
    assert m["roc_auc"] > 0.95 and m["f1"] > 0.85, m
    # Same seed, same data: the same model, byte for byte, even trained twice in one process (fasttext-numpy2
    # left 90% of the input matrix uninitialised with one thread, so a second run in a process could diverge).
    assert card["model_sha1"] == again["model_sha1"]
    assert card["heldout_metrics"] == again["heldout_metrics"]
    assert card["score_column"] == "score_domain_math_v1"
    assert card["data"]["heldout"]["n"] + card["data"]["train"]["n"] == 2 * 500  # 500 positives, ratio 1
    on_disk, bin_path = load_card(tmp_path / "a")
    assert on_disk == card and bin_path.exists()
    # A rerun with the same config and inputs reuses the model: the file (and scores fingerprinted on it) stay.
    mtime = bin_path.stat().st_mtime_ns
    assert train_classifier(from_dict(ClassifierConfig, cfg), tmp_path / "a") == card
    assert bin_path.stat().st_mtime_ns == mtime
    # Another config retrains.
    changed = train_classifier(from_dict(ClassifierConfig, {**cfg, "seed": 4}), tmp_path / "a")
    assert changed["fingerprint"] != card["fingerprint"] and bin_path.stat().st_mtime_ns != mtime


def _labelled(tmp_path, small_corpus, grades):
    """The seed's documents with the given grades cycled over them, as a finished dataset."""
    from trait.contract import finished_dataset

    table = finished_dataset(small_corpus["seed"]).to_table()
    table = table.append_column("edu", pa.array([grades[i % len(grades)] for i in range(table.num_rows)]))
    out = tmp_path / "labelled"
    out.mkdir()
    pq.write_table(table, out / "part-00000.parquet")
    (out / "manifest.json").write_text("{}")
    (out / "_SUCCESS").write_text("")
    return str(out)


def test_graded_labels_are_bucketed_and_non_binary_labels_need_a_bucket(small_corpus, tmp_path):
    path = _labelled(tmp_path, small_corpus, [0, 1, 2, 3, 4, 5])
    cfg = {"name": "quality_edu", "labelled": [path], "label_column": "edu", "positive_min_grade": 3}
    card = train_classifier(from_dict(ClassifierConfig, cfg), tmp_path / "q")
    n = card["data"]["train"]["n"] + card["data"]["heldout"]["n"]
    positives = card["data"]["train"]["n_positive"] + card["data"]["heldout"]["n_positive"]
    assert n == 500 and positives == sum(1 for i in range(500) if i % 6 >= 3)  # grades 3, 4 and 5
    with pytest.raises(ConfigError, match="not binary; set positive_min_grade"):
        train_classifier(from_dict(ClassifierConfig, {**cfg, "positive_min_grade": None}), tmp_path / "q2")


def test_nan_divergence_is_retried_with_a_lower_learning_rate(small_corpus, tmp_path):
    # lr=1e4 makes fastText raise "Encountered NaN" here; ten halvings (to ~10) reach a rate it survives.
    cfg = {"name": "domain_math", "positives": [small_corpus["seed"]], "negatives": [small_corpus["pool"]],
           "lr": 1e4, "max_retries": 20}
    card = train_classifier(from_dict(ClassifierConfig, cfg), tmp_path / "m")
    assert card["training"]["attempts"] > 1
    assert card["training"]["lr_used"] == 1e4 / 2 ** (card["training"]["attempts"] - 1)
    with pytest.raises(ConfigError, match="diverged"):
        train_classifier(from_dict(ClassifierConfig, {**cfg, "max_retries": 1}), tmp_path / "m2")


def test_bad_classifier_configurations_are_refused(small_corpus, tmp_path):
    with pytest.raises(ConfigError, match="either labelled datasets, or positives and negatives"):
        from_dict(ClassifierConfig, {"name": "x", "positives": [small_corpus["seed"]],
                                     "negatives": [small_corpus["pool"]], "labelled": [small_corpus["seed"]]})
    with pytest.raises(ConfigError, match="positives and negatives go together"):
        from_dict(ClassifierConfig, {"name": "x", "positives": [small_corpus["seed"]]})
    one_class = {"name": "x", "labelled": [_labelled(tmp_path, small_corpus, [1])], "label_column": "edu"}
    with pytest.raises(ConfigError, match="both classes are needed"):
        train_classifier(from_dict(ClassifierConfig, one_class), tmp_path / "o")
    with pytest.raises(ConfigError, match="has no rows"):
        train_classifier(from_dict(ClassifierConfig, {"name": "x", "positives": [small_corpus["seed"]], "negatives": [
            {"path": small_corpus["pool"], "sources": ["nowhere/"]}]}), tmp_path / "n")


def test_a_model_from_another_normaliser_is_refused(classifiers, tmp_path):
    import shutil

    shutil.copytree(classifiers[0], tmp_path / "old")
    card = json.loads((tmp_path / "old" / "card.json").read_text())
    (tmp_path / "old" / "card.json").write_text(json.dumps({**card, "normaliser": "v0"}))
    with pytest.raises(ConfigError, match="normaliser 'v0'"):
        load_card(tmp_path / "old")
