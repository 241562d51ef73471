"""The quality levers of docs/quality-validation.md, judged on the labelled web documents of one part (dev or test).

    python infra/configs/validation/quality_levers.py --part dev [--work runs/validation/quality/work]

Prints one markdown row per scorer: ROC-AUC of good (positive) against bad (negative) documents with its 95%
stratified bootstrap interval, and the recall of good documents at the thresholds that keep 3% and 10% of the bad
ones (``spark_jobs.classifier_eval.summarise``, what ``trait classifier evaluate`` reports). A fastText classifier
trained on a few hundred documents varies with its sample, seed and fold split: its rows (and the ensembles') are
the means over ``--repeats`` cross-fits, each with its own seed and folds, with the range of their ROC-AUCs. The
last column is the ROC-AUC's difference from the heuristic's with a 95% paired bootstrap interval (the same
resampled documents for both; fastText scorers: the mean difference over the cross-fits). Scorers:

- the rule-based signals ``score_quality_heuristic_v1`` and ``score_quality_heuristic_math_v1``
  (``spark_jobs.quality_signals``), and each filter of the first alone (1 passed, 0 failed);
- fastText quality classifiers, one per recipe below, trained as ``trait classifier train`` trains them (same
  sampling, split, normaliser and settings) but cross-fitted: the labelled documents' pages fall in two folds by a
  hash, and each document is scored by the model trained without every chunk of its fold's pages (the Pile
  sample's pages are cut into chunks, and a recipe with web positives would otherwise have seen the rest of the
  page of a labelled chunk);
- per recipe, two ensembles with the heuristic: the mean of the two scores, and the mean of the fastText score's
  rank (over the documents judged, scaled to [0, 1]) and the heuristic score.

A second table gives both signals on the demo's seed (PlanetMath, OpenStax) and Wikipedia: the mean score and the
share of documents passing all four filters, on ``--sample`` documents of each source (the smallest ids).

``--work`` holds the demo's ``seed`` and ``pool`` (``trait ingest`` of infra/configs/demo/ingest_{seed,pool}.yaml);
the labelled documents are runs/validation/quality_{good,bad} and their pages come from build_quality_set.py's
files in runs/validation/raw.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from spark_jobs.classifier import ClassifierConfig, _fit, _hash01, load_examples, positive_probability
from spark_jobs.classifier_eval import in_part, summarise
from spark_jobs.quality_signals import FILTERS, HEURISTIC_MATH_V1, HEURISTIC_V1, filter_verdicts, score
from spark_jobs.text import normalise_many
from trait.config import from_dict
from trait.contract import finished_dataset
from trait.ranks import roc_auc

REFERENCE = ["web/pile/Wikipedia (en)", "web/pile/PubMed Abstracts", "web/pile/NIH ExPorter",
             "web/pile/USPTO Backgrounds"]
CRAWL = ["web/cc/", "web/news/", "web/pile/Pile-CC", "web/pile/OpenWebText2", "web/pile/OpenSubtitles"]
RECIPES = {  # positives and negatives as in a classifier config; {work} is --work
    # infra/configs/demo/classifier_quality.yaml
    "demo": {"positives": [{"path": "{work}/seed", "sources": ["math/openstax"], "max_docs": 250},
                           {"path": "{work}/pool", "sources": ["wiki/"], "max_docs": 250},
                           {"path": "{work}/pool", "sources": REFERENCE}],
             "negatives": [{"path": "{work}/pool", "sources": CRAWL}]},
    # the demo recipe without the OpenStax textbook positives (math, not web quality)
    "no_openstax": {"positives": [{"path": "{work}/pool", "sources": ["wiki/"], "max_docs": 250},
                                  {"path": "{work}/pool", "sources": REFERENCE}],
                    "negatives": [{"path": "{work}/pool", "sources": CRAWL}]},
    # GPT-3's choice: curated web text (OpenWebText2: pages linked from Reddit, news) with Wikipedia as positives
    "webtext_positives": {
        "positives": [{"path": "{work}/pool", "sources": ["wiki/"], "max_docs": 250},
                      {"path": "{work}/pool", "sources": [*REFERENCE, "web/pile/OpenWebText2", "web/news/",
                                                          "web/cc/c4-guardian"]}],
        "negatives": [{"path": "{work}/pool", "sources": ["web/cc/dolma", "web/cc/c4", "web/cc/redpajama",
                                                          "web/pile/Pile-CC", "web/pile/OpenSubtitles"]}]},
}
KEEP = [3.0, 10.0]


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _fold(page: str, repeat: int) -> int:
    return hashlib.sha1(f"quality-levers:{repeat}:{page}".encode()).digest()[0] & 1


def labelled(validation: Path, part: str) -> tuple[list[str], list[str], np.ndarray]:
    """Ids, texts and labels (1 good, 0 bad) of the labelled documents in ``part``."""
    ids, texts, labels = [], [], []
    for name, label in (("quality_good", 1), ("quality_bad", 0)):
        table = finished_dataset(str(validation / name), ("id", "text")).to_table(columns=["id", "text"])
        for ident, text in zip(table["id"].to_pylist(), table["text"].to_pylist()):
            if in_part(ident, part):
                ids.append(ident), texts.append(text), labels.append(label)
    return ids, texts, np.array(labels)


def _normalised(texts: list[str]) -> list[str]:
    return normalise_many(pa.array(texts, pa.large_string()))


def cross_fitted(recipe: dict, work: str, texts: list[str], pages: dict[str, str], repeat: int) -> np.ndarray:
    """P(positive) of each text from the recipe's classifier (seed ``repeat``) trained without the pages of the
    text's fold."""
    spec = json.loads(json.dumps(recipe).replace("{work}", work))
    cfg = from_dict(ClassifierConfig, {"name": "quality_lever", "negative_ratio": 0.8, "seed": repeat, **spec})
    examples, _ = load_examples(cfg)
    scores = np.zeros(len(texts))
    for fold in (0, 1):
        held = {p for p in pages.values() if _fold(p, repeat) == fold}
        train = [row for row in examples if _hash01(cfg.seed, "heldout", row[0]) >= cfg.heldout_fraction
                 and pages.get(_sha1(row[1])) not in held]
        model, _, _ = _fit(cfg, [row[2] for row in train], _normalised([row[1][:cfg.train_max_chars] for row in train]),
                           [row[3] for row in train])
        mine = [i for i, t in enumerate(texts) if _fold(pages[_sha1(t)], repeat) == fold]
        scores[mine] = positive_probability(model, _normalised([texts[i] for i in mine]))
    return scores


def paired_difference(y: np.ndarray, runs: list[np.ndarray], reference: np.ndarray, reps: int) -> list[float]:
    """95% interval of mean-over-runs ROC-AUC minus the reference's, over stratified bootstrap resamples shared by
    both (positives and negatives resampled apart, as ``classifier_eval.auc_interval``)."""
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(reps):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        diffs.append(np.mean([roc_auc(y[idx], s[idx]) for s in runs]) - roc_auc(y[idx], reference[idx]))
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def math_retention(work: str, sample: int) -> None:
    """Both signals on ``sample`` documents of each math seed source and of Wikipedia, as a markdown table."""
    import pyarrow.compute as pc

    print(f"\n| source ({sample} documents each) | " + " | ".join(
        f"{c}: mean / all four passed" for c in (HEURISTIC_V1, HEURISTIC_MATH_V1)) + " |\n|---|---|---|")
    for dataset, source in (("seed", "math/planetmath"), ("seed", "math/openstax"), ("pool", "wiki/enwiki-2015")):
        table = finished_dataset(f"{work}/{dataset}", ("id", "text")).to_table(columns=["id", "text", "source"])
        table = table.filter(pc.equal(table["source"], source)).sort_by("id").slice(0, sample)
        cells = [score(c, table["text"].to_pylist()) for c in (HEURISTIC_V1, HEURISTIC_MATH_V1)]
        print(f"| {source} | " + " | ".join(f"{v.mean():.2f} / {(v == 1).mean():.2f}" for v in cells) + " |")


def _rank01(x: np.ndarray) -> np.ndarray:
    order = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    return order / max(len(x) - 1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["dev", "test", "all"], default="dev")
    ap.add_argument("--work", default="runs/validation/quality/work")
    ap.add_argument("--validation", default="runs/validation")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5, help="cross-fits of each fastText recipe")
    ap.add_argument("--sample", type=int, default=80, help="documents per source in the math table (0: no table)")
    args = ap.parse_args()
    validation = Path(args.validation)
    pages = {}
    for name in ("good", "bad", "pool_rest"):
        with open(validation / "raw" / f"quality_{name}.jsonl", encoding="utf-8") as fh:
            pages.update((_sha1(r["text"]), r["page"]) for r in map(json.loads, fh))
    ids, texts, y = labelled(validation, args.part)
    verdicts = [filter_verdicts(t) for t in texts]
    passed = np.array([[v[f] is None for f in FILTERS] for v in verdicts], dtype=float)
    heuristic = passed.mean(axis=1)
    scorers = {HEURISTIC_V1: [heuristic], **{f"  {f} alone": [passed[:, j]] for j, f in enumerate(FILTERS)},
               HEURISTIC_MATH_V1: [score(HEURISTIC_MATH_V1, texts).astype(float)]}
    for name, recipe in RECIPES.items():
        fits = [cross_fitted(recipe, args.work, texts, pages, r) for r in range(args.repeats)]
        scorers[f"fastText {name}"] = fits
        scorers[f"  mean(fastText {name}, heuristic)"] = [(ft + heuristic) / 2 for ft in fits]
        scorers[f"  mean(rank of fastText {name}, heuristic)"] = [(_rank01(ft) + heuristic) / 2 for ft in fits]
    print(f"part {args.part}: {int(y.sum())} good, {int(len(y) - y.sum())} bad documents; fastText rows: means "
          f"over {args.repeats} cross-fits\n")
    print("| scorer | ROC-AUC | range over cross-fits | 95% CI | "
          + " | ".join(f"good kept / bad kept @{k:g}% bad" for k in KEEP) + " | minus heuristic (95% CI) |")
    print("|---|---|---|---|" + "---|" * (len(KEEP) + 1))
    for name, runs in scorers.items():
        results = [summarise([("good", "positive", s[y == 1]), ("bad", "negative", s[y == 0])], KEEP,
                             args.bootstrap, 0)["sets"] for s in runs]
        aucs = [r["good"]["roc_auc"] for r in results]
        low, high = np.mean([r["good"]["roc_auc_ci95"] for r in results], axis=0)
        kept = " | ".join(f"{np.mean([r['good']['recall_at_keep'][f'{k:g}'] for r in results]):.2f} / "
                          f"{np.mean([r['bad']['kept_at_keep'][f'{k:g}'] for r in results]):.2f}" for k in KEEP)
        spread = f"{min(aucs):.3f}-{max(aucs):.3f}" if len(runs) > 1 else ""
        diff = np.mean(aucs) - roc_auc(y, heuristic)
        d_low, d_high = paired_difference(y, runs, heuristic, args.bootstrap) if diff else (0.0, 0.0)
        print(f"| {name} | {np.mean(aucs):.3f} | {spread} | {low:.3f}-{high:.3f} | {kept} | "
              f"{diff:+.3f} ({d_low:+.3f} to {d_high:+.3f}) |")
    if args.sample:
        math_retention(args.work, args.sample)


if __name__ == "__main__":
    main()
