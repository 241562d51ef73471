"""``trait classifier train``: fastText domain and quality classifiers with a held-out evaluation.

Two ways to give the labels:
- ``positives`` and ``negatives``: contract datasets; negatives are sampled at ``negative_ratio`` x positives
  (the domain classifier: in-domain seed vs general pool).
- ``labelled``: datasets with a ``label_column``: binary (0/1, bool) or graded educational-value scores (0-5),
  bucketed into positive at ``positive_min_grade`` and above (the quality classifier, FineWeb-Edu style).

Samples and the held-out split are drawn by seeded hashes of document ids, so a rerun draws the same documents.
The training file is shuffled (seeded): fastText reads it in order, so documents grouped by label taught the model
whichever class came last, at the end of each epoch's learning-rate decay (on the validation sets, shuffling alone
lifted recall at a fixed share of general documents from 0.49 to 0.64 on encyclopedia math; docs/selection-
validation.md). A source given ``repeat: N`` is written N times (upweighting a small one, such as hard negatives).
``drop_negatives`` trains twice: the training negatives the first model scores highest are dropped as the in-domain
documents a general pool naturally holds (Wikipedia's own math articles among the domain classifier's negatives),
and their ids are written to ``dropped_negatives.txt``.
Training uses one thread with a fixed seed (fastText's multi-threaded SGD is not reproducible). The output
directory holds ``<name>_v<version>.bin`` and ``card.json`` with the data, settings and held-out metrics.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa

from trait.config import ConfigError, field, to_dict
from trait.contract import MANIFEST_NAME, finished_dataset, score_column
from trait.outputs import check_output
from trait.ranks import roc_auc

from .fs import arrow_filesystem
from .text import NORMALISER_VERSION, decoded, normalise_many

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE = "__label__pos", "__label__neg"
# fastText allocates bucket x dim float32 for the n-gram embeddings, copied to every Python worker that scores.
MAX_INPUT_MATRIX_BYTES = 8 << 30
INT32_MAX = 2**31 - 1
TRAIN_IDS = "train_ids.txt"  # the ids of the training split, one a line (sorted): validation sets are checked on it
DROPPED_IDS = "dropped_negatives.txt"  # the training negatives drop_negatives left out, one id a line (sorted)
# How the training file is written from the examples; in the fingerprint, so a classifier trained the old way is
# trained again. 2: seeded shuffle, ``repeat``.
TRAINING_FILE_VERSION = 2
MAX_REPEAT = 1000


@dataclass
class DataRef:
    path: str = field(help="a finished contract dataset")
    sources: list[str] | None = field(None, help="keep rows whose source starts with one of these (null: all)")
    max_docs: int | None = field(None, help="sample down to this many documents (seeded; null: all)")

    @classmethod
    def from_str(cls, path: str) -> DataRef:
        return cls(path=path)

    def validate(self) -> None:
        if self.max_docs is not None and self.max_docs < 1:
            raise ConfigError(f"{self.path}: max_docs must be a positive number of documents, or null for all; got "
                              f"{self.max_docs}")


@dataclass
class TrainingRef(DataRef):
    repeat: int = field(1, help="times each of its training documents is written into the training file: upweights a "
                        "small source such as hard negatives (held-out metrics count each document once)")

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.repeat <= MAX_REPEAT:
            raise ConfigError(f"{self.path}: repeat must be an integer in [1, {MAX_REPEAT}], got {self.repeat}")


@dataclass
class ClassifierConfig:
    name: str = field(help="classifier name; its score column is score_<name>_v<version>")
    version: int = field(1, help="version of this classifier, part of the score column name")
    positives: list[TrainingRef] = field(default_factory=list, help="datasets of positive documents")
    negatives: list[TrainingRef] = field(default_factory=list, help="datasets to sample negatives from")
    negative_ratio: float = field(1.0, help="negatives sampled per positive")
    labelled: list[TrainingRef] = field(default_factory=list, help="datasets with text and a label column")
    label_column: str = field("label", help="label column of the labelled datasets")
    positive_min_grade: float | None = field(None, help="graded labels: grade >= this is positive")
    heldout_fraction: float = field(0.2, help="share of documents held out for the metrics")
    seed: int = field(0, help="seed of sampling, split and training")
    epoch: int = field(5, help="fastText epochs")
    lr: float = field(0.5, help="fastText learning rate (halved on each 'Encountered NaN' retry)")
    word_ngrams: int = field(2, help="fastText word n-gram length")
    dim: int = field(32, help="embedding dimension")
    min_count: int = field(2, help="minimum word count")
    bucket: int = field(200_000, help="hash buckets for n-grams; model size ~ bucket x dim x 4 bytes")
    max_retries: int = field(4, help="retries after 'Encountered NaN'")
    drop_negatives: float = field(0.0, help="share of the training negatives to drop as likely in-domain: a first "
                                  "model is trained, the negatives it scores highest are dropped, and it is trained "
                                  "again (0: train once)")
    train_max_chars: int | None = field(8000, help="cut training documents to this many characters (speed; "
                                        "scoring reads whole documents); null: no cut")

    def validate(self) -> None:
        if self.version < 1:
            raise ConfigError(f"version must be >= 1, got {self.version}")
        score_column(self.name, self.version)
        if bool(self.labelled) == bool(self.positives or self.negatives):
            raise ConfigError("give either labelled datasets, or positives and negatives, not both or neither")
        if self.positives and not self.negatives or self.negatives and not self.positives:
            raise ConfigError("positives and negatives go together")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0 < self.negative_ratio < math.inf:
            raise ConfigError(f"negative_ratio must be a positive number, got {self.negative_ratio}")
        if self.positive_min_grade is not None and not math.isfinite(self.positive_min_grade):
            raise ConfigError(f"positive_min_grade must be a number (e.g. 3), got {self.positive_min_grade}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"lr must be a positive number (e.g. 0.5), got {self.lr}")
        for key, low in (("epoch", 1), ("word_ngrams", 1), ("dim", 1), ("min_count", 1), ("bucket", 0)):
            if not low <= getattr(self, key) <= INT32_MAX:
                raise ConfigError(f"{key} must be an integer in [{low}, {INT32_MAX}] (fastText's int), got "
                                  f"{getattr(self, key)}")
        if not -INT32_MAX - 1 <= self.seed <= INT32_MAX:
            raise ConfigError(f"seed must fit fastText's 32-bit int, [{-INT32_MAX - 1}, {INT32_MAX}]; got {self.seed}")
        if self.word_ngrams > 1 and not self.bucket:
            raise ConfigError(f"bucket must be >= 1 with word_ngrams {self.word_ngrams} (the n-grams are hashed "
                              "into buckets); bucket 0 goes with word_ngrams 1 only")
        if self.bucket * self.dim * 4 > MAX_INPUT_MATRIX_BYTES:
            raise ConfigError(f"bucket x dim x 4 bytes = {self.bucket * self.dim * 4 / 2**30:.1f} GiB of n-gram "
                              f"embeddings; at most {MAX_INPUT_MATRIX_BYTES >> 30} GiB (the default is 200000 x 32)")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if not 0 <= self.drop_negatives < 0.5:
            raise ConfigError(f"drop_negatives must be a share in [0, 0.5), e.g. 0.02; got {self.drop_negatives}")
        if self.train_max_chars is not None and self.train_max_chars < 1:
            raise ConfigError(f"train_max_chars must be >= 1, or null for whole documents; got {self.train_max_chars}")


def _hash01(seed: int, salt: str, ident: str) -> float:
    """Deterministic uniform [0, 1) from (seed, salt, id): the basis of every sample and split here."""
    digest = hashlib.sha1(f"{seed}:{salt}:{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _read(refs: list[DataRef], columns: tuple[str, ...], seed: int) -> dict[str, list]:
    """Columns of the rows each ref selects (source prefixes, then a seeded sample of max_docs), and ``ref``: the
    index in ``refs`` of each row's ref."""
    import pyarrow.compute as pc

    out: dict[str, list] = {c: [] for c in (*columns, "ref")}
    for k, ref in enumerate(refs):
        table = finished_dataset(ref.path, (*columns, "source")).to_table(columns=[*columns, "source"])
        if ref.sources:
            masks = [pc.starts_with(table["source"], p) for p in ref.sources]
            table = table.filter(functools.reduce(pc.or_, masks))
        if not table.num_rows:
            raise ConfigError(f"{ref.path} (sources {ref.sources}) has no rows")
        rows = sorted(range(table.num_rows), key=lambda i, ids=table["id"]: _hash01(seed, "sample", ids[i].as_py()))
        rows = sorted(rows) if ref.max_docs is None else rows[:ref.max_docs]
        table = table.take(rows)
        for c in columns:
            out[c].extend(table.column(c).to_pylist())
        out["ref"].extend([k] * table.num_rows)
    return out


def load_examples(cfg: ClassifierConfig) -> tuple[list[tuple[str, str, int, int]], dict]:
    """(id, text, label 0/1, repeat) examples and a description of where they came from."""
    if cfg.labelled:
        data = _read(cfg.labelled, ("id", "text", cfg.label_column), cfg.seed)
        examples = []
        for ident, text, label, k in zip(data["id"], data["text"], data[cfg.label_column], data["ref"]):
            repeat = cfg.labelled[k].repeat
            if label is None:
                raise ConfigError(f"document {ident} has a null {cfg.label_column!r}; label it or drop it")
            if cfg.positive_min_grade is not None:
                examples.append((ident, text, int(float(label) >= cfg.positive_min_grade), repeat))
            elif label in (0, 1, True, False):
                examples.append((ident, text, int(label), repeat))
            else:
                raise ConfigError(f"label {label!r} is not binary; set positive_min_grade to bucket grades")
        return examples, {"labelled": to_dict(cfg.labelled), "label_column": cfg.label_column,
                          "positive_min_grade": cfg.positive_min_grade}
    pos = _read(cfg.positives, ("id", "text"), cfg.seed)
    pos_ids = set(pos["id"])
    neg = _read(cfg.negatives, ("id", "text"), cfg.seed)
    n_neg = int(round(cfg.negative_ratio * len(pos["id"])))
    pool = [(i, t, cfg.negatives[k].repeat) for i, t, k in zip(neg["id"], neg["text"], neg["ref"]) if i not in pos_ids]
    negatives = sorted(pool, key=lambda p: _hash01(cfg.seed, "neg", p[0]))[:n_neg]
    if len(negatives) < n_neg:
        log.warning("asked for %d negatives (ratio %.2f), the pool has %d", n_neg, cfg.negative_ratio, len(pool))
    examples = ([(i, t, 1, cfg.positives[k].repeat) for i, t, k in zip(pos["id"], pos["text"], pos["ref"])]
                + [(i, t, 0, r) for i, t, r in negatives])
    return examples, {"positives": to_dict(cfg.positives), "negatives": to_dict(cfg.negatives),
                      "negative_ratio": cfg.negative_ratio}


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Precision, recall, F1 at ``threshold`` and ROC-AUC; counts alongside."""
    pred = scores >= threshold
    tp = int((pred & (labels == 1)).sum())
    fp = int((pred & (labels == 0)).sum())
    fn = int((~pred & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1,
            "roc_auc": roc_auc(labels, scores), "n": int(len(labels)), "n_positive": int(labels.sum())}


def positive_probability(model, texts: list[str]) -> np.ndarray:
    """P(positive) for each already-normalised text."""
    from trait.native import utf8

    return positive_probabilities([model], *utf8(texts))[0]


def positive_probabilities(models: list, buf: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """P(positive) by each model for each already-normalised text of ``buf`` (``trait.native.utf8``'s layout):
    fastText's predict, compiled where that gives its very bits (spark_jobs/predict.py: every model this module
    trains), else fastText's own."""
    from . import predict

    native = [predict.compiled(model, POSITIVE) for model in models]
    together = [m for m in native if m is not None]
    scores = iter(predict.predict(together, buf, offsets) if together else ())
    texts = decoded(buf, offsets) if len(together) < len(models) else None
    return [next(scores) if m is not None else fasttext_probability(model, texts) for model, m in zip(models, native)]


def fasttext_probability(model, texts: list[str]) -> np.ndarray:
    """P(positive) for each already-normalised text by fastText's own Python ``predict``: the reference the compiled
    predict reproduces, and the path of a model it does not cover."""
    labels, probs = model.predict(texts, k=-1)
    return np.array([dict(zip(ls, ps)).get(POSITIVE, 0.0) for ls, ps in zip(labels, probs)], dtype=np.float32)


def _train(cfg: ClassifierConfig, train_file: str):
    """fastText supervised training; on 'Encountered NaN' (sporadic on small data) retry with half the lr."""
    import fasttext

    lr = cfg.lr
    for attempt in range(1, cfg.max_retries + 2):
        try:
            model = fasttext.train_supervised(
                input=train_file, epoch=cfg.epoch, lr=lr, wordNgrams=cfg.word_ngrams, dim=cfg.dim,
                minCount=cfg.min_count, bucket=cfg.bucket, seed=cfg.seed, thread=1, verbose=0)
            if not model.get_words():  # it would give every document the same score
                raise ConfigError(f"no word of the training data occurs min_count {cfg.min_count} times; lower "
                                  "min_count or give more data")
            return model, {"attempts": attempt, "lr_used": lr}
        except RuntimeError as exc:
            if "NaN" not in str(exc):
                raise
            log.warning("fastText: %s (attempt %d, lr %.3g); retrying with lr %.3g", exc, attempt, lr, lr / 2)
            lr /= 2
    raise ConfigError(f"fastText diverged ('Encountered NaN') {cfg.max_retries + 1} times, down to lr {lr * 2:.3g}; "
                      "lower lr or give more training data")


def _fingerprint(cfg: ClassifierConfig) -> str | None:
    """sha1 of the config and of each input dataset's own fingerprint (from its manifest); None if an input has no
    manifest (training then fails with the reader's clear error)."""
    upstream = []
    for ref in [*cfg.positives, *cfg.negatives, *cfg.labelled]:
        fs, root = arrow_filesystem(ref.path)
        try:
            with fs.open_input_stream(f"{root.rstrip('/')}/{MANIFEST_NAME}") as fh:
                upstream.append(json.loads(fh.read()).get("fingerprint"))
        except FileNotFoundError:
            return None
    blob = json.dumps({"config": to_dict(cfg), "inputs": upstream, "normaliser": NORMALISER_VERSION,
                       "fasttext": metadata.version("fasttext-community"),
                       "training_file": TRAINING_FILE_VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def training_order(repeats: list[int], seed: int) -> list[int]:
    """The training file's lines as indices into the training examples: each ``repeats[k]`` times, shuffled by
    ``seed`` (fastText reads the file in order)."""
    order = [k for k, repeat in enumerate(repeats) for _ in range(repeat)]
    random.Random(seed).shuffle(order)
    return order


def _fit(cfg: ClassifierConfig, labels: list[int], texts: list[str], repeats: list[int]):
    """Write the training file (``training_order``) and train on it; the model, the training record and the file's
    number of lines."""
    order = training_order(repeats, cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = os.path.join(tmp, "train.txt")
        with open(train_file, "w", encoding="utf-8") as fh:
            for k in order:
                fh.write(f"{POSITIVE if labels[k] else NEGATIVE} {texts[k]}\n")
        model, attempts = _train(cfg, train_file)
    return model, attempts, len(order)


def _drop_negatives(cfg: ClassifierConfig, train: list[tuple], texts: list[str]) -> tuple[list, list, list[str]]:
    """``train`` and ``texts`` less the ``drop_negatives`` share of the negatives a first model scores highest
    (ties by id), and the dropped ids."""
    first, _, _ = _fit(cfg, [row[2] for row in train], texts, [row[3] for row in train])
    negatives = [k for k, row in enumerate(train) if not row[2]]
    scores = positive_probability(first, [texts[k] for k in negatives])
    ranked = sorted(range(len(negatives)), key=lambda j: (-scores[j], train[negatives[j]][0]))
    drop = {negatives[j] for j in ranked[:int(round(cfg.drop_negatives * len(negatives)))]}
    keep = [k for k in range(len(train)) if k not in drop]
    log.info("%s: dropped the %d of %d training negatives the first model scores highest (>= %.3g)", cfg.name,
             len(drop), len(negatives), min((scores[j] for j in ranked[:len(drop)]), default=float("nan")))
    return [train[k] for k in keep], [texts[k] for k in keep], sorted(train[k][0] for k in drop)


def train_classifier(cfg: ClassifierConfig, output: str | Path) -> dict:
    """Train, evaluate on the held-out split, write ``<name>_v<version>.bin`` and ``card.json``; return the card.

    A classifier already in ``output`` from the same config and the same input datasets is reused, so a rerun
    leaves the model file (and every score job fingerprinted on it) untouched. ``output`` must be new, empty or
    hold only this classifier's files, apart from the input datasets."""
    started = time.time()
    out = Path(output)
    fingerprint = _fingerprint(cfg)
    if fingerprint and (out / "card.json").is_file():
        try:
            card, _ = load_card(out)
        except ConfigError:  # an unreadable card or a corrupt model is trained afresh
            card = {}
        if card.get("fingerprint") == fingerprint:
            log.info("%s: %s is trained with the same config and inputs; nothing to do", cfg.name, out)
            return card
    examples, data_desc = load_examples(cfg)
    train = [e for e in examples if _hash01(cfg.seed, "heldout", e[0]) >= cfg.heldout_fraction]
    train_ids = "".join(f"{i}\n" for i in sorted({row[0] for row in train}))
    held = [e for e in examples if _hash01(cfg.seed, "heldout", e[0]) < cfg.heldout_fraction]
    for split, rows in (("training", train), ("held-out", held)):
        classes = {row[2] for row in rows}
        if classes != {0, 1}:
            raise ConfigError(f"the {split} split has labels {sorted(classes)}; both classes are needed "
                              f"({len(examples)} examples in all): add data or change heldout_fraction")
    check_output(out, inputs=[r.path for r in (*cfg.positives, *cfg.negatives, *cfg.labelled)],
                 own=("card.json", f"{cfg.name}_v*.bin", TRAIN_IDS, DROPPED_IDS, "validation.json", "validation.md"),
                 dataset=False)
    out.mkdir(parents=True, exist_ok=True)
    texts = normalise_many(pa.array([row[1][:cfg.train_max_chars] for row in train], pa.large_string()))
    dropped = []
    if cfg.drop_negatives:
        train, texts, dropped = _drop_negatives(cfg, train, texts)
    model, attempts, lines = _fit(cfg, [row[2] for row in train], texts, [row[3] for row in train])
    labels = np.array([row[2] for row in held], dtype=np.int64)
    scores = positive_probability(model, normalise_many(pa.array([row[1] for row in held], pa.large_string())))
    bin_path = out / f"{cfg.name}_v{cfg.version}.bin"
    model.save_model(str(bin_path))
    (out / TRAIN_IDS).write_text(train_ids, encoding="utf-8")
    (out / DROPPED_IDS).unlink(missing_ok=True)
    if dropped:
        (out / DROPPED_IDS).write_text("".join(f"{i}\n" for i in dropped), encoding="utf-8")
    card = {
        "name": cfg.name, "version": cfg.version, "score_column": score_column(cfg.name, cfg.version),
        "model_file": bin_path.name, "model_sha1": file_sha1(bin_path),
        "fingerprint": fingerprint,
        "positive_label": POSITIVE, "normaliser": NORMALISER_VERSION,
        "data": {**data_desc, "train": {"n": len(train), "n_positive": sum(row[2] for row in train),
                                         "lines": lines, "negatives_dropped": len(dropped),
                                         "ids_file": TRAIN_IDS,
                                         "ids_sha1": hashlib.sha1(train_ids.encode()).hexdigest()},
                 "heldout": {"n": len(held), "n_positive": int(labels.sum())}},
        "config": to_dict(cfg), "training": attempts, "heldout_metrics": binary_metrics(labels, scores),
        "fasttext": metadata.version("fasttext-community"), "wall_time_s": round(time.time() - started, 2),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))
    m = card["heldout_metrics"]
    log.info("%s: held-out P %.3f R %.3f F1 %.3f AUC %.3f (n=%d)", cfg.name, m["precision"], m["recall"],
             m["f1"], m["roc_auc"], m["n"])
    return card


def file_sha1(path: Path) -> str:
    """Hex sha1 of a file's bytes (streamed)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha1").hexdigest()


def load_card(model_dir: str | Path) -> tuple[dict, Path]:
    """The card of a trained classifier and the path of its .bin, checked before anything ships it: the normaliser
    version, and the .bin's sha1 against the card's ``model_sha1`` (fastText crashes or hangs on a truncated
    file instead of raising). The card's ``validation`` block (``trait classifier evaluate``) is left out: it
    describes data the model was judged on, not the model, so adding one does not change a score job's inputs."""
    model_dir = Path(model_dir)
    card_path = model_dir / "card.json"
    if not card_path.exists():
        raise ConfigError(f"{model_dir} has no card.json; train it with 'trait classifier train'")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{card_path} is not JSON ({exc}); retrain with 'trait classifier train'") from None
    if not isinstance(card, dict) or not isinstance(card.get("model_file"), str) or "score_column" not in card:
        raise ConfigError(f"{card_path} has no model_file or score_column; retrain with 'trait classifier train'")
    if card.get("normaliser") != NORMALISER_VERSION:
        raise ConfigError(f"{model_dir} was trained with normaliser {card.get('normaliser')!r}, this scorer uses "
                          f"{NORMALISER_VERSION!r}; retrain it")
    card.pop("validation", None)
    bin_path = model_dir / card["model_file"]
    if not bin_path.is_file():
        raise ConfigError(f"{bin_path} (named by {card_path}) does not exist; retrain with 'trait classifier train'")
    sha1 = file_sha1(bin_path)
    if "model_sha1" not in card:  # fastText may crash or hang on a truncated file, so it is never loaded unchecked
        raise ConfigError(f"{card_path} has no model_sha1 to check {bin_path} against; retrain with 'trait "
                          f"classifier train', or, if the file is the one trained, add \"model_sha1\": \"{sha1}\"")
    if sha1 != card["model_sha1"]:
        raise ConfigError(f"{bin_path} is corrupt or was replaced: its sha1 is {sha1}, {card_path} says "
                          f"{card['model_sha1']}; retrain with 'trait classifier train' or restore the file")
    return card, bin_path
