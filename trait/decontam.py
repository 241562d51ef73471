"""N-gram decontamination against benchmark test splits: one implementation for the Spark job and the generator.

Imports only the standard library, numpy and ``trait.config`` (PyYAML). A text is normalised (lower-cased, words
``\\w+``) and every run of ``n`` consecutive words is hashed to 64 bits. The hash is stable across processes and
machines: each word is hashed with blake2b (8-byte digest, cached), and the ``n`` word hashes are combined by a
polynomial over uint64 (wrapping) followed by murmur3's 64-bit finaliser, in numpy over all n-grams of a batch at
once; that is one blake2b per distinct word instead of one per n-gram. ``NgramIndex`` holds the sorted unique
n-gram hashes of the benchmarks (uint64) and a parallel bitmask of the benchmarks each comes from; a document
matches when any of its n-grams is found by ``np.searchsorted`` (a bitmap of the keys' top 24 bits first rules out
most n-grams without a search). With 2^64 hashes and 918,205 indexed n-grams
(the registry's ten benchmarks at n=13), the chance that a given document n-gram falsely matches is ~5.0e-14.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trait.benchmarks import BENCHMARKS, BenchmarkError, BenchmarkFile, default_shared_data, read_problems
from trait.config import field

HASH_VERSION = "blake2b8-words-poly-fmix64-v1"
_WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2^64
PREFILTER_BITS = 24


@dataclass
class EvalFile:
    """An extra eval set to decontaminate against, e.g. an in-house test set."""

    name: str = field(help="name reported in the manifest and the quarantine detail")
    path: str = field(help="local JSONL file, or JSON (a list of records or a mapping id -> record)")
    fields: list[str] = field(help="text fields; each is one segment, 'a+b' joins fields a and b with a space")

    @classmethod
    def from_str(cls, text: str) -> EvalFile:
        """CLI form ``NAME=PATH:FIELD[,FIELD...]``, e.g. ``ads_test=data/test.jsonl:query,ad_title+ad_text``."""
        name, eq, rest = text.partition("=")
        path, colon, fields = rest.rpartition(":")
        if not eq or not colon or not name or not path or not fields:
            raise BenchmarkError(f"eval file {text!r}: write NAME=PATH:FIELD[,FIELD...]")
        return cls(name=name, path=path, fields=fields.split(","))


@dataclass
class DecontamConfig:
    shared_data: str = field(default_factory=default_shared_data,
                             help="directory holding benchmarks/ (default $TRAIT_SHARED_DATA, else ../shared/data)")
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS),
                                  help=f"benchmark test splits to remove: any of {', '.join(BENCHMARKS)}")
    eval_files: list[EvalFile] = field(default_factory=list, help="more eval files: name, path, fields")
    n: int = field(13, help="n-gram length in words (13: GPT-3's and the TRAIT paper's choice)")

    def validate(self) -> None:
        for name in self.benchmarks:
            if name not in BENCHMARKS:
                close = difflib.get_close_matches(name, list(BENCHMARKS), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(BENCHMARKS)}"
                raise BenchmarkError(f"unknown benchmark {name!r}; {hint}")
        names = list(self.benchmarks) + [e.name for e in self.eval_files]
        if len(set(names)) != len(names):
            raise BenchmarkError(f"benchmark and eval file names must be distinct, got {names}")
        if not names:
            raise BenchmarkError("nothing to decontaminate against: give benchmarks or eval_files")
        if len(names) > 64:
            raise BenchmarkError(f"at most 64 benchmarks and eval files together, got {len(names)}")
        if self.n < 1:
            raise BenchmarkError(f"n must be at least 1, got {self.n}")
        missing = [f.path for files in self.sources().values() for f in files if not Path(f.path).is_file()]
        if missing:
            raise BenchmarkError(f"benchmark/eval file(s) not found: {', '.join(missing)}; check the paths and the "
                                 "shared data dir (shared_data, --data or $TRAIT_SHARED_DATA)")

    def sources(self) -> dict[str, tuple[BenchmarkFile, ...]]:
        """Name -> files, benchmarks first (paths under ``shared_data``), then eval files (paths as given)."""
        out = {name: tuple(dataclasses.replace(f, path=str(Path(self.shared_data, f.path)))
                           for f in BENCHMARKS[name]) for name in self.benchmarks}
        for e in self.eval_files:
            out[e.name] = (BenchmarkFile(e.path, tuple(e.fields)),)
        return out


_MAX_WORD_HASHES = 1 << 18  # words whose hash a worker keeps: emptied when full (32 MB then, words included)
_word_ids: dict[str, int] = {}  # word -> row of _word_table
_word_table = np.zeros(_MAX_WORD_HASHES, dtype=np.uint64)


def word_hash(word: str) -> int:
    """blake2b of the word's UTF-8 bytes, 8 bytes little-endian, as an unsigned int."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def word_hashes(ws: list[str]) -> np.ndarray:
    """``word_hash`` of each of ``ws`` (uint64), each distinct word hashed once per worker: its row in a table of
    hashes is a dict lookup per word (``map(dict.get)``, in C), and blake2b runs only for words not seen before."""
    ids = np.fromiter(map(_word_ids.get, ws, itertools.repeat(-1)), dtype=np.int64, count=len(ws))
    missing = np.flatnonzero(ids < 0)
    if len(missing):
        new = list(dict.fromkeys(ws[i] for i in missing.tolist()))  # distinct, in order
        if len(_word_ids) + len(new) > _MAX_WORD_HASHES:
            _word_ids.clear()
            if len(new) > _MAX_WORD_HASHES:  # one batch with more distinct words than the table holds
                return np.fromiter(map(word_hash, ws), dtype=np.uint64, count=len(ws))
            return word_hashes(ws)
        first = len(_word_ids)
        _word_table[first:first + len(new)] = [word_hash(w) for w in new]
        _word_ids.update(zip(new, range(first, first + len(new))))
        ids[missing] = [_word_ids[ws[i]] for i in missing.tolist()]
    return _word_table[ids]


def words(text: str) -> list[str]:
    """The normalisation shared by benchmarks and documents: lower-case, then runs of word characters."""
    return _WORD.findall(text.lower())


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, in place on ``x`` (returned)."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


def rolling_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every window of ``n`` consecutive entries: shape (len - n + 1,), or (0,) when shorter."""
    count = len(word_hashes) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):  # in place: one pass per word of the window, no temporaries
            acc *= _MULT
            acc += word_hashes[j:j + count]
        return _fmix64(acc)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Hashes of the text's word n-grams, in order (duplicates kept)."""
    return rolling_hashes(word_hashes(words(text)), n)


@dataclass(frozen=True)
class Match:
    """What a document shares with the index: benchmark names (empty if clean) and the first shared n-gram."""

    benchmarks: tuple[str, ...]
    first_ngram: str | None
    matching_ngrams: int


class NgramIndex:
    """Sorted unique n-gram hashes (uint64, shape (N,)) with a parallel bitmask (bit i: ``names[i]``)."""

    def __init__(self, keys: np.ndarray, masks: np.ndarray, names: list[str], n: int):
        self.keys, self.masks, self.names, self.n = keys, masks, list(names), int(n)
        # A bitmap of the keys' top PREFILTER_BITS bits (2 MiB): a document n-gram whose bit is clear is not in the
        # index, so only the few with a set bit (~5% at 918,205 keys) are looked up by binary search.
        present = np.zeros(1 << PREFILTER_BITS, dtype=bool)
        present[keys >> np.uint64(64 - PREFILTER_BITS)] = True
        self._prefilter = np.packbits(present, bitorder="little")

    @classmethod
    def from_texts(cls, texts_by_name: dict[str, list[str]], n: int) -> NgramIndex:
        """Index every n-gram of every text; a text shorter than ``n`` words adds nothing."""
        names = list(texts_by_name)
        dtype = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(t).bits >= len(names))
        keys, masks = [], []
        for bit, name in enumerate(names):
            hashes = [ngram_hashes(t, n) for t in texts_by_name[name]]
            unique = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
            keys.append(unique)
            masks.append(np.full(len(unique), 1 << bit, dtype=dtype))
        all_keys, all_masks = np.concatenate(keys), np.concatenate(masks)
        order = np.argsort(all_keys, kind="stable")
        all_keys, all_masks = all_keys[order], all_masks[order]
        starts = np.flatnonzero(np.r_[True, all_keys[1:] != all_keys[:-1]]) if len(all_keys) else np.zeros(0, int)
        merged = np.bitwise_or.reduceat(all_masks, starts) if len(starts) else all_masks
        return cls(all_keys[starts], merged.astype(dtype), names, n)

    @property
    def nbytes(self) -> int:
        """Bytes of the two arrays (what a worker holds in memory)."""
        return int(self.keys.nbytes + self.masks.nbytes)

    def ngrams_per_name(self) -> dict[str, int]:
        """Distinct n-grams of each benchmark (an n-gram in two benchmarks counts in both)."""
        return {name: int(np.count_nonzero(self.masks & self.masks.dtype.type(1 << bit)))
                for bit, name in enumerate(self.names)}

    def match_many(self, texts: list[str]) -> list[Match]:
        """One Match per text. All n-grams of the batch are hashed together in numpy; the prefilter bitmap rules
        out most of them, and the rest are looked up by binary search in the sorted keys."""
        n = self.n
        per_doc = [words(t) for t in texts]
        lengths = np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc))
        hashes = rolling_hashes(word_hashes(list(itertools.chain.from_iterable(per_doc))), n)
        top = hashes >> np.uint64(64 - PREFILTER_BITS)
        maybe = np.flatnonzero((self._prefilter[top >> np.uint64(3)] >> (top & np.uint64(7)).astype(np.uint8)) & 1)
        out = [Match((), None, 0)] * len(texts)
        if not len(maybe):
            return out
        ends = np.cumsum(lengths)
        doc_of = np.searchsorted(ends, maybe, side="right")  # the document each window starts in
        # A window is a document n-gram only when it ends inside the document it starts in.
        maybe = maybe[maybe + n <= ends[doc_of]]
        pos = np.minimum(np.searchsorted(self.keys, hashes[maybe]), len(self.keys) - 1)
        found = self.keys[pos] == hashes[maybe]
        hits, pos = maybe[found], pos[found]
        if not len(hits):
            return out
        doc_of = np.searchsorted(ends, hits, side="right")
        docs, first = np.unique(doc_of, return_index=True)
        masks = np.bitwise_or.reduceat(self.masks[pos], first)
        counts = np.diff(np.r_[first, len(hits)])
        for doc, start, mask, count in zip(docs, hits[first], masks, counts):
            names = tuple(name for bit, name in enumerate(self.names) if int(mask) >> bit & 1)
            at = start - (ends[doc] - lengths[doc])
            out[doc] = Match(names, " ".join(per_doc[doc][at:at + n]), int(count))
        return out

    def matches(self, text: str) -> set[str]:
        """Names of the benchmarks that share at least one n-gram with ``text``."""
        return set(self.match_many([text])[0].benchmarks)

    def save(self, path: str | Path) -> None:
        """Write an uncompressed .npz (keys, masks, names, n, hash version)."""
        np.savez(path, keys=self.keys, masks=self.masks, names=np.array(self.names, dtype=str),
                 n=np.array(self.n), hash_version=np.array(HASH_VERSION))

    @classmethod
    def load(cls, path: str | Path) -> NgramIndex:
        with np.load(path, allow_pickle=False) as data:
            if str(data["hash_version"]) != HASH_VERSION:
                raise BenchmarkError(f"{path}: index hashed with {data['hash_version']}, this code uses "
                                     f"{HASH_VERSION}; rebuild the index")
            return cls(data["keys"], data["masks"], [str(s) for s in data["names"]], int(data["n"]))


def build_index(config: DecontamConfig) -> tuple[NgramIndex, dict]:
    """Read every configured test file and index its n-grams; also return a report per benchmark: files read
    (records, malformed by reason), problems, problems too short to give an n-gram, distinct n-grams."""
    texts: dict[str, list[str]] = {}
    report: dict[str, dict] = {}
    for name, files in config.sources().items():
        texts[name], files_read, short = [], [], 0
        for spec in files:
            problems, file_report = read_problems(spec)
            files_read.append(file_report.to_dict())
            for segments in problems:
                texts[name].extend(segments)
                short += all(len(words(s)) < config.n for s in segments)
        report[name] = {"files": files_read, "problems": sum(f["problems"] for f in files_read),
                        "problems_shorter_than_n": short,
                        "malformed": sum(f["malformed_total"] for f in files_read)}
    index = NgramIndex.from_texts(texts, config.n)
    for name, count in index.ngrams_per_name().items():
        report[name]["ngrams"] = count
    return index, report
