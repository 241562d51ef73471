"""Tokenise a finished contract dataset into a memory-mapped token file, as far as training needs, cached by what it
was made from.

A stage rarely needs a whole source: stage 1 of the tiny example drew 40,960 tokens from a replay pool of 85.7M
(tokenising all of it took 97 s). So documents are tokenised in a seeded shuffle order (``document_order``: its
prefixes are uniform samples of the source) and only until the need is met; a later need extends the same entry.

One cache entry per (dataset inputs, rows kept, tokenizer, shuffle seed), never per need: ``<cache_dir>/<key>/``
holds the first ``documents`` documents of the shuffle order:

- ``tokens.bin``: each document's tokens followed by EOS, in shuffle order, a flat array of ``uint16`` (vocabulary
  < 65536) or ``uint32``, read back with ``np.memmap``;
- ``doc_lengths.npy``: ``uint32 [documents]``, tokens per document without its EOS;
- ``doc_rows.npy``: ``int64 [documents]``, each document's row in the dataset (parts sorted by name, rows in file
  order), to name a document and to check an extension continues the same order;
- ``index.json``: counts, dtype, EOS id, fingerprints, how many documents the source has, and how long it took.

A consumer uses the shortest prefix of documents that meets its need (``CachedTokens.prefix``), whatever else the
entry holds: the same need gives the same tokens whether the entry was built for it or extended past it by a larger
one, so a resumed run or another arm sees the same data. The key leaves out ``seq_len`` and the need on purpose:
packing is a zero-copy view of this stream (sequence i is tokens ``[i*seq_len, (i+1)*seq_len)``), so one entry
serves every sequence length and budget. An entry is built (or extended: its tokens copied, new documents appended)
in a ``.<key>.*`` staging directory and renamed into place under an ``fcntl`` lock: concurrent ranks wait for the
first builder and then read its entry, and a killed build leaves only a staging directory that the next builder
removes. Readers of a replaced entry keep their memory map (the old files are unlinked, not truncated).

Rows with a ``reject_reason`` (generated passages that failed validation and were kept flagged) are left out
unless the source includes them explicitly (``SourceFiles(include_rejected=True)``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.mixture import mix64_array
from trainer.source_files import CHUNK_BYTES, DataError, SourceFiles
from trait.progress import ProgressLog

log = logging.getLogger(__name__)

# Bump when the bytes of an entry would change for the same inputs and tokenizer (encoding options, layout, order).
CACHE_FORMAT = 2
TOKENS_FILE = "tokens.bin"
LENGTHS_FILE = "doc_lengths.npy"
ROWS_FILE = "doc_rows.npy"
INDEX_FILE = "index.json"
# How many documents a pass tokenises is estimated before it runs: from the text's bytes at first (English BPE runs
# ~4 bytes a token, so the guess rarely overshoots much), then from the tokens per document found so far. A short
# pass is topped up by another (one more read of the dataset, seconds beside tokenising), so a guess may be low.
BYTES_PER_TOKEN_GUESS = 4.0
PASS_MARGIN = 1.1  # documents tokenised beyond a pass's estimate
GATHER_TOKENS = 1 << 24  # tokens reordered per step (index arrays of 8 bytes a token: 128 MB)


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab_size <= 65536, ids 0..65535), else ``uint32``: 2 bytes a token, not 4."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenizerInfo:
    """What the workers need to rebuild the tokenizer, and its identity for the cache key."""

    directory: str
    backend_json: str  # the fast tokenizer's own serialisation (tokenizers.Tokenizer.to_str())
    eos_token_id: int
    vocab_size: int  # ids are < vocab_size, added tokens included
    fingerprint: str  # sha256 over backend_json and the EOS id


def load_tokenizer(tokenizer_dir: str) -> TokenizerInfo:
    """Load ``tokenizer_dir`` with ``AutoTokenizer`` (a fast tokenizer) and check it has an EOS token."""
    if not Path(tokenizer_dir).is_dir():
        raise DataError(f"tokenizer directory {tokenizer_dir} not found; pass the model directory (or its "
                        "tokenizer) that training starts from")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not getattr(tok, "is_fast", False):
        raise DataError(f"{tokenizer_dir}: {type(tok).__name__} is not a fast tokenizer; the trainer tokenises with "
                        "the Rust tokenizer, so the directory needs a tokenizer.json")
    if tok.eos_token_id is None:
        raise DataError(f"{tokenizer_dir}: the tokenizer has no EOS token, and packing puts EOS between documents; "
                        "set eos_token in tokenizer_config.json (e.g. \"</s>\" or \"<|endoftext|>\")")
    backend = tok.backend_tokenizer.to_str()
    vocab = max(len(tok), tok.backend_tokenizer.get_vocab_size(with_added_tokens=True))
    digest = hashlib.sha256(json.dumps({"tokenizer": backend, "eos": tok.eos_token_id}).encode()).hexdigest()
    return TokenizerInfo(str(tokenizer_dir), backend, int(tok.eos_token_id), int(vocab), digest)


class Encoder:
    """Turns a chunk of documents into one token array: each document's ids, then EOS.

    Special-token strings inside a document ("</s>" in a web page) are encoded as the text they are, never as the
    special token: otherwise a document could plant an EOS mid-text and split itself in two.
    """

    def __init__(self, tokenizer: TokenizerInfo):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer.backend_json)
        self.tokenizer.encode_special_tokens = True
        self.eos = tokenizer.eos_token_id
        self.dtype = token_dtype(tokenizer.vocab_size)

    def __call__(self, chunk: tuple[np.ndarray, list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, texts) -> (tokens ``[sum(len)+docs]``, lengths ``uint32 [docs]``, the rows as given)."""
        rows, texts = chunk
        # encode_batch_fast skips the character offsets that encode_batch computes and we never read.
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        flat: list[int] = []
        lengths = np.empty(len(texts), np.uint32)
        for i, encoding in enumerate(encodings):
            doc = encoding.ids
            flat.extend(doc)
            flat.append(self.eos)
            lengths[i] = len(doc)
        return np.array(flat, self.dtype), lengths, rows


@contextlib.contextmanager
def _rust_threads_off() -> Iterator[None]:
    """Make ``workers`` mean what it says: tokenizers reads TOKENIZERS_PARALLELISM on every call, and left on, its
    Rust pool (one thread per CPU) would run every batch on all CPUs whatever the worker count."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _ordered_map(tokenizer: TokenizerInfo, chunks: Iterator, workers: int) -> Iterator:
    """Encode ``chunks`` in order: here when ``workers == 1``, else on ``workers`` threads with at most 2 chunks
    per thread in flight (bounded memory: ~2 MB of text each, whatever the corpus size).

    Threads, not processes: ``encode_batch_fast`` releases the GIL, so the threads run the Rust tokenizer in
    parallel and only the id-list-to-array step (~4 % of the time, measured) takes turns. Processes would need a
    spawn start method in a trainer that may hold torch threads, and spawn re-imports the launching script (torch,
    deepspeed: seconds per worker) and fails outright in one without an ``if __name__ == "__main__"`` guard.
    Measured on 4 MB of Wikipedia (1.52 M tokens) on the 2-core machine, best of 12 interleaved runs while other
    jobs kept its load average at 6-13: 1 thread 2.08 s, 2 threads 1.61 s, 2 spawned processes 1.66 s, and the
    Rust pool instead (TOKENIZERS_PARALLELISM=true, one Python thread) 2.80 s, slower than one thread.
    """
    if workers == 1:
        yield from map(Encoder(tokenizer), chunks)
        return
    local = threading.local()

    def encode(chunk):
        encoder = getattr(local, "encoder", None)
        if encoder is None:  # one tokenizer per thread: nothing shared but the immutable TokenizerInfo
            encoder = local.encoder = Encoder(tokenizer)
        return encoder(chunk)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenise")
    try:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(encode, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def document_order(n: int, seed: int) -> np.ndarray:
    """The seeded shuffle of a source's ``n`` documents: ``int64 [n]``, entry i the document tokenised i-th.

    Documents sorted by splitmix64(i XOR key): a bijection of 64-bit integers, so no ties, the same on every machine
    and numpy version (numpy's own generators promise no stable stream), O(n log n) in numpy (~1 s for 10^7)."""
    key = int.from_bytes(hashlib.blake2b(f"documents\x00{seed}".encode(), digest_size=8).digest(), "little")
    return np.argsort(mix64_array(np.arange(n, dtype=np.uint64) ^ np.uint64(key)), kind="stable")


@dataclass
class CachedTokens:
    """One cache entry, memory-mapped: ``tokens`` is ``[index['tokens']]`` of ``index['dtype']``, the first
    ``index['documents']`` documents of the source's shuffle order (all of them when ``complete``)."""

    path: Path
    index: dict
    tokens: np.ndarray = field(repr=False)
    doc_lengths: np.ndarray = field(repr=False)  # uint32 [documents]
    doc_rows: np.ndarray = field(repr=False)  # int64 [documents]: each document's row in the dataset
    hit: bool = True

    @property
    def complete(self) -> bool:
        return self.index["documents"] == self.index["source_documents"]

    def covers(self, need: int | None) -> bool:
        """Whether the entry holds ``need`` tokens (None: the whole source), or the whole source anyway."""
        return self.complete or (need is not None and self.index["tokens"] >= need)

    def prefix(self, need: int | None) -> tuple[int, int]:
        """(documents, tokens with their EOS) of the shortest prefix holding ``need`` tokens: every cached document
        when the entry has fewer tokens (then it is complete) or ``need`` is None."""
        if need is None or self.index["tokens"] <= need:
            return self.index["documents"], self.index["tokens"]
        ends = np.cumsum(np.asarray(self.doc_lengths, dtype=np.int64) + 1)
        documents = int(np.searchsorted(ends, need)) + 1  # the first prefix whose end reaches need
        return documents, int(ends[documents - 1])


def cache_key(files: SourceFiles, tokenizer: TokenizerInfo, seed: int) -> str:
    """The entry of ``files`` under ``tokenizer`` in the shuffle order of ``seed``; the same for every need."""
    blob = json.dumps({"format": CACHE_FORMAT, "inputs": files.fingerprint, "tokenizer": tokenizer.fingerprint,
                       "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _open_entry(path: Path) -> CachedTokens | None:
    """The entry at ``path``, or None when it is absent or incomplete."""
    try:
        index = json.loads((path / INDEX_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if index.get("format") != CACHE_FORMAT:
        return None
    dtype = np.dtype(index["dtype"])
    try:
        if (path / TOKENS_FILE).stat().st_size != index["tokens"] * dtype.itemsize:
            return None
        if index["documents"]:
            lengths = np.load(path / LENGTHS_FILE, mmap_mode="r")
            rows = np.load(path / ROWS_FILE, mmap_mode="r")
        else:
            lengths, rows = np.zeros(0, np.uint32), np.zeros(0, np.int64)
        # np.memmap refuses an empty file; an empty source still gets an entry so that its error is raised on reruns.
        tokens = np.memmap(path / TOKENS_FILE, dtype, mode="r") if index["tokens"] else np.zeros(0, dtype)
    except (FileNotFoundError, ValueError):  # a replaced entry's files gone between reads, or a damaged .npy
        return None
    if len(lengths) != index["documents"] or len(rows) != index["documents"]:
        return None
    return CachedTokens(path, index, tokens, lengths, rows)


@contextlib.contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _documents_for(need: int | None, tokens: int, documents: int, files: SourceFiles) -> int:
    """How many more documents the next pass tokenises to reach ``need`` tokens (None: all that are left)."""
    left = len(files.doc_rows) - documents
    if need is None:
        return left
    per_document = (tokens / documents if documents else
                    files.text_bytes / max(files.rows, 1) / BYTES_PER_TOKEN_GUESS + 1)  # + 1: the EOS
    return min(left, max(1, math.ceil((need - tokens) / max(per_document, 1.0) * PASS_MARGIN)))


def _tokenise_pass(files: SourceFiles, tokenizer: TokenizerInfo, workers: int, rows: np.ndarray, out,
                   scratch: Path, chunk_bytes: int, progress: ProgressLog) -> np.ndarray:
    """Tokenise the dataset rows ``rows`` (in shuffle order) and append them to ``out`` in that order; returns
    their lengths (``uint32``, same order).

    The dataset is read in its own order (a shuffle order would mean random access into compressed row groups), so
    the tokens go to ``scratch`` first and are then gathered into shuffle order, a few million tokens at a time."""
    dtype = token_dtype(tokenizer.vocab_size)
    ascending = np.argsort(rows, kind="stable")  # read order -> position in shuffle order
    lengths: list[np.ndarray] = []
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, nothing in a batch job's log file (the ProgressLog lines reach both).
    bar = tqdm(total=len(rows), unit="doc", desc=f"tokenise {files.name}", disable=None, leave=False)
    with open(scratch, "wb") as fh, _rust_threads_off(), bar:
        for tokens, doc_lengths, _ in _ordered_map(tokenizer, files.chunks(chunk_bytes, rows[ascending]), workers):
            tokens.tofile(fh)
            lengths.append(doc_lengths)
            bar.update(len(doc_lengths))
            progress.update(len(doc_lengths))
    read_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.uint32)
    if len(read_lengths) != len(rows):
        raise RuntimeError(f"source '{files.name}': read {len(read_lengths)} documents, expected {len(rows)}")
    sizes = read_lengths.astype(np.int64) + 1
    starts = np.cumsum(sizes) - sizes
    source = np.memmap(scratch, dtype, mode="r") if sizes.sum() else np.zeros(0, dtype)
    by_rank = np.argsort(ascending, kind="stable")  # position in shuffle order -> position in read order
    ends = np.cumsum(sizes[by_rank])
    done = 0
    while done < len(by_rank):
        stop = max(done + 1, int(np.searchsorted(ends, (ends[done - 1] if done else 0) + GATHER_TOKENS)))
        picked = by_rank[done:stop]
        size = sizes[picked]
        # token t of the k-th picked document sits at starts[picked[k]] + t in scratch and at
        # (sum of the sizes before k) + t in this step's output
        index = np.repeat(starts[picked] - (np.cumsum(size) - size), size) + np.arange(size.sum())
        np.asarray(source[index]).tofile(out)
        done = stop
    del source
    scratch.unlink()
    return read_lengths[by_rank]


def _build(files: SourceFiles, tokenizer: TokenizerInfo, workers: int, staging: Path, key: str, seed: int,
           need: int | None, previous: CachedTokens | None, chunk_bytes: int) -> None:
    """Write into ``staging`` the entry holding ``need`` tokens (None: every document): ``previous``'s documents
    (copied) and as many more of the shuffle order as it takes, in one or a few passes over the dataset."""
    started = time.perf_counter()
    order = files.doc_rows[document_order(len(files.doc_rows), seed)]  # dataset rows in shuffle order
    if previous is not None and not np.array_equal(previous.doc_rows, order[:previous.index["documents"]]):
        log.warning("token cache %s does not follow this source's shuffle order; tokenising it again", previous.path)
        previous = None
    documents = previous.index["documents"] if previous else 0
    tokens = previous.index["tokens"] if previous else 0
    lengths = [np.asarray(previous.doc_lengths)] if previous else []
    first, passes = documents, 0
    progress = ProgressLog(log, f"source '{files.name}': tokenised", 0, "documents")
    with open(staging / TOKENS_FILE, "wb") as out:
        if previous is not None:
            with open(previous.path / TOKENS_FILE, "rb") as old:
                shutil.copyfileobj(old, out, 1 << 24)
        while documents < len(order) and (need is None or tokens < need):
            more = _documents_for(need, tokens, documents, files)
            progress.total += more
            batch = _tokenise_pass(files, tokenizer, workers, order[documents:documents + more], out,
                                   staging / "pass.bin", chunk_bytes, progress)
            lengths.append(batch)
            tokens += int(batch.sum(dtype=np.int64)) + len(batch)
            documents += more
            passes += 1
    progress.finish()
    doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.uint32)
    np.save(staging / LENGTHS_FILE, doc_lengths)
    np.save(staging / ROWS_FILE, order[:documents])
    seconds = time.perf_counter() - started
    new_tokens = tokens - (previous.index["tokens"] if previous else 0)
    index = {"format": CACHE_FORMAT, "key": key, "dtype": token_dtype(tokenizer.vocab_size).name,
             "eos_token_id": tokenizer.eos_token_id, "vocab_size": tokenizer.vocab_size, "documents": documents,
             "source_documents": len(order), "document_tokens": int(doc_lengths.sum(dtype=np.int64)),
             "tokens": tokens, "seed": seed, "inputs": files.fingerprint, "input_path": files.path,
             "rejected": files.rejected,
             "tokenizer": {"directory": tokenizer.directory, "fingerprint": tokenizer.fingerprint},
             # this build: the documents it added (from `extended_from`), in how many passes, how fast
             "extended_from": first, "passes": passes, "workers": workers, "seconds": round(seconds, 3),
             "tokens_per_second": round(new_tokens / max(seconds, 1e-9))}
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=1))  # written last: its presence means complete


def tokenise_source(files: SourceFiles, tokenizer: TokenizerInfo, cache_dir: Path, workers: int,
                    need: int | None = None, seed: int = 0, chunk_bytes: int = CHUNK_BYTES) -> CachedTokens:
    """The cache entry for ``files`` under ``tokenizer`` in the shuffle order of ``seed``, holding at least
    ``need`` tokens (None: every document), built or extended first if it holds fewer (``hit`` says which). Use
    ``entry.prefix(need)`` of it: the entry may hold more, for a larger need met before.

    ``chunk_bytes`` (text per work unit) changes only the scheduling: the entry's bytes are the same for any value
    and any ``workers``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(files, tokenizer, seed)
    final = cache_dir / key
    entry = _open_entry(final)
    if entry is not None and entry.covers(need):
        return entry
    with _locked(cache_dir / f"{key}.lock"):
        # another rank may have built it while this one waited for the lock
        entry = _open_entry(final)
        if entry is not None and entry.covers(need):
            return entry
        # Staging directories of this key belong to killed builds: a live builder would hold the lock.
        for stale in cache_dir.glob(f".{key}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        try:
            log.info("source '%s': tokenising %s with %d worker(s) into %s (%s)", files.name, files.path, workers,
                     final, "every document" if need is None else f"{need:,} tokens needed, "
                     f"{entry.index['tokens'] if entry else 0:,} cached")
            _build(files, tokenizer, workers, staging, key, seed, need, entry, chunk_bytes)
            staging.chmod(0o755)  # mkdtemp makes it private; a team may share the cache
            replaced = cache_dir / f".{key}.replaced-{uuid.uuid4().hex}"
            if final.exists():  # smaller, incomplete or of another format: moved aside, then removed
                os.rename(final, replaced)
            os.rename(staging, final)
            shutil.rmtree(replaced, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        entry = _open_entry(final)
        if entry is None:
            raise RuntimeError(f"cache entry {final} is incomplete right after it was written")
        entry.hit = False
    return entry
