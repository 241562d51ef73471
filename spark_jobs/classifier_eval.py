"""``trait classifier evaluate``: a trained classifier against labelled validation sets it has never seen.

Each validation set is a contract dataset, optionally cut to source prefixes and sampled (a ``DataRef``), labelled
positive or negative. Scoring runs on the driver with the classifier's own normaliser and model
(``positive_probability``): validation sets are small. Every positive set is judged against all negative sets
pooled, and every negative set against all positive sets pooled:

- ROC-AUC (``trait.ranks.roc_auc``) with a stratified bootstrap CI (positives and negatives resampled apart);
- the thresholds that keep ``keep_negatives`` percent of the pooled negatives (``select``'s percentile cut over
  the negatives' scores, ``trait.ranks.cut_weight``): each positive set's recall there, each negative set's share
  kept there;
- the lowest-scoring documents of each positive set and the highest-scoring of each negative set, as samples.

A classifier records the ids it trained on (``train_ids.txt``, its sha1 and count in the card); a set that holds
any of them is refused (``exclude_training`` drops those documents instead, and the result counts them). The
results go into the card's ``validation`` block, and ``validation.json`` / ``validation.md`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from trait.config import ConfigError, field, to_dict
from trait.ranks import cut_weight, roc_auc

from .classifier import TRAIN_IDS, DataRef, _read, load_card, positive_probability
from .text import normalise_many

log = logging.getLogger(__name__)

VALIDATION_JSON, VALIDATION_MD = "validation.json", "validation.md"
LABELS = ("positive", "negative")
PARTS = ("all", "dev", "test")


@dataclass
class ValidationSet(DataRef):
    label: str = field("positive", help="positive (in the classifier's class) or negative")
    name: str | None = field(None, help="name in the results (default: the path's last part and the sources)")

    @classmethod
    def from_spec(cls, spec: str, label: str) -> ValidationSet:
        """``DATASET[:PREFIX,...]``, as the --positive / --negative flags give it."""
        path, _, prefixes = spec.partition(":")
        return cls(path=path, sources=[p for p in prefixes.split(",") if p] or None, label=label)

    def title(self) -> str:
        return self.name or Path(self.path.rstrip("/")).name + (f":{','.join(self.sources)}" if self.sources else "")

    def validate(self) -> None:
        super().validate()
        if self.label not in LABELS:
            raise ConfigError(f"{self.path}: label must be 'positive' or 'negative', got {self.label!r}")


@dataclass
class EvaluateConfig:
    model: str = field(help="a trained classifier's directory (card.json and its .bin)")
    sets: list[ValidationSet] = field(default_factory=list, help="labelled validation sets")
    positive: list[str] = field(default_factory=list, help="more positive sets, each DATASET[:PREFIX,...]")
    negative: list[str] = field(default_factory=list, help="more negative sets, each DATASET[:PREFIX,...]")
    keep_negatives: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0],
                                        help="percent of the pooled negatives each reported threshold keeps")
    bootstrap: int = field(1000, help="bootstrap resamples for the ROC-AUC's 95% interval (0: none)")
    samples: int = field(5, help="lowest-scoring positives / highest-scoring negatives shown per set")
    exclude_training: bool = field(False, help="drop documents the classifier trained on instead of refusing "
                                               "a set that holds any")
    seed: int = field(0, help="seed of the sampling (max_docs) and the bootstrap")
    part: str = field("all", help="which half of every set to use, split by a hash of the document id: 'dev' to "
                                  "tune recipes and thresholds on, 'test' to report once at the end, or 'all'")

    def all_sets(self) -> list[ValidationSet]:
        return [*self.sets, *(ValidationSet.from_spec(s, "positive") for s in self.positive),
                *(ValidationSet.from_spec(s, "negative") for s in self.negative)]

    def validate(self) -> None:
        sets = self.all_sets()
        for s in sets:
            s.validate()
        if {s.label for s in sets} != set(LABELS):
            raise ConfigError("give at least one positive and one negative validation set (sets:, --positive, "
                              "--negative)")
        titles = [s.title() for s in sets]
        if len(set(titles)) != len(titles):
            raise ConfigError(f"validation set names repeat ({titles}); give each set a distinct name")
        if not all(0 < k < 100 for k in self.keep_negatives):
            raise ConfigError(f"keep_negatives are percents in (0, 100), got {self.keep_negatives}")
        if self.bootstrap < 0 or self.samples < 0:
            raise ConfigError("bootstrap and samples must be >= 0")
        if self.part not in PARTS:
            raise ConfigError(f"part must be one of {', '.join(PARTS)}, got {self.part!r}")


def in_part(doc_id: str, part: str) -> bool:
    """Whether a document belongs to ``part``: a fixed half by a hash of its id, the same on every run."""
    if part == "all":
        return True
    dev = hashlib.sha1(f"validation-part:{doc_id}".encode()).digest()[0] < 128
    return dev == (part == "dev")


def training_ids(model_dir: Path, card: dict) -> set[str] | None:
    """The ids the classifier trained on, checked against the card's sha1; None for a classifier trained before
    they were recorded."""
    recorded = card.get("data", {}).get("train", {}).get("ids_sha1")
    if recorded is None:
        return None
    path = model_dir / TRAIN_IDS
    if not path.is_file():
        raise ConfigError(f"{path} (recorded in the card) is missing; retrain with 'trait classifier train'")
    blob = path.read_bytes()
    if hashlib.sha1(blob).hexdigest() != recorded:
        raise ConfigError(f"{path} does not match the card's ids_sha1; retrain with 'trait classifier train'")
    return set(blob.decode().split("\n")) - {""}


def auc_interval(labels: np.ndarray, scores: np.ndarray, reps: int, seed: int) -> list[float] | None:
    """95% interval of the ROC-AUC over ``reps`` stratified bootstrap resamples; None for reps 0."""
    if not reps:
        return None
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    aucs = [roc_auc(y, np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(reps)]
    return [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))]


def keep_thresholds(negatives: np.ndarray, keep: list[float]) -> dict[str, float]:
    """Per keep percent k: the score threshold that keeps the top k% of ``negatives`` (plus ties), i.e. select's
    cut at percentile 100 - k over the negatives."""
    ordered = np.sort(negatives)
    return {f"{k:g}": float(ordered[min(cut_weight(100 - k, len(ordered)), len(ordered)) - 1]) for k in keep}


def _where(ids: list[str], texts: list[str], keep) -> tuple[list[str], list[str]]:
    """The documents whose id passes ``keep``."""
    pairs = [(i, t) for i, t in zip(ids, texts) if keep(i)]
    return [i for i, _ in pairs], [t for _, t in pairs]


def _samples(ids, texts, scores, n: int, highest: bool) -> list[dict]:
    order = np.argsort(-scores if highest else scores, kind="stable")[:n]
    return [{"id": ids[i], "score": round(float(scores[i]), 6), "text": " ".join(texts[i].split())[:300]}
            for i in order]


def summarise(sets: list[tuple[str, str, np.ndarray]], keep: list[float], reps: int, seed: int) -> dict:
    """Metrics of ``(name, label, scores)`` sets: each against the other label's sets pooled."""
    pooled = {lab: np.concatenate([s for _, label, s in sets if label == lab]) for lab in LABELS}
    thresholds = keep_thresholds(pooled["negative"], keep)
    out = {"thresholds": thresholds, "n_positive": len(pooled["positive"]), "n_negative": len(pooled["negative"]),
           "sets": {}}
    for name, label, scores in sets:
        pos, neg = (scores, pooled["negative"]) if label == "positive" else (pooled["positive"], scores)
        labels = np.r_[np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)]
        both = np.r_[pos, neg]
        kept = {k: float((scores >= t).mean()) for k, t in thresholds.items()}
        out["sets"][name] = {"label": label, "n": len(scores), "roc_auc": roc_auc(labels, both),
                             "roc_auc_ci95": auc_interval(labels, both, reps, seed),
                             ("recall_at_keep" if label == "positive" else "kept_at_keep"): kept,
                             "median_score": float(np.median(scores))}
    return out


def evaluate_classifier(cfg: EvaluateConfig) -> dict:
    """Score every validation set, compute the metrics, write them into the card and beside it; return them."""
    import fasttext

    model_dir = Path(cfg.model)
    card, bin_path = load_card(model_dir)
    trained = training_ids(model_dir, card)
    if trained is None:
        log.warning("%s records no training ids (trained before they were); overlap with the validation sets is "
                    "not checked", model_dir)
    model = fasttext.load_model(str(bin_path))
    scored, details = [], {}
    for vset in cfg.all_sets():
        data = _read([vset], ("id", "text"), cfg.seed)
        ids, texts = _where(data["id"], data["text"], lambda i: in_part(i, cfg.part))
        if not ids:
            raise ConfigError(f"validation set {vset.title()} has no documents in part {cfg.part!r}")
        overlap = None if trained is None else sum(i in trained for i in ids)
        if overlap and not cfg.exclude_training:
            raise ConfigError(f"validation set {vset.title()} holds {overlap} of the {len(ids)} documents "
                              f"{model_dir} trained on; validate on unseen data, or set exclude_training to drop them")
        if overlap:
            ids, texts = _where(ids, texts, lambda i: i not in trained)
            if not ids:
                raise ConfigError(f"validation set {vset.title()} is all training data; give unseen documents")
        scores = positive_probability(model, normalise_many(pa.array(texts, pa.large_string()))).astype(float)
        scored.append((vset.title(), vset.label, scores))
        details[vset.title()] = {"ref": to_dict(vset), "training_overlap_dropped": overlap,
                                 "samples": _samples(ids, texts, scores, cfg.samples,
                                                     highest=vset.label == "negative")}
    result = summarise(scored, cfg.keep_negatives, cfg.bootstrap, cfg.seed)
    for name, extra in details.items():
        result["sets"][name].update(extra)
    result = {"model": card["score_column"], "normaliser": card["normaliser"], "model_sha1": card["model_sha1"],
              "part": cfg.part, "config": to_dict(cfg), **result}
    (model_dir / VALIDATION_JSON).write_text(json.dumps(result, indent=2))
    (model_dir / VALIDATION_MD).write_text(markdown(result))
    card_path = model_dir / "card.json"
    on_disk = json.loads(card_path.read_text(encoding="utf-8"))
    on_disk["validation"] = {**{k: v for k, v in result.items() if k not in ("config", "sets")},
                             "sets": {name: {k: v for k, v in s.items() if k != "samples"}
                                      for name, s in result["sets"].items()}}
    card_path.write_text(json.dumps(on_disk, indent=2))
    log.info("%s", markdown(result, samples=False))
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def markdown(result: dict, samples: bool = True) -> str:
    """The validation table (and samples) as markdown."""
    keeps = list(result["thresholds"])
    head = ["set", "label", "n", "ROC-AUC", "95% CI", "median"] + [f"@{k}% neg" for k in keeps]
    lines = [f"# Validation of {result['model']} (normaliser {result['normaliser']}; part: {result['part']})", "",
             "Thresholds keeping k% of the pooled negatives: "
             + ", ".join(f"{k}%: {_fmt(t)}" for k, t in result["thresholds"].items()), "",
             "Columns @k% neg: recall of a positive set, share kept of a negative set, at that threshold.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in result["sets"].items():
        at = s.get("recall_at_keep") or s.get("kept_at_keep")
        ci = s["roc_auc_ci95"]
        lines.append("| " + " | ".join([name, s["label"], str(s["n"]), _fmt(s["roc_auc"]),
                                        f"{_fmt(ci[0])}-{_fmt(ci[1])}" if ci else "", _fmt(s["median_score"]),
                                        *(_fmt(at[k]) for k in keeps)]) + " |")
    if samples:
        for name, s in result["sets"].items():
            kind = "lowest-scoring positives" if s["label"] == "positive" else "highest-scoring negatives"
            lines += ["", f"## {name}: {kind}", ""]
            lines += [f"- {d['score']:.4f} `{d['id']}`: {d['text'][:200]}" for d in s.get("samples", [])]
    return "\n".join(lines) + "\n"
