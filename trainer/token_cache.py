"""Tokenise a finished contract dataset once into a memory-mapped token file, cached by what it was made from.

One cache entry per (dataset inputs, tokenizer): ``<cache_dir>/<key>/`` holds

- ``tokens.bin``: every document's tokens followed by EOS, documents in dataset order (parts sorted by name, rows in
  file order), a flat array of ``uint16`` (vocabulary < 65536) or ``uint32``, read back with ``np.memmap``;
- ``doc_lengths.npy``: ``uint32 [documents]``, tokens per document without its EOS;
- ``index.json``: counts, dtype, EOS id, fingerprints, the longest document, and how long tokenising took.

The key leaves out ``seq_len`` on purpose: packing is a zero-copy view of this stream (sequence i is tokens
``[i*seq_len, (i+1)*seq_len)``), so one entry serves every sequence length and the replay source tokenised for
stage 1 is reused by stage 2. An entry is built in a ``.<key>.*`` staging directory and renamed into place under an
``fcntl`` lock: concurrent ranks wait for the first builder and then read its entry, and a killed build leaves only
a staging directory that the next builder removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trait import UserError
from trait.contract import MANIFEST_NAME, finished_dataset

log = logging.getLogger(__name__)

# Bump when the bytes of an entry would change for the same inputs and tokenizer (encoding options, layout).
CACHE_FORMAT = 1
TOKENS_FILE = "tokens.bin"
LENGTHS_FILE = "doc_lengths.npy"
INDEX_FILE = "index.json"
# Text per work unit. Wikipedia articles average ~14 KB, so ~70 documents: big enough that the pickling round trip
# (~1 ms) is noise beside tokenising it (~0.5 s at ~2 MB/s per core), small enough that 20 MB makes 20 units to
# balance over the workers.
CHUNK_BYTES = 1 << 20


class DataError(UserError, ValueError):
    """Training data cannot be used as given (missing, unfinished, empty, too long); the message says what to do."""


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

    def __call__(self, chunk: tuple[list[str], list[str]]) -> tuple[np.ndarray, np.ndarray, str, int]:
        """(ids, texts) -> (tokens ``[sum(len)+docs]``, lengths ``uint32 [docs]``, longest id, its length)."""
        ids, texts = chunk
        # encode_batch_fast skips the character offsets that encode_batch computes and we never read.
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        flat: list[int] = []
        lengths = np.empty(len(texts), np.uint32)
        for i, encoding in enumerate(encodings):
            doc = encoding.ids
            flat.extend(doc)
            flat.append(self.eos)
            lengths[i] = len(doc)
        longest = int(np.argmax(lengths)) if len(texts) else 0
        return (np.array(flat, self.dtype), lengths, ids[longest] if texts else "",
                int(lengths[longest]) if texts else -1)


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


@dataclass
class CachedTokens:
    """One cache entry, memory-mapped: ``tokens`` is ``[index['tokens']]`` of ``index['dtype']``."""

    path: Path
    index: dict
    tokens: np.ndarray = field(repr=False)
    doc_lengths: np.ndarray = field(repr=False)
    hit: bool = True


class SourceFiles:
    """The part files of one finished dataset and their fingerprint (names, sizes, mtimes, manifest digest)."""

    def __init__(self, path: str, text_column: str, name: str):
        import pyarrow.fs as pafs

        self.path, self.text_column, self.name = path, text_column, name
        fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            raise DataError(f"source '{name}': input {path} does not exist; run the stage that writes it or fix "
                            "the path in data.sources")
        try:
            dataset = finished_dataset(path, (text_column,))
        except UserError as exc:
            raise DataError(f"source '{name}': {exc}") from exc
        self.fs, self.has_id = fs, "id" in dataset.schema.names
        self.files = sorted(dataset.files)
        infos = fs.get_file_info(self.files)
        self.bytes = sum(i.size for i in infos)  # Parquet bytes, compressed
        manifest = f"{root.rstrip('/')}/{MANIFEST_NAME}"
        digest = ""
        if fs.get_file_info(manifest).type != pafs.FileType.NotFound:
            with fs.open_input_stream(manifest) as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        # The directory's own path is left out so a moved dataset keeps its cache; mtimes are in so a dataset
        # rewritten in place (same names, maybe same sizes) does not.
        self.fingerprint = {"files": [[Path(i.path).name, i.size, i.mtime_ns] for i in infos],
                            "manifest_sha256": digest, "text_column": text_column}

    def rows(self) -> int:
        """Documents in the dataset, from the Parquet footers (no data read)."""
        import pyarrow.parquet as pq

        total = 0
        for file in self.files:
            with self.fs.open_input_file(file) as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[list[str], list[str]]]:
        """(ids, texts) of about ``chunk_bytes`` of text each, in dataset order."""
        import pyarrow.parquet as pq

        columns = [self.text_column] + (["id"] if self.has_id and self.text_column != "id" else [])
        ids: list[str] = []
        texts: list[str] = []
        size = 0
        for file in self.files:
            with self.fs.open_input_file(file) as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=1024, columns=columns):
                    text = batch.column(self.text_column)
                    if text.null_count:
                        raise DataError(f"source '{self.name}': {file} has {text.null_count} null values in "
                                        f"'{self.text_column}'; the contract forbids them, rerun the stage that "
                                        "wrote it")
                    start = len(texts)
                    texts.extend(text.to_pylist())
                    ids.extend(batch.column("id").to_pylist() if self.has_id
                               else [f"{Path(file).name}#{start + i}" for i in range(batch.num_rows)])
                    size += text.nbytes
                    if size >= chunk_bytes:
                        yield ids, texts
                        ids, texts, size = [], [], 0
        if texts:
            yield ids, texts


def cache_key(files: SourceFiles, tokenizer: TokenizerInfo) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "inputs": files.fingerprint, "tokenizer": tokenizer.fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _open_entry(path: Path) -> CachedTokens | None:
    """The entry at ``path``, or None when it is absent or incomplete."""
    try:
        index = json.loads((path / INDEX_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if index.get("format") != CACHE_FORMAT:
        return None
    dtype = np.dtype(index["dtype"])
    tokens_file = path / TOKENS_FILE
    try:
        if tokens_file.stat().st_size != index["tokens"] * dtype.itemsize or not (path / LENGTHS_FILE).exists():
            return None
    except FileNotFoundError:
        return None
    # np.memmap refuses an empty file; an empty source still gets an entry so that its error is raised on reruns.
    tokens = np.memmap(tokens_file, dtype, mode="r") if index["tokens"] else np.zeros(0, dtype)
    lengths = np.load(path / LENGTHS_FILE, mmap_mode="r") if index["documents"] else np.zeros(0, np.uint32)
    return CachedTokens(path, index, tokens, lengths)


@contextlib.contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(files: SourceFiles, tokenizer: TokenizerInfo, workers: int, staging: Path, key: str,
           chunk_bytes: int) -> None:
    started = time.perf_counter()
    dtype = token_dtype(tokenizer.vocab_size)
    lengths: list[np.ndarray] = []
    total, longest_id, longest = 0, "", -1
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, nothing in a batch job's log file.
    progress = tqdm(total=files.rows(), unit="doc", desc=f"tokenise {files.name}", disable=None, leave=False)
    with open(staging / TOKENS_FILE, "wb") as out, _rust_threads_off(), progress:
        for tokens, doc_lengths, top_id, top in _ordered_map(tokenizer, files.chunks(chunk_bytes), workers):
            progress.update(len(doc_lengths))
            tokens.tofile(out)
            total += len(tokens)
            lengths.append(doc_lengths)
            if top > longest:
                longest_id, longest = top_id, top
    doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.uint32)
    np.save(staging / LENGTHS_FILE, doc_lengths)
    seconds = time.perf_counter() - started
    index = {"format": CACHE_FORMAT, "key": key, "dtype": dtype.name, "eos_token_id": tokenizer.eos_token_id,
             "vocab_size": tokenizer.vocab_size, "documents": len(doc_lengths),
             "document_tokens": int(doc_lengths.sum(dtype=np.int64)), "tokens": total,
             "longest_document": {"id": longest_id, "tokens": longest}, "inputs": files.fingerprint,
             "input_path": files.path, "tokenizer": {"directory": tokenizer.directory,
                                                     "fingerprint": tokenizer.fingerprint},
             "workers": workers, "seconds": round(seconds, 3), "tokens_per_second": round(total / max(seconds, 1e-9))}
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=1))  # written last: its presence means complete


def tokenise_source(files: SourceFiles, tokenizer: TokenizerInfo, cache_dir: Path, workers: int,
                    chunk_bytes: int = CHUNK_BYTES) -> CachedTokens:
    """The cache entry for ``files`` under ``tokenizer``, built first if absent (``hit`` says which).

    ``chunk_bytes`` (text per work unit) changes only the scheduling: the entry's bytes are the same for any value
    and any ``workers``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(files, tokenizer)
    final = cache_dir / key
    entry = _open_entry(final)
    if entry is None:
        with _locked(cache_dir / f"{key}.lock"):
            entry = _open_entry(final)  # another rank may have built it while this one waited for the lock
            if entry is None:
                # Staging directories of this key belong to killed builds: a live builder would hold the lock.
                for stale in cache_dir.glob(f".{key}.*"):
                    shutil.rmtree(stale, ignore_errors=True)
                if final.exists():  # incomplete or of another format: rebuild it
                    shutil.rmtree(final)
                staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
                try:
                    log.info("source '%s': tokenising %s with %d worker(s) into %s", files.name, files.path,
                             workers, final)
                    _build(files, tokenizer, workers, staging, key, chunk_bytes)
                    staging.chmod(0o755)  # mkdtemp makes it private; a team may share the cache
                    os.rename(staging, final)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                entry = _open_entry(final)
                if entry is None:
                    raise RuntimeError(f"cache entry {final} is incomplete right after it was written")
                entry.hit = False
    return entry
