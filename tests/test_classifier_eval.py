"""``trait classifier evaluate``: metrics against hand-computed values, the card's validation block, and the
refusal of a validation set that holds training documents."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from spark_jobs.classifier import TRAIN_IDS, ClassifierConfig, load_card, positive_probability, train_classifier
from spark_jobs.classifier_eval import (
    EvaluateConfig,
    ValidationSet,
    evaluate_classifier,
    in_part,
    keep_thresholds,
    markdown,
    summarise,
)
from spark_jobs.text import normalise
from trait.config import ConfigError, from_dict
from trait.contract import write_text_dataset

MATH = ["theorem", "proof", "integral", "derivative", "matrix", "vector", "prime", "lemma", "equation", "polynomial",
        "limit", "series"]
OTHER = ["football", "city", "river", "population", "album", "singer", "election", "village", "film", "painter",
         "league", "church"]


def _docs(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words + OTHER[:3] + MATH[:3]) for _ in range(30)) + f" doc{seed}x{i}"
            for i in range(n)]


def test_metrics_against_hand_computed_values():
    pos_a = np.array([0.9, 0.8, 0.3])
    pos_b = np.array([0.6])
    neg = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.05, 0.15, 0.25])
    out = summarise([("a", "positive", pos_a), ("b", "positive", pos_b), ("n", "negative", neg)],
                    keep=[10.0, 30.0], reps=0, seed=0)
    # Keeping 10% of 10 negatives keeps the top one (0.7); 30% keeps 0.5, 0.6, 0.7.
    assert out["thresholds"] == {"10": 0.7, "30": 0.5}
    a = out["sets"]["a"]
    # a vs 10 negatives: 0.9 and 0.8 beat all 10 (20 pairs); 0.3 beats 5 (0.05 .. 0.25) and ties 0.3 (0.5).
    assert a["roc_auc"] == pytest.approx(25.5 / 30)
    assert a["recall_at_keep"] == {"10": pytest.approx(2 / 3), "30": pytest.approx(2 / 3)}
    # b: 0.6 beats 8, ties 1 -> 8.5 / 10; kept at 0.5 but not at 0.7.
    assert out["sets"]["b"]["roc_auc"] == pytest.approx(0.85)
    assert out["sets"]["b"]["recall_at_keep"] == {"10": 0.0, "30": 1.0}
    # The negative set against the 4 positives pooled: the AUC over 40 pairs, and the share of it kept.
    assert out["sets"]["n"]["roc_auc"] == pytest.approx((25.5 + 8.5) / 40)
    assert out["sets"]["n"]["kept_at_keep"] == {"10": pytest.approx(0.1), "30": pytest.approx(0.3)}
    assert out["sets"]["a"]["roc_auc_ci95"] is None


def test_keep_threshold_is_selects_percentile_cut_with_ties():
    # 4 negatives tie at the top: keeping 1% of 100 keeps all four (the cut never splits a tie).
    negatives = np.r_[np.linspace(0, 0.5, 96), [0.9] * 4]
    assert keep_thresholds(negatives, [1.0, 5.0]) == {"1": 0.9, "5": 0.5}


def test_bootstrap_interval_brackets_the_auc():
    rng = np.random.default_rng(0)
    out = summarise([("p", "positive", rng.normal(1, 1, 200)), ("n", "negative", rng.normal(0, 1, 300))],
                    keep=[3.0], reps=200, seed=1)
    s = out["sets"]["p"]
    low, high = s["roc_auc_ci95"]
    assert low < s["roc_auc"] < high and high - low < 0.15


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    train_pos = write_text_dataset(root / "train_pos", "math/a", _docs(MATH, 150, 1))
    train_neg = write_text_dataset(root / "train_neg", "wiki/a", _docs(OTHER, 150, 2))
    cfg = from_dict(ClassifierConfig, {"name": "dom", "positives": [train_pos], "negatives": [train_neg],
                                       "min_count": 1, "seed": 0})
    train_classifier(cfg, root / "model")
    unseen = write_text_dataset(root / "unseen_pos", "math/b", _docs(MATH, 40, 3))
    general = write_text_dataset(root / "unseen_neg", "wiki/b", _docs(OTHER, 60, 4))
    return {"root": root, "model": str(root / "model"), "train_pos": train_pos, "unseen": unseen, "general": general}


def test_evaluate_writes_card_block_and_files(trained):
    cfg = from_dict(EvaluateConfig, {"model": trained["model"], "positive": [f"{trained['unseen']}:math/"],
                                     "negative": [trained["general"]], "bootstrap": 50, "samples": 2})
    result = evaluate_classifier(cfg)
    # The same figures from the model's own scores, computed here by hand.
    import fasttext

    from trait.contract import finished_dataset

    card, bin_path = load_card(trained["model"])
    model = fasttext.load_model(str(bin_path))
    texts = {k: finished_dataset(trained[k]).to_table().column("text").to_pylist() for k in ("unseen", "general")}
    pos, neg = (positive_probability(model, [normalise(t) for t in texts[k]]).astype(float)
                for k in ("unseen", "general"))
    s = result["sets"]["unseen_pos:math/"]
    pairs = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert s["roc_auc"] == pytest.approx(pairs / (len(pos) * len(neg)))
    t3 = np.sort(neg)[::-1][1]  # 3% of 60 negatives: the top 1.8 -> the cut keeps the top 2
    assert result["thresholds"]["3"] == pytest.approx(t3)
    assert s["recall_at_keep"]["3"] == pytest.approx((pos >= t3).mean())
    assert s["n"] == 40 and result["sets"]["unseen_neg"]["n"] == 60
    assert [d["score"] for d in s["samples"]] == pytest.approx(sorted(pos)[:2], abs=1e-6)
    on_disk = json.loads((trained["root"] / "model/card.json").read_text())
    assert on_disk["validation"]["sets"]["unseen_pos:math/"]["roc_auc"] == s["roc_auc"]
    assert "samples" not in on_disk["validation"]["sets"]["unseen_pos:math/"]
    assert "| unseen_pos:math/ | positive | 40 |" in (trained["root"] / "model/validation.md").read_text()
    # The validation block leaves the card a score job fingerprints unchanged.
    assert load_card(trained["model"])[0] == card


def test_overlapping_set_is_refused_or_its_training_documents_dropped(trained):
    ids = (trained["root"] / "model" / TRAIN_IDS).read_text().split()
    assert 0 < len(ids) < 300  # the training split only, not the held-out documents
    spec = {"model": trained["model"], "positive": [trained["train_pos"]], "negative": [trained["general"]],
            "bootstrap": 0}
    with pytest.raises(ConfigError, match=r"train_pos holds \d+ of the 150 documents .* trained on"):
        evaluate_classifier(from_dict(EvaluateConfig, spec))
    result = evaluate_classifier(from_dict(EvaluateConfig, {**spec, "exclude_training": True}))
    s = result["sets"]["train_pos"]
    assert s["training_overlap_dropped"] > 0 and s["n"] == 150 - s["training_overlap_dropped"]


def test_sets_from_flags_and_bad_configs():
    assert ValidationSet.from_spec("/d/wiki:math/a,math/b", "negative").sources == ["math/a", "math/b"]
    assert ValidationSet.from_spec("/d/wiki", "positive").title() == "wiki"
    with pytest.raises(ConfigError, match="at least one positive and one negative"):
        from_dict(EvaluateConfig, {"model": "m", "positive": ["/a"]})
    with pytest.raises(ConfigError, match="distinct name"):
        from_dict(EvaluateConfig, {"model": "m", "positive": ["/a"], "negative": ["/x/a"]})
    with pytest.raises(ConfigError, match="label must be"):
        from_dict(EvaluateConfig, {"model": "m", "sets": [{"path": "/a", "label": "maybe"}], "negative": ["/b"]})


def test_dev_and_test_parts_split_every_set_in_two_fixed_halves(trained):
    """Recipes and thresholds are tuned on ``part: dev`` and reported once on ``part: test``: the halves are
    disjoint, together the whole set, and the same on every run."""
    spec = {"model": trained["model"], "positive": [trained["unseen"]], "negative": [trained["general"]],
            "bootstrap": 0, "samples": 100}
    ids = {}
    for part in ("dev", "test", "all"):
        result = evaluate_classifier(from_dict(EvaluateConfig, {**spec, "part": part}))
        assert result["part"] == part
        ids[part] = {d["id"] for s in result["sets"].values() for d in s["samples"]}
    assert ids["dev"] and ids["test"] and not ids["dev"] & ids["test"]
    assert ids["dev"] | ids["test"] == ids["all"] and len(ids["all"]) == 100
    assert all(in_part(i, "dev") for i in ids["dev"]) and not any(in_part(i, "dev") for i in ids["test"])
    assert "part: dev" in markdown(evaluate_classifier(from_dict(EvaluateConfig, {**spec, "part": "dev"})))
    with pytest.raises(ConfigError, match="part must be one of all, dev, test"):
        from_dict(EvaluateConfig, {**spec, "part": "train"})
