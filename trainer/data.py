"""Training data: contract datasets -> cached token streams -> fixed-length packed sequences -> a weighted stream.

``prepare(config, tokenizer_dir, token_budget)`` checks every source, tokenises what the budget needs of each with
the model's fast tokenizer (``trainer.token_cache``: documents in a seeded shuffle order, parallel, memory-mapped,
reused and extended by reruns, other arms and concurrent ranks) and packs it: documents joined with EOS after each,
cut into sequences of ``seq_len`` tokens, a document longer than a sequence simply continuing into the next.
``PackedMixture.stream(seed, rank, world_size)`` is the deterministic, resumable sample stream
(``trainer.mixture``); the training loop feeds each batch as input_ids and labels.

A source's need is its share of the stage's samples: ``ceil(ceil(token_budget / seq_len) * weight share) + 2``
sequences (the deficit round-robin keeps a source within about one sequence of its quota), plus ``NEED_MARGIN``;
its packed view is the shortest prefix of its shuffle order that holds that many tokens, or all of it. A source
drawn more than once over (its quota above its sequences) is warned about before training.

Rows with a ``reject_reason`` (passages that failed validation, kept by ``on_failure: flag``) are left out unless
the source sets ``include_rejected: true``; either way the count is logged and in the stats.

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
from trait.models import cache_root

__all__ = ["DataConfig", "DataError", "MixtureStream", "PackedMixture", "PackedSource", "SourceConfig", "prepare"]

log = logging.getLogger(__name__)

LONG_DOCUMENT_POLICIES = ("split", "error")
# Tokens tokenised beyond a source's share of the budget: a little room, so a budget rounded up or a deficit
# round-robin a sequence ahead never repeats a source that could have held its share.
NEED_MARGIN = 0.05


@dataclasses.dataclass
class SourceConfig:
    """One training source: a finished contract dataset and its mixture weight."""

    name: str = field(help="name in logs, stats and the resume state, e.g. in_domain, selected, replay_general")
    path: str = field(help="a finished contract dataset directory (part-NNNNN.parquet, _SUCCESS, manifest.json)")
    weight: float = field(help="mixture weight, relative: normalised over the stage's sources (2 and 1 = 2/3, 1/3)")
    include_rejected: bool = field(False, help="also train on rows with a reject_reason (generated passages that "
                                   "failed validation, kept flagged by on_failure: flag); default: left out, counted")

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
    cache_dir: str | None = field(None, help="where tokenised sources are cached, keyed by inputs, tokenizer and "
                                  "seed (not by budget: a larger need extends the entry); shared by ranks, reruns and "
                                  "arms; empty: $TRAIT_CACHE/tokens, else ~/.cache/trait/tokens")
    num_workers: int = field(0, help="tokenisation processes; 0 = the CPUs this process may use")
    text_column: str = field("text", help="the column holding document text")
    long_documents: str = field("split", help="a document longer than seq_len tokens: 'split' cuts it across "
                                              "consecutive sequences, 'error' refuses to train")

    def token_cache(self) -> Path:
        """``cache_dir``, or the trait cache's ``tokens`` folder."""
        return Path(self.cache_dir) if self.cache_dir else cache_root() / "tokens"

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
    """One source packed into ``num_sequences`` sequences of ``seq_len`` tokens over its cached token stream: the
    first ``documents`` documents of its shuffle order (all ``source_documents`` when the budget needs them)."""

    name: str
    path: str
    weight: float  # normalised: the source's configured share of samples
    seq_len: int
    documents: int  # documents in the packed stream
    source_documents: int  # documents the source has (rows, less the rejected ones left out)
    num_tokens: int  # tokens in the stream: document tokens plus one EOS per document
    num_sequences: int  # num_tokens // seq_len
    dropped_tokens: int  # num_tokens - num_sequences * seq_len: the tail that fills no sequence
    long_documents: int  # documents longer than seq_len tokens (split across sequences)
    longest_document: dict  # {"id": ..., "tokens": ...}
    rejected: dict  # rows with a reject_reason: {"rows", "included", "excluded"}
    planned_sequences: int | None  # the source's quota of the stage's samples (None: no budget given)
    cache_path: str
    cache_hit: bool
    index: dict = dataclasses.field(repr=False)
    tokens: np.ndarray = dataclasses.field(repr=False)  # [num_tokens], uint16 or uint32, memory-mapped

    @classmethod
    def from_entry(cls, source: SourceConfig, files: SourceFiles, entry: CachedTokens, need: int | None,
                   seq_len: int, weight: float, planned_sequences: int | None) -> PackedSource:
        documents, tokens = entry.prefix(need)
        lengths = entry.doc_lengths[:documents]
        top = int(np.argmax(lengths)) if documents else -1
        longest = ({"id": files.document_id(int(entry.doc_rows[top])), "tokens": int(lengths[top])} if documents
                   else {"id": "", "tokens": -1})
        sequences = tokens // seq_len
        return cls(name=source.name, path=source.path, weight=weight, seq_len=seq_len, documents=documents,
                   source_documents=int(entry.index["source_documents"]), num_tokens=tokens,
                   num_sequences=sequences, dropped_tokens=tokens - sequences * seq_len,
                   long_documents=int(np.count_nonzero(lengths > seq_len)), longest_document=longest,
                   rejected=files.rejected, planned_sequences=planned_sequences, cache_path=str(entry.path),
                   cache_hit=entry.hit, index=entry.index, tokens=entry.tokens[:tokens])

    @property
    def planned_epochs(self) -> float | None:
        """Passes over the source's sequences that its quota takes (None: no budget given, or no sequences)."""
        if self.planned_sequences is None or not self.num_sequences:
            return None
        return self.planned_sequences / self.num_sequences

    def sequence(self, index: int) -> np.ndarray:
        """Packed sequence ``index``: int64 ``[seq_len]``, tokens ``[index * seq_len, (index + 1) * seq_len)``."""
        if not 0 <= index < self.num_sequences:
            raise IndexError(f"source '{self.name}' has {self.num_sequences} sequences, asked for {index}")
        start = index * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len], dtype=np.int64)

    def stats(self) -> dict:
        epochs = self.planned_epochs
        return {"path": self.path, "weight": self.weight, "documents": self.documents,
                "source_documents": self.source_documents, "tokens": self.num_tokens,
                "sequences": self.num_sequences, "planned_sequences": self.planned_sequences,
                "planned_epochs": None if epochs is None else round(epochs, 3), "rejected_rows": self.rejected,
                "dropped_tokens": self.dropped_tokens, "long_documents": self.long_documents,
                "longest_document": self.longest_document, "cache": self.cache_path, "cache_hit": self.cache_hit,
                "cache_documents": self.index["documents"], "tokenise_seconds": self.index.get("seconds"),
                "tokens_per_second": self.index.get("tokens_per_second")}


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
        """Identity of the sample stream's inputs: seq_len, and each source's name, weight, token cache and the
        documents of it in the stream."""
        blob = json.dumps({"seq_len": self.seq_len, "sources": [[s.name, s.weight, s.index["key"], s.documents]
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
    if packed.documents == 0 and packed.rejected["excluded"]:
        raise DataError(f"{where} has no documents to train on: all its {packed.rejected['rows']} rows are rejected "
                        "(reject_reason set, e.g. passages that failed validation) and rejected rows are left out; "
                        "set include_rejected: true on this source to train on them anyway, or regenerate it")
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


def _quota(token_budget: int | None, seq_len: int, share: float) -> tuple[int | None, int | None]:
    """(sequences the source's share of the stage's samples takes, tokens to tokenise for them with the margin);
    (None, None) without a budget: every document."""
    if token_budget is None:
        return None, None
    sequences = math.ceil(math.ceil(token_budget / seq_len) * share)
    # + 2 sequences: the deficit round-robin may run a source about one sequence ahead of its quota, and packing
    # drops the tail of the last document
    return sequences, math.ceil((sequences + 2) * seq_len * (1 + NEED_MARGIN))


def _report(packed: PackedSource, entry: CachedTokens, level: int) -> None:
    """The source's line (what was tokenised or found, its counts), and warnings about rejected rows trained on
    and about a source repeated within the stage."""
    how = ("cache hit" if packed.cache_hit else
           f"tokenised in {entry.index['seconds']:.1f} s ({entry.index['tokens_per_second']:,} tokens/s, "
           f"{entry.index['workers']} worker(s), {entry.index['passes']} pass(es))")
    rejected = packed.rejected
    log.log(level, "source '%s': %s; %s of %s documents (the budget's share), %s tokens, %s sequences of %d, %s "
            "tokens dropped, %s documents longer than a sequence (split), rejected rows %s included / %s excluded, "
            "weight %.3f [%s]", packed.name, how, f"{packed.documents:,}", f"{packed.source_documents:,}",
            f"{packed.num_tokens:,}", f"{packed.num_sequences:,}", packed.seq_len, f"{packed.dropped_tokens:,}",
            f"{packed.long_documents:,}", rejected["included"], rejected["excluded"], packed.weight,
            packed.cache_path)
    if level != logging.INFO:
        return
    if rejected["included"]:
        log.warning("source '%s': training on its %d rejected rows (reject_reason set: passages that failed "
                    "validation), as include_rejected: true asks", packed.name, rejected["included"])
    epochs = packed.planned_epochs
    if epochs is not None and epochs > 1:
        log.warning("source '%s' is repeated %.1f times in this stage: its share (%.3f) of the budget is %s "
                    "sequences and it has %s; add data, or lower its weight or the token budget", packed.name,
                    epochs, packed.weight, f"{packed.planned_sequences:,}", f"{packed.num_sequences:,}")


def prepare(config: DataConfig, tokenizer_dir: str, token_budget: int | None = None) -> PackedMixture:
    """Tokenise (or find in the cache) and pack the sources of ``config`` with the tokenizer in ``tokenizer_dir``.

    ``token_budget``: the tokens the stage draws (all ranks together); each source is tokenised only as far as its
    share needs. None: every document of every source.

    Every source is checked (exists, finished, has the text column) before any is tokenised, so a typo in the
    last source fails in seconds, not after an hour of tokenising the first.
    """
    config.validate()
    tokenizer = load_tokenizer(tokenizer_dir)
    files = [SourceFiles(s.path, config.text_column, s.name, s.include_rejected) for s in config.sources]
    total_weight = sum(s.weight for s in config.sources)
    # Every rank calls prepare; only rank 0 speaks (the others would print the same lines).
    level = logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.DEBUG
    sources: dict[str, PackedSource] = {}
    for source, source_files in zip(config.sources, files):
        share = source.weight / total_weight
        planned, need = _quota(token_budget, config.seq_len, share)
        entry = tokenise_source(source_files, tokenizer, config.token_cache(),
                                _workers(config.num_workers, source_files), need, config.seed)
        packed = PackedSource.from_entry(source, source_files, entry, need, config.seq_len, share, planned)
        _check(packed, config)
        _report(packed, entry, level)
        sources[source.name] = packed
    return PackedMixture(config, sources, tokenizer.fingerprint, tokenizer.eos_token_id)
