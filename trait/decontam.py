"""N-gram decontamination against benchmark test splits: one implementation for the Spark job and the generator.

Imports only the standard library, numpy, numba, xxhash and ``trait.config`` (PyYAML), so ``synth/`` uses it
without pyspark. A text is normalised (lower-cased, words ``\\w+``) and every run of ``n`` consecutive words is
hashed to 64 bits. The hash is stable across processes and machines: each word is hashed with xxh3-64 (its UTF-8
bytes, seed 0), and the ``n`` word hashes are combined by a polynomial over uint64 (wrapping) followed by murmur3's
64-bit finaliser. A compiled kernel (``trait.native``) does all of it in one pass over a batch's UTF-8 bytes,
with no Python object per word (the numpy version it replaced hashed each distinct word with blake2b and kept a
dict from word to hash; rates of both in docs/benchmarks-scale.md). ``NgramIndex`` holds the sorted
unique n-gram hashes of the benchmarks (uint64) and a parallel bitmask of the benchmarks each comes from; a
document matches when any of its n-grams is found by binary search in them (a bitmap of the keys' top 24 bits
first rules out most n-grams without a search). With 2^64 hashes and 918,205 indexed n-grams
(the registry's ten benchmarks at n=13), the chance that a given document n-gram falsely matches is ~5.0e-14.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from trait.benchmarks import BENCHMARKS, BenchmarkError, BenchmarkFile, default_shared_data, read_problems
from trait.config import field
from trait.native import WORD, char_classes, fmix64, next_char, utf8, widest, xxh3_64

HASH_VERSION = "xxh3-words-poly-fmix64-v2"
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


def words(text: str) -> list[str]:
    """The normalisation shared by benchmarks and documents: lower-case, then runs of word characters. The kernels
    below find the same words (``trait.native.char_classes`` is this regex's ``\\w``); this is what a first shared
    n-gram is shown as."""
    return _WORD.findall(text.lower())


@njit(inline="always")
def _doc_word_hashes(buf, start, stop, classes, out):
    """xxh3-64 of each word of ``buf[start:stop]`` (UTF-8) into ``out``, in order; returns how many."""
    count, word_start, i = 0, -1, start
    while i < stop:
        code, after = next_char(buf, i)
        if classes[code] & WORD:
            if word_start < 0:
                word_start = i
        elif word_start >= 0:
            out[count] = xxh3_64(buf, word_start, i)
            count += 1
            word_start = -1
        i = after
    if word_start >= 0:
        out[count] = xxh3_64(buf, word_start, stop)
        count += 1
    return count


@njit(inline="always")
def _window_hashes(word_hashes, count, n, out):
    """The hash of every window of ``n`` consecutive words into ``out``; returns how many (0 when fewer words)."""
    windows = count - n + 1
    for w in range(max(windows, 0)):
        acc = np.uint64(0)
        for j in range(n):
            acc = acc * _MULT + word_hashes[w + j]
        out[w] = fmix64(acc)
    return max(windows, 0)


@njit(cache=True)
def _ngram_hashes_many(buf, offsets, classes, n):
    """Hashes of every text's n-grams, back to back, for texts encoded by ``utf8``."""
    docs = len(offsets) - 1
    scratch = np.empty(widest(offsets) // 2 + 1, dtype=np.uint64)  # a word and the character after it take >= 2 bytes
    hashes = np.empty(len(buf) // 2 + docs + 1, dtype=np.uint64)
    total = 0
    for d in range(docs):
        count = _doc_word_hashes(buf, offsets[d], offsets[d + 1], classes, scratch)
        total += _window_hashes(scratch, count, n, hashes[total:])
    return hashes[:total].copy()


@njit(cache=True)
def _match(buf, offsets, classes, n, prefilter, keys):
    """Every n-gram of the texts that is in ``keys``: (text, window = its first word's position, row of keys),
    in text and window order. A window whose prefilter bit (its hash's top PREFILTER_BITS bits) is clear is not
    looked up."""
    docs = len(offsets) - 1
    words = np.empty(widest(offsets) // 2 + 1, dtype=np.uint64)
    windows = np.empty_like(words)
    hits = np.empty((3, 64), dtype=np.int64)
    found = 0
    shift = np.uint64(64 - PREFILTER_BITS)
    for d in range(docs):
        count = _window_hashes(words, _doc_word_hashes(buf, offsets[d], offsets[d + 1], classes, words), n, windows)
        for w in range(count):
            top = windows[w] >> shift
            if not (prefilter[top >> np.uint64(3)] >> (top & np.uint64(7))) & 1:
                continue
            pos = np.searchsorted(keys, windows[w])
            if pos < len(keys) and keys[pos] == windows[w]:
                if found == hits.shape[1]:
                    grown = np.empty((3, 2 * found), dtype=np.int64)
                    grown[:, :found] = hits
                    hits = grown
                hits[0, found], hits[1, found], hits[2, found] = d, w, pos
                found += 1
    return hits[:, :found].copy()


def ngram_hashes(texts: list[str], n: int) -> np.ndarray:
    """Hashes of the word n-grams of each text, in order (duplicates kept), the texts' back to back."""
    return _ngram_hashes_many(*utf8([t.lower() for t in texts]), char_classes(), n)


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
            unique = np.unique(ngram_hashes(texts_by_name[name], n))
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
        """One Match per text: one compiled pass over the batch's bytes (``_match``) finds the n-grams in the index;
        only the texts with a hit are split into words again, to show their first shared n-gram."""
        hits = _match(*utf8([t.lower() for t in texts]), char_classes(), self.n, self._prefilter, self.keys)
        out = [Match((), None, 0)] * len(texts)
        if not hits.shape[1]:
            return out
        docs, first = np.unique(hits[0], return_index=True)
        masks = np.bitwise_or.reduceat(self.masks[hits[2]], first)
        counts = np.diff(np.r_[first, hits.shape[1]])
        for doc, at, mask, count in zip(docs.tolist(), hits[1, first].tolist(), masks.tolist(), counts.tolist()):
            names = tuple(name for bit, name in enumerate(self.names) if mask >> bit & 1)
            out[doc] = Match(names, " ".join(words(texts[doc])[at:at + self.n]), count)
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
