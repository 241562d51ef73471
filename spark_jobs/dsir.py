"""``trait baseline dsir``: DSIR (Xie et al., 2023) on Spark, its features identical to the reference package
``data-selection`` 1.0.3 (``HashedNgramDSIR``).

Features: the reference lower-cases a text, splits it with nltk's ``WordPunctTokenizer`` (``\\w+|[^\\w\\s]+``,
compiled by nltk >= 3.9 with the ``regex`` engine, whose ``\\w`` differs from stdlib ``re`` on characters such as
superscript digits), and adds one count per unigram and per bigram (two words joined by a space) to bucket
``int(sha256(utf8).hexdigest(), 16) % num_buckets`` (10,000). No text is capped. sha256, never Python's salted
``hash()``: a bucket is the same on every executor and in every run (pinned by a golden-value test).

Here a batch's texts are lower-cased in Python (``str.lower``, the reference's own) and encoded to UTF-8 once; one
compiled kernel (numba, ``_featurize``) walks the bytes, with no Python object per token. A token is a maximal run
of word characters or of punctuation, classified by ``trait.native.char_classes("regex")`` (the reference regex
engine's own ``\\w`` and ``\\s``), so the tokens are the regex's by construction. SHA-256 (in the kernel too)
dominates the cost, so a ``Featurizer`` lives once per Python worker and memoises n-gram -> bucket in a numpy hash
table keyed by a 128-bit hash of the n-gram: each distinct n-gram is hashed once while the table has room. The
kernel adds the buckets straight into the counts (fit) or the per-text log weights (weigh).

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
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numba import njit

from trait.config import ConfigError, field, to_dict
from trait.native import SPACE, WORD, char_classes, fmix64, next_char, utf8, xxh3_64

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

_FEATURIZERS: dict[tuple[int, int], Featurizer] = {}

# SHA-256 (FIPS 180-4): the round constants and the initial state.
_SHA_K = np.array([
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2],
    dtype=np.uint32)
_SHA_H0 = np.array([0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19],
                   dtype=np.uint32)
_SPACE_BYTE = np.array([0x20], dtype=np.uint8)  # the space that joins a bigram's two words

# Memo entries are two uint64: the n-gram's first 64-bit hash, and its second hash's top 39 bits over bucket + 1 in
# the low 25 bits (buckets < 2^24; 0 marks an empty slot). One entry is 16 bytes, so a probe reads one cache line.
_BUCKET_BITS = np.uint64((1 << 25) - 1)
_TAG_BITS = ~_BUCKET_BITS
# Odd multipliers (from the SplitMix64 / xxHash family) of the second hash and of the bigram keys.
_P1, _P2, _P3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
_P4, _P5 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_CHUNK = 1024  # n-grams looked up together (``_featurize``)


@njit(inline="always")
def _rotr(x, n):
    """32-bit rotation. numba widens uint32 arithmetic to 64 bits; casting back to uint32 keeps every word (and
    sum) modulo 2^32, and ran 1.3x faster than 32-bit words held in int64 and masked (measured)."""
    return np.uint32((x >> np.uint32(n)) | (x << np.uint32(32 - n)))


@njit(cache=True)
def _compress(h, block, w):
    """One SHA-256 block: the 64 bytes of ``block`` into the state ``h`` (8 uint32); ``w`` is scratch (64 uint32)."""
    for t in range(16):
        w[t] = ((np.uint32(block[4 * t]) << np.uint32(24)) | (np.uint32(block[4 * t + 1]) << np.uint32(16))
                | (np.uint32(block[4 * t + 2]) << np.uint32(8)) | np.uint32(block[4 * t + 3]))
    for t in range(16, 64):
        x, y = w[t - 15], w[t - 2]
        w[t] = np.uint32(w[t - 16] + (_rotr(x, 7) ^ _rotr(x, 18) ^ (x >> np.uint32(3))) + w[t - 7]
                         + (_rotr(y, 17) ^ _rotr(y, 19) ^ (y >> np.uint32(10))))
    a, b, c, d, e, f, g, hh = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    for t in range(64):
        t1 = np.uint32(hh + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _SHA_K[t] + w[t])
        t2 = np.uint32((_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c)))
        hh, g, f, e, d, c, b, a = g, f, e, np.uint32(d + t1), c, b, a, np.uint32(t1 + t2)
    h[0] += a
    h[1] += b
    h[2] += c
    h[3] += d
    h[4] += e
    h[5] += f
    h[6] += g
    h[7] += hh


@njit(inline="always")
def _feed(src, start, stop, block, fill, h, w):
    """Append ``src[start:stop]`` to the message whose current block holds ``fill`` bytes; the new fill."""
    for i in range(start, stop):
        block[fill] = src[i]
        fill += 1
        if fill == 64:
            _compress(h, block, w)
            fill = 0
    return fill


@njit(cache=True)
def _sha256_bucket(buf, s1, e1, s2, e2, powers, num_buckets, block, h, w):
    """``int.from_bytes(sha256(buf[s1:e1] + b" " + buf[s2:e2]).digest(), "big") % num_buckets`` (the reference's
    bucket of a bigram), or of ``buf[s1:e1]`` alone when ``s2 < 0`` (a unigram). The bigram is hashed as one
    stream, never assembled: its two words are rarely side by side in ``buf``. The digest's 32-bit words times
    ``powers`` (``_digest_powers``) sum to less than 2^59, so one modulo reduces it."""
    h[:] = _SHA_H0
    fill = _feed(buf, s1, e1, block, 0, h, w)
    size = e1 - s1
    if s2 >= 0:
        fill = _feed(_SPACE_BYTE, 0, 1, block, fill, h, w)
        fill = _feed(buf, s2, e2, block, fill, h, w)
        size += 1 + e2 - s2
    block[fill] = 0x80  # padding: 0x80, zeros, the size in bits (big-endian) in the last 8 bytes of a block
    if fill >= 56:
        block[fill + 1:] = 0
        _compress(h, block, w)
        fill = -1
    block[fill + 1:56] = 0
    bits = size * 8
    for k in range(8):
        block[56 + k] = (bits >> (56 - 8 * k)) & 0xFF
    _compress(h, block, w)
    total = 0
    for k in range(8):
        total += np.int64(h[k]) * powers[k]
    return total % num_buckets


@njit(cache=True)
def _digest_powers(num_buckets):
    """``2^(32 * (7 - k)) % num_buckets`` for k in 0..7: the weights of a digest's 32-bit words modulo the buckets
    (each < 2^24, so a word times its weight is < 2^56)."""
    powers = np.empty(8, dtype=np.int64)
    p = 1 % num_buckets
    for k in range(7, -1, -1):
        powers[k] = p
        p = (p << 32) % num_buckets
    return powers


@njit(inline="always")
def _second_hash(buf, start, stop):
    """A 64-bit hash of ``buf[start:stop]`` independent of xxh3, 8 bytes at a time; with xxh3 it makes an n-gram's
    128-bit memo key. For a word of up to 8 bytes it is a bijection of the bytes given the length."""
    h = np.uint64(stop - start) * _P1
    for i in range(start, stop, 8):
        word = np.uint64(0)
        for k in range(min(8, stop - i)):
            word |= np.uint64(buf[i + k]) << np.uint64(8 * k)
        h ^= word * _P2
        h = ((h << np.uint64(31)) | (h >> np.uint64(33))) * _P3
    return fmix64(h)


@njit(inline="always")
def _find(memo, key1, tag):
    """The memo slot (open addressing, linear probing) holding the key ``(key1, tag)``, else the empty slot where
    it goes. The memo is never more than half full, so a probe stops within a few steps."""
    mask = np.uint64(len(memo) - 1)
    slot = key1 & mask
    while memo[slot, 1] and (memo[slot, 0] != key1 or memo[slot, 1] & _TAG_BITS != tag):
        slot = (slot + np.uint64(1)) & mask
    return slot


@njit(inline="always")
def _kind(classes, cp):
    """What the character ``cp`` is to ``\\w+|[^\\w\\s]+``: 1 a word character, 2 punctuation (neither ``\\w`` nor
    ``\\s``), 0 white space; -1 a lone surrogate (``utf8`` lets it through; UTF-8 cannot encode it)."""
    if 0xD800 <= cp <= 0xDFFF:
        return -1
    c = classes[cp]
    if c & WORD:
        return 1
    if c & SPACE:
        return 0
    return 2


@njit(inline="always")
def _list(keys, spans, listed, key1, key2, s1, e1, s2, e2, text):
    """Append an n-gram to the list ``_resolve`` reads; the new length."""
    keys[listed, 0], keys[listed, 1] = key1, key2
    spans[listed, 0], spans[listed, 1], spans[listed, 2], spans[listed, 3], spans[listed, 4] = s1, e1, s2, e2, text
    return listed + 1


@njit(inline="always")
def _resolve(memo, entries, limit, keys, spans, listed, buf, powers, num_buckets, ratio, counts, sums, block, h, w):
    """Count the ``listed`` n-grams of ``keys`` and ``spans`` (``_featurize``) in ``counts`` and, when ``ratio`` is
    not empty, add their log ratios to ``sums`` (row 0 unigrams, row 1 bigrams; a column per text). The probe
    (``_find``) stays apart from the miss (hash, insert): with both in one loop that returns from inside, the
    lookups ran 3x slower (measured)."""
    weigh = len(ratio) > 0
    for k in range(listed):
        tag = keys[k, 1] & _TAG_BITS
        slot = _find(memo, keys[k, 0], tag)
        if memo[slot, 1]:
            bucket = np.int64(memo[slot, 1] & _BUCKET_BITS) - 1
        else:
            bucket = _sha256_bucket(buf, spans[k, 0], spans[k, 1], spans[k, 2], spans[k, 3], powers, num_buckets,
                                    block, h, w)
            if entries[0] < limit:
                memo[slot, 0] = keys[k, 0]
                memo[slot, 1] = tag | np.uint64(bucket + 1)
                entries[0] += 1
        counts[bucket] += 1
        if weigh:
            sums[int(spans[k, 2] >= 0), spans[k, 4]] += ratio[bucket]


@njit(cache=True)
def _featurize(buf, offsets, classes, memo, entries, limit, num_buckets, ratio):
    """``(counts, weights, words, bad)`` of the texts ``buf[offsets[d]:offsets[d + 1]]`` (lower-cased UTF-8):
    unigram + bigram counts per bucket of all texts together; per text, ``counts . ratio`` (zeros when ``ratio``
    is empty), summed as ``np.bincount`` would: unigrams in order, bigrams in order, then the two sums added, so
    the floats are the same to the last bit; tokens per text; and ``bad``, the first text with a lone surrogate
    (the other outputs then incomplete), else -1.

    A token is a maximal run of word characters or a maximal run of punctuation: the regex ``\\w+|[^\\w\\s]+``
    finds exactly these runs, leftmost first. A bigram never spans two texts. The walk lists the n-grams (key,
    bytes, text) and ``_resolve`` looks up ``_CHUNK`` of them at a time: a lookup is mostly a cache miss, which
    that tight loop overlaps with the next ones' while the walk's long loop body cannot (on the demo pool ~18 ns
    a lookup against ~85)."""
    texts = len(offsets) - 1
    counts = np.zeros(num_buckets, dtype=np.int64)
    sums = np.zeros((2, texts), dtype=np.float64)
    words = np.zeros(texts, dtype=np.int64)
    keys = np.empty((_CHUNK, 2), dtype=np.uint64)
    spans = np.empty((_CHUNK, 5), dtype=np.int64)  # s1, e1, s2, e2 (s2 = -1: a unigram), text
    listed = 0
    block, h, w = np.empty(64, dtype=np.uint8), np.empty(8, dtype=np.uint32), np.empty(64, dtype=np.uint32)
    powers = _digest_powers(num_buckets)
    for d in range(texts):
        i, end = offsets[d], offsets[d + 1]
        n, last_start, last_stop, last1, last2 = 0, 0, 0, np.uint64(0), np.uint64(0)
        while True:
            kind, j = 0, i
            while i < end:
                cp, j = next_char(buf, i)
                kind = _kind(classes, cp)
                if kind:
                    break
                i = j
            if i == end:
                break
            if kind < 0:
                return counts, sums[0], words, d
            start, i = i, j
            while i < end:
                cp, j = next_char(buf, i)
                if _kind(classes, cp) != kind:
                    break
                i = j
            key1, key2 = xxh3_64(buf, start, i), _second_hash(buf, start, i)
            listed = _list(keys, spans, listed, key1, key2, start, i, -1, -1, d)
            if n:
                listed = _list(keys, spans, listed, fmix64(last1 * _P4 + key1), fmix64(last2 * _P5 + key2),
                               last_start, last_stop, start, i, d)
            if listed > _CHUNK - 2:
                _resolve(memo, entries, limit, keys, spans, listed, buf, powers, num_buckets, ratio, counts, sums,
                         block, h, w)
                listed = 0
            n, last_start, last_stop, last1, last2 = n + 1, start, i, key1, key2
        words[d] = n
    _resolve(memo, entries, limit, keys, spans, listed, buf, powers, num_buckets, ratio, counts, sums, block, h, w)
    return counts, sums[0] + sums[1], words, -1


class Featurizer:
    """Bucket counts and log weights of batches of texts, with memoised hashing (one per Python worker).

    The memo maps an n-gram's 128-bit key (xxh3 and ``_second_hash`` of its bytes; a bigram's combines its two
    words' keys) to its bucket. It compares 103 of those bits (``_TAG_BITS``), so two n-grams sharing a key (a wrong
    bucket) is never expected. It is a numpy table the kernel reads and fills in place: at most ``max_pairs``
    entries (words and bigrams; 0 memoises nothing), at 32 to 64 bytes each (16-byte slots, a power of two of them,
    at most half full). Once full, new n-grams are hashed but not kept, so it holds the earliest (mostly the frequent)
    ones: on the demo pool that misses less often than a memo that starts afresh when full.
    """

    def __init__(self, num_buckets: int, max_pairs: int):
        self.num_buckets = num_buckets
        self.max_pairs = max_pairs
        self._memo = np.zeros((1 << (2 * max(max_pairs, 1) - 1).bit_length(), 2), dtype=np.uint64)
        self._entries = np.zeros(1, dtype=np.int64)

    def features(self, texts: list[str], log_ratio: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(unigram + bigram counts per bucket of all texts together (int64), per text counts . log_ratio
        (float64; zeros without log_ratio), words per text)``. Lower-casing is Python's (``str.lower``, in C)."""
        lowered = [t.lower() for t in texts]
        buf, offsets = utf8(lowered)
        ratio = np.empty(0) if log_ratio is None else np.ascontiguousarray(log_ratio, dtype=np.float64)
        counts, weights, words, bad = _featurize(buf, offsets, char_classes("regex"), self._memo, self._entries,
                                                 self.max_pairs, self.num_buckets, ratio)
        if bad >= 0:
            text = lowered[bad]
            at = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")
            raise UnicodeEncodeError("utf-8", text, at, at + 1, f"surrogates not allowed (text {bad} of the batch; "
                                     "DSIR hashes its n-grams as UTF-8, as the reference does)")
        return counts, weights, words


def featurizer(num_buckets: int, max_pairs: int) -> Featurizer:
    """This Python worker's featurizer (a module-level cache: executors import this module once per worker)."""
    key = (num_buckets, max_pairs)
    if key not in _FEATURIZERS:
        _FEATURIZERS[key] = Featurizer(num_buckets, max_pairs)
    return _FEATURIZERS[key]


def bucket_counts(texts: list[str], num_buckets: int, max_pairs: int) -> np.ndarray:
    """Unigram + bigram counts of all ``texts`` together, int64 of shape ``(num_buckets,)``."""
    return featurizer(num_buckets, max_pairs).features(texts)[0]


def log_weights(texts: list[str], log_ratio: np.ndarray, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """``(log importance weight per text (float64), words per text)``; the weight is ``counts . log_ratio``."""
    _, weights, words = featurizer(len(log_ratio), max_pairs).features(texts, log_ratio)
    return weights, words


LOG_WEIGHT = "dsir_log_weight"
# Each task holds a count vector of num_buckets int64 and the broadcast log ratios as float64: 2^24 is 128 MiB each.
MAX_BUCKETS = 1 << 24
_WORDS = "_dsir_words"
TOO_SHORT = "too_short"


@dataclass
class DsirConfig(BudgetedSample):
    num_buckets: int = field(10_000, help="hash buckets of the unigram + bigram features (the reference's default)")
    min_example_length: int = field(100, help="documents with fewer words are never kept (the reference's filter)")
    memo_bigrams: int = field(2_000_000, help="n-grams (words and bigrams) memoised per Python worker (32-64 bytes "
                                              "each)")

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
