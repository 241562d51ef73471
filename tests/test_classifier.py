"""``trait classifier train``: held-out metrics, determinism, graded labels, NaN retries, bad configurations."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.classifier import ClassifierConfig, binary_metrics, load_card, train_classifier, training_order
from trait.config import ConfigError, from_dict


def test_metrics_against_hand_computed_values():
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.4, 0.1, 0.8, 0.7])
    # Positive/negative pairs ranked right: (0.9: 3) + (0.4: beats 0.1, ties 0.4 -> 1.5) + (0.8: 3) = 7.5 of 9.
    m = binary_metrics(labels, scores)
    assert m["roc_auc"] == pytest.approx(7.5 / 9)
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


def test_the_training_file_is_shuffled_and_repeats_a_source():
    """fastText reads its file in order: examples grouped by label (positives, then sampled negatives, as
    load_examples gives them) trained the model on one class last in every epoch."""
    repeats = [1] * 50 + [3] * 50  # 50 positives once, then 50 negatives three times
    order = training_order(repeats, seed=0)
    assert sorted(order) == sorted(k for k, r in enumerate(repeats) for _ in range(r))
    assert order == training_order(repeats, seed=0) and order != training_order(repeats, seed=1)
    first_half = order[:len(order) // 2]
    assert 0.2 < sum(k < 50 for k in first_half) / len(first_half) < 0.6  # positives spread through (1/4 of lines)


def test_a_repeated_negative_source_is_written_repeat_times(small_corpus, tmp_path):
    cfg = {"name": "domain_math", "positives": [small_corpus["seed"]],
           "negatives": [{"path": small_corpus["pool"], "repeat": 3}], "seed": 3}
    card = train_classifier(from_dict(ClassifierConfig, cfg), tmp_path / "r")
    train = card["data"]["train"]
    assert train["lines"] == train["n_positive"] + 3 * (train["n"] - train["n_positive"])
    assert card["data"]["heldout"]["n"] + train["n"] == 2 * 500  # held out and counted once, as without repeat
    assert card["config"]["negatives"][0]["repeat"] == 3


def test_negatives_the_first_model_scores_highest_are_dropped(small_corpus, tmp_path):
    """The pool's Pile part holds DM Mathematics documents: general-pool negatives that are in the domain."""
    import pyarrow.dataset as ds

    cfg = {"name": "domain_math", "positives": [small_corpus["seed"]], "negatives": [small_corpus["pool"]],
           "seed": 3, "drop_negatives": 0.04}
    card = train_classifier(from_dict(ClassifierConfig, cfg), tmp_path / "d")
    plain = train_classifier(from_dict(ClassifierConfig, {**cfg, "drop_negatives": 0.0}), tmp_path / "p")
    train = card["data"]["train"]
    dropped = (tmp_path / "d" / "dropped_negatives.txt").read_text().split()
    negatives = plain["data"]["train"]["n"] - plain["data"]["train"]["n_positive"]
    assert len(dropped) == train["negatives_dropped"] == round(0.04 * negatives) > 0
    assert train["n"] == plain["data"]["train"]["n"] - len(dropped)
    assert train["n_positive"] == plain["data"]["train"]["n_positive"]
    trained_on = set((tmp_path / "d" / "train_ids.txt").read_text().split())
    assert dropped == sorted(dropped) and set(dropped) <= trained_on  # they stay training ids for overlap checks
    assert not (tmp_path / "p" / "dropped_negatives.txt").exists() and card["model_sha1"] != plain["model_sha1"]
    texts = dict(zip(*ds.dataset(small_corpus["pool"], format="parquet", exclude_invalid_files=True)
                     .to_table(columns=["id", "text"]).to_pydict().values()))
    math = re.compile(r"In (mathematics|abstract algebra)|Let \w+\(\w\) =")  # Wikipedia math, DM Mathematics
    share = sum(bool(math.search(texts[i])) for i in dropped) / len(dropped)
    assert share > 0.25 and share > 5 * sum(bool(math.search(t)) for t in texts.values()) / len(texts), share


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


@pytest.mark.parametrize(("setting", "message"), [
    ({"epoch": 0}, "epoch must be an integer in \\[1, 2147483647\\]"),
    ({"lr": -1}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number|lr: expected a finite number"),
    ({"lr": float("inf")}, "lr must be a positive number|lr: expected a finite number"),
    ({"bucket": 0}, "bucket must be >= 1 with word_ngrams 2"),
    ({"bucket": -1, "word_ngrams": 1}, "bucket must be an integer in \\[0, "),
    ({"dim": -5}, "dim must be an integer in \\[1, "),
    ({"dim": 2**31}, "dim must be an integer in \\[1, "),
    ({"word_ngrams": 0}, "word_ngrams must be an integer in \\[1, "),
    ({"min_count": 0}, "min_count must be an integer in \\[1, "),
    ({"bucket": 10**8, "dim": 100}, "37.3 GiB of n-gram embeddings; at most 8 GiB"),
    ({"seed": 2**40}, "seed must fit fastText's 32-bit int"),
    ({"version": 0}, "version must be >= 1"),
    ({"negative_ratio": float("nan")}, "negative_ratio must be a positive number|negative_ratio: expected a finite"),
    ({"max_retries": -1}, "max_retries must be >= 0"),
    ({"train_max_chars": 0}, "train_max_chars must be >= 1, or null"),
    ({"heldout_fraction": float("nan")}, "heldout_fraction must be in \\(0, 1\\)|heldout_fraction: expected a finite"),
    ({"positives": [{"path": "p", "max_docs": 0}]}, "p: max_docs must be a positive number of documents, or null"),
    ({"negatives": [{"path": "n", "max_docs": -3}]}, "n: max_docs must be a positive number of documents, or null"),
    ({"drop_negatives": 0.5}, "drop_negatives must be a share in \\[0, 0.5\\), e.g. 0.02; got 0.5"),
    ({"drop_negatives": -0.1}, "drop_negatives must be a share in \\[0, 0.5\\)"),
    ({"negatives": [{"path": "n", "repeat": 0}]}, "n: repeat must be an integer in \\[1, 1000\\], got 0"),
    ({"positives": [{"path": "p", "repeat": 5000}]}, "p: repeat must be an integer in \\[1, 1000\\], got 5000"),
])
def test_nonsense_training_settings_are_refused_before_any_work(setting, message):
    """Each of these trained or crashed before: epoch 0 or lr -1 gave an AUC 0.5 model, dim -5 a MemoryError, a
    max_docs of 0 or -3 meant every document or all but 3."""
    with pytest.raises(ConfigError, match=message) as caught:
        from_dict(ClassifierConfig, {"name": "x", "positives": ["p"], "negatives": ["n"], **setting})
    assert "\n" not in str(caught.value)


def test_settings_at_the_edges_are_accepted():
    cfg = from_dict(ClassifierConfig, {"name": "x", "positives": [{"path": "p", "max_docs": 1}], "negatives": ["n"],
                                       "bucket": 0, "word_ngrams": 1, "seed": -5, "train_max_chars": None})
    assert cfg.positives[0].max_docs == 1 and cfg.negatives[0].max_docs is None


def test_a_min_count_that_leaves_no_word_is_refused(small_corpus, tmp_path):
    cfg = {"name": "domain_math", "positives": [small_corpus["seed"]], "negatives": [small_corpus["pool"]],
           "min_count": 10**6}
    with pytest.raises(ConfigError, match="no word of the training data occurs min_count 1000000 times"):
        train_classifier(from_dict(ClassifierConfig, cfg), tmp_path / "m")


def _copy(model_dir, to):
    import shutil

    shutil.copytree(model_dir, to)
    card = json.loads((to / "card.json").read_text())
    return card, to / card["model_file"]


def test_a_model_file_that_does_not_match_its_card_is_refused(classifiers, tmp_path):
    card, bin_path = _copy(classifiers[0], tmp_path / "truncated")
    bin_path.write_bytes(bin_path.read_bytes()[:100])  # fastText hangs loading this one
    with pytest.raises(ConfigError, match=f"{bin_path} is corrupt or was replaced: its sha1 is [0-9a-f]{{40}}, "):
        load_card(tmp_path / "truncated")
    card, bin_path = _copy(classifiers[0], tmp_path / "missing")
    bin_path.unlink()
    with pytest.raises(ConfigError, match=f"{bin_path} \\(named by .*card.json\\) does not exist"):
        load_card(tmp_path / "missing")
    # A card without model_sha1 cannot vouch for its file: the message gives the sha1 to add.
    card, bin_path = _copy(classifiers[0], tmp_path / "old")
    sha1 = card.pop("model_sha1")
    (tmp_path / "old" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match=f'has no model_sha1 to check .*add "model_sha1": "{sha1}"'):
        load_card(tmp_path / "old")
    (tmp_path / "old" / "card.json").write_text(json.dumps({**card, "model_sha1": sha1}))
    assert load_card(tmp_path / "old")[1] == bin_path
    (tmp_path / "old" / "card.json").write_text("{not json")
    with pytest.raises(ConfigError, match="card.json is not JSON"):
        load_card(tmp_path / "old")


def test_a_rerun_over_a_corrupt_model_trains_it_again(classifiers, small_corpus, tmp_path):
    """The fixture's domain classifier, rerun with its config into a copy whose .bin is garbage: trained again
    (to the same bytes), not reused."""
    card, bin_path = _copy(classifiers[0], tmp_path / "m")
    bin_path.write_bytes(b"garbage")
    cfg = from_dict(ClassifierConfig, card["config"])
    again = train_classifier(cfg, tmp_path / "m")
    assert again["model_sha1"] == card["model_sha1"] and load_card(tmp_path / "m")[0] == again
