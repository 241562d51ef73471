"""Training data: contract datasets -> cached token streams -> fixed-length packed sequences -> a weighted stream.

``prepare(config, tokenizer_dir)`` checks every source, tokenises each once with the model's fast tokenizer
(``trainer.token_cache``: parallel, memory-mapped, reused by reruns and by concurrent ranks) and packs it:
documents joined with EOS after each, cut into sequences of ``seq_len`` tokens, a document longer than a
sequence simply continuing into the next. ``PackedMixture.stream(seed, rank, world_size)`` is the deterministic,
resumable sample stream (``trainer.mixture``); the training loop feeds each batch as input_ids and labels.

The last partial sequence of a source is dropped, not padded: a padded row would need an attention mask and
-100 labels for the pad, and the loop trains on plain ``input_ids = labels``. It loses under ``seq_len`` tokens
per source (e.g. <= 2,047 of a source's millions) and the count is reported as ``dropped_tokens``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from trainer.mixture import MixtureStream
from trainer.token_cache import CHUNK_BYTES, CachedTokens, DataError, SourceFiles, load_tokenizer, tokenise_source
from trait.config import ConfigError, field

__all__ = ["DataConfig", "DataError", "MixtureStream", "PackedMixture", "PackedSource", "SourceConfig", "prepare"]

log = logging.getLogger(__name__)

LONG_DOCUMENT_POLICIES = ("split", "error")


@dataclasses.dataclass
class SourceConfig:
    """One training source: a finished contract dataset and its mixture weight."""

    name: str = field(help="name in logs, stats and the resume state, e.g. in_domain, selected, replay_general")
    path: str = field(help="a finished contract dataset directory (part-NNNNN.parquet, _SUCCESS, manifest.json)")
    weight: float = field(help="mixture weight, relative: normalised over the stage's sources (2 and 1 = 2/3, 1/3)")

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("data.sources: a source has an empty name; give each source a name")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"data.sources['{self.name}'].weight is {self.weight!r}; weights must be positive "
                              "numbers (relative shares), remove the source instead of giving it weight 0")


@dataclasses.dataclass
class DataConfig:
    """What a training stage reads and how it is cut into sequences."""

    sources: list[SourceConfig] = field(help="the stage's sources with their mixture weights")
    seq_len: int = field(2048, help="tokens per training sequence (packed; EOS between documents)")
    seed: int = field(0, help="seed of the within-source shuffles (the default for stream())")
    cache_dir: str = field(".cache/trait/tokens", help="where tokenised sources are cached, keyed by inputs and "
                                                       "tokenizer; shared by ranks and reruns")
    num_workers: int = field(0, help="tokenisation processes; 0 = the CPUs this process may use")
    text_column: str = field("text", help="the column holding document text")
    long_documents: str = field("split", help="a document longer than seq_len tokens: 'split' cuts it across "
                                              "consecutive sequences, 'error' refuses to train")

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty; a stage needs at least one source")
        for source in self.sources:
            source.validate()
        names = [s.name for s in self.sources]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ConfigError(f"data.sources: name(s) {doubled} appear twice; names key the stats and resume state")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len is {self.seq_len}; a causal LM needs at least 2 tokens a sequence")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers is {self.num_workers}; use 0 (all CPUs) or a positive count")
        if self.long_documents not in LONG_DOCUMENT_POLICIES:
            raise ConfigError(f"data.long_documents is {self.long_documents!r}; use one of {LONG_DOCUMENT_POLICIES}")


@dataclasses.dataclass
class PackedSource:
    """One source packed into ``num_sequences`` sequences of ``seq_len`` tokens over its cached token stream."""

    name: str
    path: str
    weight: float  # normalised: the source's configured share of samples
    seq_len: int
    documents: int
    num_tokens: int  # tokens in the stream: document tokens plus one EOS per document
    num_sequences: int  # num_tokens // seq_len
    dropped_tokens: int  # num_tokens - num_sequences * seq_len: the tail that fills no sequence
    long_documents: int  # documents longer than seq_len tokens (split across sequences)
    longest_document: dict  # {"id": ..., "tokens": ...}
    cache_path: str
    cache_hit: bool
    index: dict = dataclasses.field(repr=False)
    tokens: np.ndarray = dataclasses.field(repr=False)  # [num_tokens], uint16 or uint32, memory-mapped

    @classmethod
    def from_entry(cls, source: SourceConfig, entry: CachedTokens, seq_len: int, weight: float) -> PackedSource:
        tokens = int(entry.index["tokens"])
        sequences = tokens // seq_len
        return cls(name=source.name, path=source.path, weight=weight, seq_len=seq_len,
                   documents=int(entry.index["documents"]), num_tokens=tokens, num_sequences=sequences,
                   dropped_tokens=tokens - sequences * seq_len,
                   long_documents=int(np.count_nonzero(entry.doc_lengths > seq_len)),
                   longest_document=entry.index["longest_document"], cache_path=str(entry.path),
                   cache_hit=entry.hit, index=entry.index, tokens=entry.tokens)

    def sequence(self, index: int) -> np.ndarray:
        """Packed sequence ``index``: int64 ``[seq_len]``, tokens ``[index * seq_len, (index + 1) * seq_len)``."""
        if not 0 <= index < self.num_sequences:
            raise IndexError(f"source '{self.name}' has {self.num_sequences} sequences, asked for {index}")
        start = index * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len], dtype=np.int64)

    def stats(self) -> dict:
        return {"path": self.path, "weight": self.weight, "documents": self.documents, "tokens": self.num_tokens,
                "sequences": self.num_sequences, "dropped_tokens": self.dropped_tokens,
                "long_documents": self.long_documents, "longest_document": self.longest_document,
                "cache": self.cache_path, "cache_hit": self.cache_hit,
                "tokenise_seconds": self.index.get("seconds"), "tokens_per_second": self.index.get("tokens_per_second")}


class PackedMixture:
    """The packed sources of one stage; ``stream()`` gives each rank its deterministic sample stream."""

    def __init__(self, config: DataConfig, sources: dict[str, PackedSource], tokenizer_fingerprint: str,
                 eos_token_id: int):
        self.config = config
        self.seq_len = config.seq_len
        self.sources = sources
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.eos_token_id = eos_token_id

    def fingerprint(self) -> str:
        """Identity of the sample stream's inputs: seq_len, and each source's name, weight and token cache."""
        blob = json.dumps({"seq_len": self.seq_len, "sources": [[s.name, s.weight, s.index["key"]]
                                                                for s in self.sources.values()]})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def stream(self, seed: int | None = None, rank: int = 0, world_size: int = 1) -> MixtureStream:
        """Rank ``rank`` of ``world_size``'s stream; ``seed`` defaults to ``config.seed``."""
        return MixtureStream(self, self.config.seed if seed is None else seed, rank, world_size)

    def stats(self) -> dict:
        """Per-source counts for logs and the run manifest."""
        return {"seq_len": self.seq_len, "tokenizer": self.tokenizer_fingerprint,
                "sources": {name: s.stats() for name, s in self.sources.items()}}


def _workers(requested: int, files: SourceFiles) -> int:
    """``requested`` (0 = usable CPUs), but no more than the source has work units: Parquet bytes only undercount
    text (it is compressed), so ceil(bytes / CHUNK_BYTES) is a floor on the chunks and a spawn is never idle."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(requested or available, math.ceil(files.bytes / CHUNK_BYTES)))


def _check(packed: PackedSource, config: DataConfig) -> None:
    where = f"source '{packed.name}' ({packed.path})"
    if packed.documents == 0:
        raise DataError(f"{where} has no documents; check the stage that wrote it, or remove the source")
    if packed.num_tokens == packed.documents:  # only the EOS separators: every document tokenised to nothing
        raise DataError(f"{where}: its {packed.documents} documents have zero tokens; check its "
                        f"'{config.text_column}' column")
    if packed.num_sequences == 0:
        raise DataError(f"{where} has {packed.num_tokens} tokens, fewer than one sequence of seq_len "
                        f"{config.seq_len}; lower data.seq_len or remove the source")
    if config.long_documents == "error" and packed.long_documents:
        longest = packed.longest_document
        raise DataError(f"{where}: document {longest['id']} has {longest['tokens']} tokens, longer than seq_len "
                        f"{config.seq_len} ({packed.long_documents} documents are); set data.long_documents: split "
                        "to cut them across sequences, or raise data.seq_len")


def prepare(config: DataConfig, tokenizer_dir: str) -> PackedMixture:
    """Tokenise (or find in the cache) and pack every source of ``config`` with the tokenizer in ``tokenizer_dir``.

    Every source is checked (exists, finished, has the text column) before any is tokenised, so a typo in the
    last source fails in seconds, not after an hour of tokenising the first.
    """
    config.validate()
    tokenizer = load_tokenizer(tokenizer_dir)
    files = [SourceFiles(s.path, config.text_column, s.name) for s in config.sources]
    total_weight = sum(s.weight for s in config.sources)
    # Every rank calls prepare; only rank 0 speaks (the others would print the same lines).
    level = logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.DEBUG
    sources: dict[str, PackedSource] = {}
    for source, source_files in zip(config.sources, files):
        entry = tokenise_source(source_files, tokenizer, Path(config.cache_dir),
                                _workers(config.num_workers, source_files))
        packed = PackedSource.from_entry(source, entry, config.seq_len, source.weight / total_weight)
        _check(packed, config)
        how = ("cache hit" if packed.cache_hit else
               f"tokenised in {entry.index['seconds']:.1f} s ({entry.index['tokens_per_second']:,} tokens/s, "
               f"{entry.index['workers']} worker(s))")
        log.log(level, "source '%s': %s; %s documents, %s tokens, %s sequences of %d, %s tokens dropped, "
                "%s documents longer than a sequence (split), weight %.3f [%s]", packed.name, how,
                f"{packed.documents:,}", f"{packed.num_tokens:,}", f"{packed.num_sequences:,}", config.seq_len,
                f"{packed.dropped_tokens:,}", f"{packed.long_documents:,}", packed.weight, packed.cache_path)
        sources[source.name] = packed
    return PackedMixture(config, sources, tokenizer.fingerprint, tokenizer.eos_token_id)
