"""Exact and near-duplicate detection: normalisation, shingles, MinHash signatures and LSH band keys.

One implementation for the Spark ``dedup`` job (which runs these functions on its executors) and for the
synthetic-passage generator (which calls ``find_duplicates`` on a few thousand passages in memory). Imports only
the standard library, numpy, numba and xxhash, so ``synth/`` can use it without pyspark. Tokenising, shingling
and the permutations run in compiled kernels (``trait.native``) over a batch's UTF-8 bytes; ``tokens`` and
``normalise`` are the Python definitions they are tested against.

- Normalisation (``normaliser``), two to choose from:
  ``dedup-v1`` (the default): NFKC, lower case, tokens are runs of word characters or single punctuation marks,
  joined by one space. White space and case variants become equal; digits and punctuation stay, so ``x+1`` and
  ``x-1`` stay different.
  ``datatrove``: datatrove's and FineWeb's ``simplify_text`` (``trait.simplify``): lower case, numbers to ``0``,
  punctuation dropped, accents stripped; tokens are the whitespace-separated words. Texts that differ only in
  their numbers (``May 17`` vs ``June 3``) or punctuation become equal.
- Exact key: xxh3-128 of the normalised text (hex); a text that normalises to nothing keys on its own bytes.
- Shingles: word n-grams over the tokens (``shingle_size``, default 5); a text with fewer tokens is one shingle.
  A shingle's hash is xxh3-64 (seed 0) of its UTF-8 bytes: stable across processes, machines and versions,
  never Python's salted ``hash()``.
- Signatures: ``num_perm = bands * rows`` values ``min over shingles of (a_i * x + b_i) mod (2^61 - 1)``, with
  ``x`` the shingle hash reduced mod 2^61 - 1, ``a_i`` in [1, 2^32) and ``b_i`` in [0, 2^61 - 1) drawn from
  xxh3-64 of the seed and ``i``. ``a_i < 2^32`` lets the 93-bit product be done exactly in uint64 halves.
- LSH: band ``j`` of a signature keys on xxh3-64 of its ``rows`` values (little-endian bytes), as int64.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import xxhash
from numba import njit

from trait import UserError
from trait.config import ConfigError, field
from trait.native import SPACE, WORD, char_classes, next_char, utf8, widest, xxh3_64
from trait.simplify import simplify_text

MERSENNE_61 = (1 << 61) - 1

_P = np.uint64(MERSENNE_61)
_LOW32, _LOW29 = np.uint64(0xFFFFFFFF), np.uint64((1 << 29) - 1)
_S29, _S32, _S61 = np.uint64(29), np.uint64(32), np.uint64(61)
_TOKENS = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """``dedup-v1`` tokens: NFKC, lower case, word runs and single punctuation marks."""
    return _TOKENS.findall((text if text.isascii() else unicodedata.normalize("NFKC", text)).lower())


def simplified_words(text: str) -> list[str]:
    """``datatrove`` tokens: the whitespace-separated words of ``simplify_text``."""
    return simplify_text(text).split()


NORMALISERS = {"dedup-v1": tokens, "datatrove": simplified_words}  # name (recorded in every manifest) -> tokens


@dataclass
class DedupConfig:
    shingle_size: int = field(5, help="words per shingle (word n-grams over the normalised tokens)")
    bands: int = field(16, help="LSH bands; two documents are candidates when all rows of one band agree")
    rows: int = field(8, help="signature values per band; num_perm = bands * rows")
    threshold: float = field(0.8, help="near duplicates: estimated Jaccard similarity of shingle sets >= this")
    seed: int = field(0, help="seed of the MinHash permutations (the same seed gives the same signatures)")
    max_bucket_size: int = field(100, help="LSH buckets with more documents pair each member with the bucket's "
                                 "smallest id only (linear, not quadratic); the manifest counts the pairs skipped")
    num_perm: int | None = field(None, help="optional check: when given, must equal bands * rows")
    min_candidate_probability: float = field(0.5, help="refuse bands/rows whose chance of making a pair at exactly "
                                             "the threshold a candidate, 1 - (1 - t^rows)^bands, is below this")
    normaliser: str = field("dedup-v1", help="text normalisation before hashing: 'dedup-v1' (NFKC, lower case, "
                            "words and punctuation marks as tokens: digits and punctuation count) or 'datatrove' "
                            "(datatrove's and FineWeb's: lower case, numbers to 0, punctuation and accents dropped; "
                            "docs/selection.md)")

    @property
    def permutations(self) -> int:
        return self.bands * self.rows

    @property
    def min_agreeing(self) -> int:
        """Signature positions two documents must share to count as near duplicates: ceil(threshold * num_perm),
        an integer, so the Spark job and the in-memory path decide identically."""
        return math.ceil(self.threshold * self.permutations - 1e-9)

    def candidate_probability(self, jaccard: float) -> float:
        """Chance that a pair with this Jaccard similarity shares at least one band (the LSH S-curve)."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands

    def validate(self) -> None:
        if self.normaliser not in NORMALISERS:
            raise ConfigError(f"normaliser must be one of {', '.join(NORMALISERS)}, got {self.normaliser!r}")
        for name in ("shingle_size", "bands", "rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold is a Jaccard similarity in (0, 1], got {self.threshold}")
        if self.max_bucket_size < 2:
            raise ConfigError(f"max_bucket_size must be >= 2, got {self.max_bucket_size}")
        if self.num_perm is not None and self.num_perm != self.permutations:
            raise ConfigError(f"num_perm {self.num_perm} != bands * rows = {self.bands} * {self.rows} = "
                              f"{self.permutations}; fix one of them or drop num_perm")
        p = self.candidate_probability(self.threshold)
        if p < self.min_candidate_probability:
            raise ConfigError(
                f"bands={self.bands}, rows={self.rows} make only {p:.1%} of pairs at Jaccard {self.threshold} "
                f"candidates (the S-curve's midpoint is {(1 / self.bands) ** (1 / self.rows):.2f}); use more bands "
                "or fewer rows, or a higher threshold")


def normalise(text: str, normaliser: str = "dedup-v1") -> str:
    """The text exact deduplication compares: its tokens joined by single spaces."""
    return " ".join(NORMALISERS[normaliser](text))


def exact_key(text: str, normalised: str | None = None) -> str:
    """32 hex chars: xxh3-128 of the normalised text (``dedup-v1`` unless given), or of the text itself when it
    normalises to nothing."""
    normalised = normalise(text) if normalised is None else normalised
    return _exact_key(text, normalised.encode("utf-8", "surrogatepass"))


def _exact_key(text: str, encoded: bytes) -> str:
    """``exact_key`` from the normalised text's UTF-8 bytes."""
    return xxhash.xxh3_128_hexdigest(encoded or text.encode("utf-8", "surrogatepass"))


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): uint64 arrays of length ``num_perm``; a in [1, 2^32), b in [0, 2^61 - 1), stable for a seed."""
    h = xxhash.xxh3_64_intdigest
    a = [h(f"minhash-a:{seed}:{i}".encode()) % 0xFFFFFFFF + 1 for i in range(num_perm)]
    b = [h(f"minhash-b:{seed}:{i}".encode()) % MERSENNE_61 for i in range(num_perm)]
    return np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)


@njit(inline="always")
def permuted(x, a, b):
    """(a * x + b) mod (2^61 - 1), exact, for x < 2^61 - 1 and a < 2^32 (uint64 in and out).

    a * x = a * x1 * 2^32 + a * x0 with x1 = x >> 32 (< 2^29) and x0 < 2^32, so each product fits in 64 bits;
    2^61 = 1 (mod p) folds the high bits: v * 2^32 = (v >> 29) + ((v & (2^29 - 1)) << 32) and u = (u & p) + (u >> 61).
    """
    v = (x >> _S32) * a
    u = (x & _LOW32) * a
    total = (v >> _S29) + ((v & _LOW29) << _S32) + (u >> _S61) + (u & _P) + b  # < 3 * 2^61 + 2^32 + 8: no overflow
    folded = (total & _P) + (total >> _S61)  # < 2^61 + 4
    return min(folded, folded - _P)  # canonical in [0, p): folded - p wraps around when folded < p


@njit(cache=True)
def _v1_normalised(buf, offsets, classes):
    """``dedup-v1``'s normalised texts from their NFKC'd, lower-cased UTF-8 (``trait.native.utf8``): the tokens
    (runs of word characters, or one character that is neither a word character nor white space) joined by single
    spaces; (bytes, offsets) in ``utf8``'s layout."""
    out = np.empty(2 * len(buf), dtype=np.uint8)  # each character's bytes, at most one space before it
    out_offsets = np.zeros(len(offsets), dtype=np.int64)
    o = 0
    for d in range(len(offsets) - 1):
        first, in_word, i = o, False, offsets[d]
        while i < offsets[d + 1]:
            code, after = next_char(buf, i)
            kind = classes[code]
            if kind & SPACE:
                in_word = False
            else:
                if o > first and not (in_word and kind & WORD):  # a new token: a space after the one before
                    out[o] = 32
                    o += 1
                in_word = bool(kind & WORD)
                out[o:o + after - i] = buf[i:after]
                o += after - i
            i = after
        out_offsets[d + 1] = o
    return out[:o].copy(), out_offsets


@njit(cache=True)
def _signatures(norm, offsets, shingle_size, a, b):
    """(MinHash signatures (texts, len(a)) uint64, shingles per text) of normalised texts (tokens joined by single
    spaces, in ``utf8``'s layout). A shingle is ``shingle_size`` consecutive tokens with their spaces, a contiguous
    run of the bytes, hashed with xxh3-64 and reduced mod 2^61 - 1; a text with fewer tokens is one shingle."""
    docs, perms = len(offsets) - 1, len(a)
    sigs = np.full((docs, perms), np.iinfo(np.uint64).max, dtype=np.uint64)
    shingles = np.zeros(docs, dtype=np.int64)
    starts = np.empty(widest(offsets) // 2 + 2, dtype=np.int64)  # a token and the space after it take >= 2 bytes
    ends = np.empty_like(starts)
    for d in range(docs):
        if offsets[d] == offsets[d + 1]:
            continue
        tokens, starts[0] = 0, offsets[d]
        for i in range(offsets[d], offsets[d + 1]):
            if norm[i] == 32:
                ends[tokens] = i
                tokens += 1
                starts[tokens] = i + 1
        ends[tokens] = offsets[d + 1]
        tokens += 1
        count = max(tokens - shingle_size + 1, 1)
        sig = sigs[d]
        for j in range(count):
            x = xxh3_64(norm, starts[j], ends[min(j + shingle_size, tokens) - 1])
            x = (x & _P) + (x >> _S61)  # x mod p for x < 2^64: fold the bits above 61 down (2^61 = 1 mod p) ...
            x = min(x, x - _P)  # ... then make it canonical
            for i in range(perms):
                sig[i] = min(sig[i], permuted(x, a[i], b[i]))
        shingles[d] = count
    return sigs, shingles


def signatures(texts: list[str], config: DedupConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MinHash signatures of ``texts``: (uint64 array (n, num_perm), bool array (n,) True where the text has any
    token (rows without are all ones), exact keys). ``dedup-v1`` normalises in a compiled kernel after NFKC and
    lower-casing in Python; ``datatrove`` in Python (``simplify_text``); the shingles and signatures of both are
    one compiled pass over the normalised bytes."""
    if config.normaliser == "dedup-v1":
        prepared = [(t if t.isascii() else unicodedata.normalize("NFKC", t)).lower() for t in texts]
        norm, offsets = _v1_normalised(*utf8(prepared), char_classes())
    else:
        norm, offsets = utf8([" ".join(NORMALISERS[config.normaliser](t)) for t in texts])
    raw, bounds = norm.tobytes(), offsets.tolist()
    keys = [_exact_key(text, raw[bounds[i]:bounds[i + 1]]) for i, text in enumerate(texts)]
    sigs, shingles = _signatures(norm, offsets, config.shingle_size, *permutations(config.permutations, config.seed))
    return sigs, shingles > 0, keys


def band_keys(sigs: np.ndarray, config: DedupConfig) -> np.ndarray:
    """int64 (n, bands): xxh3-64 of each band's ``rows`` signature values as little-endian bytes."""
    n = sigs.shape[0]
    raw = np.ascontiguousarray(sigs, dtype="<u8").view(np.uint8).reshape(n, config.bands, config.rows * 8)
    h = xxhash.xxh3_64_intdigest
    keys = np.fromiter((h(raw[i, j].tobytes()) for i in range(n) for j in range(config.bands)),
                       dtype=np.uint64, count=n * config.bands)
    return keys.view(np.int64).reshape(n, config.bands)


class DuplicateIdError(UserError, ValueError):
    """Two documents share an id, so "keep the smallest id" cannot choose between them."""


def candidate_pairs(ids: list[str], keys: np.ndarray, config: DedupConfig) -> tuple[set[tuple[str, str]], dict]:
    """Pairs (smaller id, larger id) that share a band key, and bucket statistics.

    A bucket of up to ``max_bucket_size`` documents gives all its pairs; a larger one pairs each member with its
    smallest id only, so a bucket of n costs n - 1 pairs instead of n (n - 1) / 2 (the rest are counted as
    skipped; members similar to each other but not to that smallest id can still meet in another band)."""
    pairs: set[tuple[str, str]] = set()
    stats = {"oversized_buckets": 0, "pairs_skipped": 0}
    for band in range(config.bands):
        buckets: dict[int, list[str]] = {}
        for doc, key in zip(ids, keys[:, band].tolist()):
            buckets.setdefault(key, []).append(doc)
        for members in buckets.values():
            n = len(members)
            if n < 2:
                continue
            members.sort()
            if n <= config.max_bucket_size:
                pairs.update((members[i], members[j]) for i in range(n) for j in range(i + 1, n))
            else:
                pairs.update((members[0], m) for m in members[1:])
                stats["oversized_buckets"] += 1
                stats["pairs_skipped"] += n * (n - 1) // 2 - (n - 1)
    return pairs, stats


def find_duplicates(ids: list[str], texts: list[str], config: DedupConfig) -> dict[str, tuple[str, str]]:
    """Documents to drop: ``{id: (reason, representative id)}``, reason ``exact_duplicate`` or ``near_duplicate``.

    The Spark job's algorithm in memory, for a few thousand texts: (1) exact: among texts with the same exact key
    keep the smallest id; (2) near, over the survivors: candidate pairs from LSH bands, verified by signature
    agreement >= ``min_agreeing``, connected components (union-find), keep each component's smallest id.
    An exact duplicate's representative is its exact twin, which may itself be a near duplicate of another."""
    if len(set(ids)) != len(ids):
        raise DuplicateIdError("ids must be unique: give each text its own id before deduplicating")
    sigs, present, keys = signatures(texts, config)
    first: dict[str, str] = {}
    for doc, key in sorted(zip(ids, keys)):
        first.setdefault(key, doc)
    dropped = {doc: ("exact_duplicate", first[key]) for doc, key in zip(ids, keys) if first[key] != doc}
    rows = [i for i, doc in enumerate(ids) if present[i] and doc not in dropped]
    survivors = [ids[i] for i in rows]
    pairs, _ = candidate_pairs(survivors, band_keys(sigs[rows], config), config)
    position = {doc: i for i, doc in enumerate(ids)}
    parent = {doc: doc for doc in survivors}

    def root(doc: str) -> str:
        while parent[doc] != doc:
            parent[doc] = parent[parent[doc]]  # path halving
            doc = parent[doc]
        return doc

    for left, right in sorted(pairs):
        agreeing = int(np.count_nonzero(sigs[position[left]] == sigs[position[right]]))
        if agreeing >= config.min_agreeing:
            a, b = root(left), root(right)
            parent[max(a, b)] = min(a, b)  # the root is always the component's smallest id
    dropped.update({doc: ("near_duplicate", root(doc)) for doc in survivors if root(doc) != doc})
    return dropped
