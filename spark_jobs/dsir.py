"""``trait baseline dsir``: DSIR (Xie et al., 2023) on Spark, its features identical to the reference package
``data-selection`` 1.0.3 (``HashedNgramDSIR``).

Features: the reference lower-cases a text, splits it with nltk's ``WordPunctTokenizer`` (``\\w+|[^\\w\\s]+``,
compiled by nltk >= 3.9 with the ``regex`` engine, whose ``\\w`` differs from stdlib ``re`` on characters such as
superscript digits), and adds one count per unigram and per bigram (two words joined by a space) to bucket
``int(sha256(utf8).hexdigest(), 16) % num_buckets`` (10,000). No text is capped. sha256, never Python's salted
``hash()``: a bucket is the same on every executor and in every run (pinned by a golden-value test). Hashing
dominates the cost, so a ``Featurizer`` lives once per Python worker and memoises word -> (id, bucket) and
(word id, word id) -> bucket: a batch's words and distinct bigrams (``pandas.factorize``) are looked up with one
``map(dict.get)`` each, in C, and only the n-grams not seen before are joined and hashed.

Job: (1) fit: bucket counts of the target (the in-domain seed) and of the raw pool, per partition in
``mapInArrow``, summed by a groupBy on the bucket (at most 10,000 rows reach the driver); log ratio
``log(p_target + 1e-8) - log(p_raw + 1e-8)`` as in the reference, broadcast. (2) weigh: per document
``counts . log_ratio``, written once with every pool column beside the output (``<output>._weighted``, deleted
after). (3) resample: Gumbel top-k, key = log weight + ``-log(-log u)`` with u from ``xxhash64(seed, id)``; the
largest keys among documents of >= ``min_example_length`` words (the reference's filter) are kept until the
token budget is reached (``baselines.cut_to_budget``). Unlike the reference, which draws a number of documents
with numpy's global RNG, the sample is a token budget and depends only on the seed and the ids.

Output: the kept rows with ``dsir_log_weight`` (float32). It is not a ``score_*`` column: it is an unbounded
log-likelihood ratio, not a classifier probability, and comparable only within one fit. Rejected rows are
counted as ``too_short`` or ``not_sampled``; the manifest has the budget, the seed and the fit's summary.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import regex

from trait.config import ConfigError, field, to_dict

from .baselines import (
    NOT_SAMPLED,
    BudgetedSample,
    baseline_stats,
    cut_to_budget,
    open_nonempty,
    resolve_budget,
    uniform_key,
)
from .dataset import DatasetError, JobOutput, parts_glob
from .fs import HadoopFS

log = logging.getLogger(__name__)

TOKEN_PATTERN = r"\w+|[^\w\s]+"
# nltk's RegexpTokenizer flags (UNICODE | MULTILINE | DOTALL) on the engine nltk uses; without nltk's per-call
# timeout, which made its tokenizer 3.4x slower than the bare pattern in a measurement on Wikipedia text.
_TOKEN = regex.compile(TOKEN_PATTERN, regex.UNICODE | regex.MULTILINE | regex.DOTALL)

_FEATURIZERS: dict[tuple[int, int], Featurizer] = {}


def tokenize(text: str) -> list[str]:
    """The reference's tokens of ``text``: lower-cased words and runs of punctuation."""
    return _TOKEN.findall(text.lower())


def hash_bucket(ngram: str, num_buckets: int) -> int:
    """Bucket of one n-gram: ``int(sha256(ngram).hexdigest(), 16) % num_buckets`` (the reference's formula)."""
    return int.from_bytes(hashlib.sha256(ngram.encode("utf-8")).digest(), "big") % num_buckets


class Featurizer:
    """Unigram and bigram bucket ids of batches of texts, with memoised hashing (one per Python worker).

    ``max_pairs`` bounds the bigram memo (about 100 bytes per entry): past it the memo starts afresh. Words are
    kept for the worker's life (a few million distinct words at most); word ids index ``_word_bucket``.
    """

    def __init__(self, num_buckets: int, max_pairs: int):
        self.num_buckets = num_buckets
        self.max_pairs = max_pairs
        self._word_id: dict[str, int] = {}
        self._words: list[str] = []
        self._word_bucket = np.zeros(1 << 16, dtype=np.int64)
        self._pair_bucket: dict[int, int] = {}

    def _ids(self, words: list[str]) -> np.ndarray:
        """Worker-wide ids of ``words``: one ``map(dict.get)`` over the batch (in C); only words not seen before in
        this worker are given an id and hashed."""
        ids = np.fromiter(map(self._word_id.get, words, itertools.repeat(-1)), dtype=np.int64, count=len(words))
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            new = list(dict.fromkeys(map(words.__getitem__, missing.tolist())))  # distinct, first seen first
            first = len(self._words)
            if first + len(new) > len(self._word_bucket):
                self._word_bucket = np.resize(self._word_bucket, 2 * (first + len(new)))
            n = self.num_buckets
            self._word_bucket[first:first + len(new)] = [hash_bucket(w, n) for w in new]
            self._word_id.update(zip(new, range(first, first + len(new))))
            self._words.extend(new)
            ids[missing] = list(map(self._word_id.__getitem__, map(words.__getitem__, missing.tolist())))
        return ids

    def _pair_buckets(self, keys: np.ndarray) -> np.ndarray:
        """Buckets of distinct bigram keys ``first_id << 32 | second_id``. Once the memo holds ``max_pairs``
        entries, new bigrams are hashed but not kept, so the memo holds the earliest (mostly the frequent) ones.
        Known keys are one ``map(dict.get)`` (in C); only the unknown ones are joined and hashed."""
        keys_list = keys.tolist()
        memo = self._pair_bucket
        buckets = np.fromiter(map(memo.get, keys_list, itertools.repeat(-1)), dtype=np.int64, count=len(keys_list))
        missing = np.flatnonzero(buckets < 0)
        if len(missing):
            words, n = self._words, self.num_buckets
            new_keys = keys[missing]
            bigrams = map(" ".join, zip(map(words.__getitem__, (new_keys >> 32).tolist()),
                                        map(words.__getitem__, (new_keys & 0xFFFFFFFF).tolist())))
            hashed = [hash_bucket(b, n) for b in bigrams]
            buckets[missing] = hashed
            room = max(0, self.max_pairs - len(memo))
            memo.update(zip(new_keys[:room].tolist(), hashed[:room]))
        return buckets

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(unigram buckets, their document index, bigram buckets, their document index, words per document)``
        for a batch of texts; the document index is the position in ``texts``."""
        import pandas as pd

        tokens = [tokenize(t) for t in texts]
        words_per_doc = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        ids = self._ids(list(itertools.chain.from_iterable(tokens)))
        uni_doc = np.repeat(np.arange(len(texts), dtype=np.int64), words_per_doc)
        same_doc = uni_doc[:-1] == uni_doc[1:]  # a bigram never spans two documents
        keys = ((ids[:-1] << 32) | ids[1:])[same_doc]
        codes, distinct = pd.factorize(keys)
        bi = self._pair_buckets(distinct)[codes] if len(keys) else np.zeros(0, dtype=np.int64)
        return self._word_bucket[ids], uni_doc, bi, uni_doc[:-1][same_doc], words_per_doc


def featurizer(num_buckets: int, max_pairs: int) -> Featurizer:
    """This Python worker's featurizer (a module-level cache: executors import this module once per worker)."""
    key = (num_buckets, max_pairs)
    if key not in _FEATURIZERS:
        _FEATURIZERS[key] = Featurizer(num_buckets, max_pairs)
    return _FEATURIZERS[key]


def bucket_counts(texts: list[str], num_buckets: int, max_pairs: int) -> np.ndarray:
    """Unigram + bigram counts of all ``texts`` together, int64 of shape ``(num_buckets,)``."""
    uni, _, bi, _, _ = featurizer(num_buckets, max_pairs).features(texts)
    return np.bincount(uni, minlength=num_buckets) + np.bincount(bi, minlength=num_buckets)


def log_weights(texts: list[str], log_ratio: np.ndarray, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(log importance weight per text (float64), words per text)``; the weight is ``counts . log_ratio``."""
    uni, uni_doc, bi, bi_doc, words = featurizer(len(log_ratio), max_pairs).features(texts)
    n = len(texts)
    weights = np.bincount(uni_doc, weights=log_ratio[uni], minlength=n)
    return weights + np.bincount(bi_doc, weights=log_ratio[bi], minlength=n), words


LOG_WEIGHT = "dsir_log_weight"
# Each task holds a count vector of num_buckets int64 and the broadcast log ratios as float64: 2^24 is 128 MiB each.
MAX_BUCKETS = 1 << 24
_WORDS = "_dsir_words"
TOO_SHORT = "too_short"


@dataclass
class DsirConfig(BudgetedSample):
    num_buckets: int = field(10_000, help="hash buckets of the unigram + bigram features (the reference's default)")
    min_example_length: int = field(100, help="documents with fewer words are never kept (the reference's filter)")
    memo_bigrams: int = field(2_000_000, help="bigrams memoised per Python worker (~100 bytes each)")

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.num_buckets <= MAX_BUCKETS:
            raise ConfigError(f"num_buckets must be in [1, {MAX_BUCKETS}] (the reference uses 10000), got "
                              f"{self.num_buckets}")
        if self.min_example_length < 0 or self.memo_bigrams < 0:
            raise ConfigError(f"min_example_length and memo_bigrams must be >= 0, got {self.min_example_length} and "
                              f"{self.memo_bigrams}")


def _count_partition(batches, num_buckets: int, max_pairs: int):
    """Executor side: one Arrow batch of the partition's non-zero bucket counts."""
    total = np.zeros(num_buckets, dtype=np.int64)
    for batch in batches:
        total += bucket_counts(batch.column("text").to_pylist(), num_buckets, max_pairs)
    nonzero = np.flatnonzero(total)
    yield pa.RecordBatch.from_arrays([pa.array(nonzero, pa.int32()), pa.array(total[nonzero], pa.int64())],
                                     names=["bucket", "count"])


def fit_counts(df, config: DsirConfig) -> np.ndarray:
    """Unigram + bigram bucket counts of every text of ``df``, int64 ``(num_buckets,)``: per-partition vectors
    summed by a groupBy on the bucket, so the driver receives at most ``num_buckets`` rows."""
    from pyspark.sql import functions as F

    task = functools.partial(_count_partition, num_buckets=config.num_buckets, max_pairs=config.memo_bigrams)
    rows = (df.select("text").mapInArrow(task, "bucket int, count long")
            .groupBy("bucket").agg(F.sum("count").alias("count")).collect())
    counts = np.zeros(config.num_buckets, dtype=np.int64)
    for r in rows:
        counts[r["bucket"]] = r["count"]
    return counts


def log_ratio(target: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """``log(p_target + 1e-8) - log(p_raw + 1e-8)`` per bucket: the reference's smoothing, float64."""
    return np.log(target / target.sum() + 1e-8) - np.log(raw / raw.sum() + 1e-8)


def _weigh_partition(batches, ratio, max_pairs: int):
    """Executor side: every row plus its log importance weight (float64) and word count."""
    ratio = ratio.value  # the broadcast vector, fetched once per task
    for batch in batches:
        weights, words = log_weights(batch.column("text").to_pylist(), ratio, max_pairs)
        yield pa.RecordBatch.from_arrays([*batch.columns, pa.array(weights), pa.array(words)],
                                         names=[*batch.schema.names, LOG_WEIGHT, _WORDS])


def gumbel_key(seed: int):
    """Column: log weight + Gumbel(0, 1) noise ``-log(-log u)``, u uniform from the seed and the id. Keeping the
    largest keys draws without replacement with probability proportional to the weight (Gumbel top-k)."""
    from pyspark.sql import functions as F

    return F.col(LOG_WEIGHT) - F.log(-F.log(uniform_key(seed)))


def run_dsir(spark, config: DsirConfig, input_path: str, target_path: str, output: str,
             overwrite: bool = False) -> dict:
    """Fit DSIR on the target (seed) and the pool at ``input_path``, weigh every pool document, and keep a Gumbel
    top-k sample to the token budget; write the kept rows, with their ``dsir_log_weight`` (float32), to ``output``."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    pool, upstream = open_nonempty(spark, input_path, "pool")
    target, _ = open_nonempty(spark, target_path, "target")
    budget = resolve_budget(spark, config.token_budget, config.budget_from, upstream)
    inputs = [parts_glob(input_path), parts_glob(target_path)] + (
        [f"{config.budget_from.rstrip('/')}/manifest.json"] if config.budget_from else [])
    job = JobOutput(spark, output, "baseline_dsir", {**to_dict(config), "budget_tokens": budget["tokens"]},
                    inputs, overwrite)
    if (done := job.finished()) is not None:
        return done
    t0 = time.time()
    target_counts, raw_counts = fit_counts(target, config), fit_counts(pool, config)
    if not target_counts.sum() or not raw_counts.sum():
        raise DatasetError("the target or the pool has no words to count; DSIR needs text in both")
    ratio = log_ratio(target_counts, raw_counts)
    fit_seconds = round(time.time() - t0, 3)
    log.info("dsir: fitted %d + %d n-grams in %.1f s", target_counts.sum(), raw_counts.sum(), time.time() - t0)
    # The weights are materialised once beside the output: the cut and the filter both read them.
    weighted_path = f"{job.path}._weighted"
    HadoopFS(spark).delete(weighted_path)
    schema = StructType([*pool.schema.fields, StructField(LOG_WEIGHT, DoubleType()), StructField(_WORDS, LongType())])
    task = functools.partial(_weigh_partition, ratio=spark.sparkContext.broadcast(ratio),
                             max_pairs=config.memo_bigrams)
    pool.mapInArrow(task, schema).write.mode("overwrite").parquet(weighted_path)
    keyed = spark.read.parquet(weighted_path).withColumn("_key", gumbel_key(config.seed))
    long_enough = F.col(_WORDS) >= config.min_example_length
    sampled, reached = cut_to_budget(keyed.where(long_enough), "_key", budget, keep_high=True)
    keep = long_enough & sampled
    reason = (F.when(~long_enough, F.lit(TOO_SHORT)).when(~keep, F.lit(NOT_SAMPLED))
              .otherwise(F.lit(None).cast("string")))
    w = keyed.agg(F.min(LOG_WEIGHT), F.avg(LOG_WEIGHT), F.max(LOG_WEIGHT)).first()
    fit = {"num_buckets": config.num_buckets, "ngrams": [1, 2], "features": "wordpunct tokens, lower-cased",
           "hash": "int(sha256(ngram).hexdigest(), 16) % num_buckets", "smoothing": 1e-8,
           "target_ngrams": int(target_counts.sum()), "raw_ngrams": int(raw_counts.sum()),
           "target_buckets_used": int((target_counts > 0).sum()), "raw_buckets_used": int((raw_counts > 0).sum()),
           "log_weight": {"min": w[0], "mean": w[1], "max": w[2]}, "fit_seconds": fit_seconds}
    kept = keyed.where(keep).drop("_key", _WORDS).withColumn(LOG_WEIGHT, F.col(LOG_WEIGHT).cast("float"))
    manifest = job.write(kept, stats=baseline_stats(keyed, reason),
                         extra={"budget": {**budget, "reached": reached}, "seed": config.seed, "dsir": fit,
                                "target": target_path, "tokenizer": upstream.get("tokenizer")})
    HadoopFS(spark).delete(weighted_path)
    return manifest
