"""Validate generated passages: parse, shape, length bounds, answers, decontamination and near-duplicates.

``PassageValidator.check`` judges one output on its own; ``check_many`` judges a batch and then removes
passages that share a 13-gram with a benchmark test split (``trait.decontam``'s NgramIndex, the same code as the
Spark job) and near-duplicate passages (``trait.minhash.find_duplicates``, the same MinHash as the Spark dedup
job; the smallest passage id of a cluster is kept, so the choice does not depend on batch order). Every rejected
output keeps its reason (``REJECT_REASONS``); ``on_failure: flag`` keeps rejected passages that have text, with
their reason, instead of dropping them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from synth.passage import PARSE_REASONS, ParsedPassage, parse_output
from trait.answer_match import MATCHES, answer_matches
from trait.config import ConfigError, field
from trait.decontam import DecontamConfig, NgramIndex, build_index
from trait.minhash import DedupConfig, find_duplicates

REJECT_REASONS = PARSE_REASONS + (
    "truncated",  # finish_reason "length": the output was cut at max_tokens
    "paragraph_too_short",  # a problem or enlightenment paragraph has fewer than min_paragraph_words words
    "too_short", "too_long",  # the assembled passage is outside [min_words, max_words] / [min_chars, max_chars]
    "wrong_answer",  # a problem's final answer does not match its reference answer
    "contaminated",  # shares an n-gram with a benchmark test split
    "exact_duplicate", "near_duplicate",  # another kept passage (with a smaller id) is the same or nearly so
)


class ProblemLike(Protocol):
    """What validation reads of a problem (synth.problem_sets' problems have these attributes)."""

    task: str
    text: str
    answer: str | None


@dataclass
class ValidationConfig:
    min_words: int = field(40, help="fewest words (whitespace-separated) in the assembled passage")
    max_words: int = field(3000, help="most words in the assembled passage")
    min_chars: int = field(1, help="fewest characters in the assembled passage")
    max_chars: int = field(30000, help="most characters in the assembled passage")
    min_paragraph_words: int = field(5, help="fewest words in each problem paragraph and the enlightenment")
    check_answers: bool = field(True, help="compare each paragraph's final answer with the reference answer")
    answer_match: dict[str, str] = field(default_factory=dict, help="task name -> how its answer is matched: "
                                         f"{', '.join(MATCHES)} (tasks not listed: auto)")
    reject_truncated: bool = field(True, help="reject outputs that stopped at max_tokens (finish_reason length)")
    include_problem_text: bool = field(False, help="put each problem's statement before its paragraph")
    on_failure: str = field("drop", help="drop: rejected passages go to quarantine only; flag: they are also "
                            "kept in the output with their reject_reason (parse failures have no text to keep)")
    decontaminate: bool = field(True, help="reject passages sharing an n-gram with the benchmark test splits")
    decontam: DecontamConfig = field(default_factory=DecontamConfig, help="benchmarks and n for decontamination")
    deduplicate: bool = field(True, help="reject near-duplicate passages (MinHash), keeping the smallest id")
    dedup: DedupConfig = field(default_factory=DedupConfig, help="MinHash settings for near-duplicate passages")

    def validate(self) -> None:
        if self.on_failure not in ("drop", "flag"):
            raise ConfigError(f"on_failure must be 'drop' or 'flag', got {self.on_failure!r}")
        if self.min_paragraph_words < 0:
            raise ConfigError(f"min_paragraph_words must be >= 0, got {self.min_paragraph_words}")
        if not 0 <= self.min_words <= self.max_words or not 0 <= self.min_chars <= self.max_chars:
            raise ConfigError(f"length bounds need 0 <= min <= max: words [{self.min_words}, {self.max_words}], "
                              f"chars [{self.min_chars}, {self.max_chars}]")
        bad = {t: m for t, m in self.answer_match.items() if m not in MATCHES}
        if bad:
            raise ConfigError(f"answer_match {bad}: each must be one of {', '.join(MATCHES)}")
        self.dedup.validate()
        if self.decontaminate:
            self.decontam.validate()


@dataclass
class Verdict:
    """One output's judgement: reason None means accepted. ``text`` is the assembled passage (None when the
    output could not be parsed); ``answer_checks`` holds per problem True (matches), False (wrong) or None
    (unchecked)."""

    reason: str | None
    detail: str | None = None
    text: str | None = None
    passage: ParsedPassage | None = None
    answer_checks: tuple[bool | None, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reason is None


class PassageValidator:
    """Judges generated passages and counts the verdicts by reason (``summary``)."""

    def __init__(self, config: ValidationConfig | None = None, index: NgramIndex | None = None):
        self.config = config or ValidationConfig()
        self._index = index
        self.counts: Counter[str] = Counter()
        self.answer_counts: Counter[str] = Counter()

    @property
    def index(self) -> NgramIndex:
        """The benchmarks' n-gram index, built on first use (a few seconds for the registry's test splits)."""
        if self._index is None:
            self._index, _ = build_index(self.config.decontam)
        return self._index

    def keep(self, verdict: Verdict) -> bool:
        """Whether the passage goes to the output: accepted, or flagged with text when on_failure is flag."""
        return verdict.accepted or (self.config.on_failure == "flag" and verdict.text is not None)

    def check(self, raw: str, problems: list[ProblemLike], output_format: str,
              finish_reason: str | None = None) -> Verdict:
        """Judge one output on its own (no decontamination or dedup; see ``check_many``). Not counted."""
        cfg = self.config
        parsed = parse_output(raw, len(problems), output_format)
        truncated = cfg.reject_truncated and finish_reason == "length"
        if not parsed.ok:
            return Verdict("truncated" if truncated else parsed.reason, parsed.detail)
        passage = parsed.passage
        text = passage.text([p.text for p in problems] if cfg.include_problem_text else None)
        if truncated:
            return Verdict("truncated", "finish_reason length", text, passage)
        for i, paragraph in enumerate((*passage.paragraphs, passage.enlightenment), start=1):
            if len(paragraph.split()) < cfg.min_paragraph_words:
                which = "enlightenment" if i > len(problems) else f"problem {i}"
                return Verdict("paragraph_too_short", f"{which}: {len(paragraph.split())} words < "
                               f"{cfg.min_paragraph_words}", text, passage)
        words, chars = len(text.split()), len(text)
        if words < cfg.min_words or chars < cfg.min_chars:
            return Verdict("too_short", f"{words} words, {chars} chars; minimum {cfg.min_words} words, "
                           f"{cfg.min_chars} chars", text, passage)
        if words > cfg.max_words or chars > cfg.max_chars:
            return Verdict("too_long", f"{words} words, {chars} chars; maximum {cfg.max_words} words, "
                           f"{cfg.max_chars} chars", text, passage)
        checks: tuple[bool | None, ...] = ()
        if cfg.check_answers:
            checks = tuple(answer_matches(cfg.answer_match.get(p.task, "auto"), p.answer, answer, paragraph)
                           for p, answer, paragraph in zip(problems, passage.final_answers, passage.paragraphs))
            wrong = [i for i, ok in enumerate(checks, start=1) if ok is False]
            if wrong:
                return Verdict("wrong_answer", f"problem(s) {wrong}: final answer does not match the reference",
                               text, passage, checks)
        return Verdict(None, None, text, passage, checks)

    def check_many(self, ids: list[str],
                   outputs: list[tuple[str, list[ProblemLike], str, str | None]]) -> list[Verdict]:
        """Judge a batch: ``outputs[i]`` is (raw output, its problems, output format, finish reason) of passage
        ``ids[i]``. Per-output checks, then decontamination and dedup among the accepted; counts every verdict."""
        verdicts = [self.check(*output) for output in outputs]
        if self.config.decontaminate:
            self.decontaminate(verdicts)
        if self.config.deduplicate:
            self.remove_duplicates(ids, verdicts)
        for verdict in verdicts:
            self.counts[verdict.reason or "accepted"] += 1
            for ok in verdict.answer_checks:
                self.answer_counts["unchecked" if ok is None else "matched" if ok else "wrong"] += 1
        return verdicts

    def decontaminate(self, verdicts: list[Verdict]) -> None:
        """Reject accepted passages that share an n-gram with a benchmark test split (in place)."""
        todo = [v for v in verdicts if v.accepted]
        if not todo:
            return
        for verdict, match in zip(todo, self.index.match_many([v.text for v in todo])):
            if match.benchmarks:
                verdict.reason = "contaminated"
                verdict.detail = f"{', '.join(match.benchmarks)}: {match.first_ngram!r}"

    def remove_duplicates(self, ids: list[str], verdicts: list[Verdict]) -> None:
        """Reject accepted passages that duplicate another accepted one with a smaller id (in place). Call it
        once over a whole run's passages for run-wide dedup; ids make the kept one independent of order."""
        todo = [(pid, v) for pid, v in zip(ids, verdicts) if v.accepted]
        if len(todo) < 2:
            return
        dropped = find_duplicates([pid for pid, _ in todo], [v.text for _, v in todo], self.config.dedup)
        for pid, verdict in todo:
            if pid in dropped:
                verdict.reason, kept = dropped[pid]
                verdict.detail = f"duplicates {kept}"

    def summary(self) -> dict:
        """Counts for the manifest: outputs, accepted, rejected, by reason, the parse-failure rate, answer checks."""
        total = sum(self.counts.values())
        parse_failures = sum(self.counts[r] for r in PARSE_REASONS)
        return {"outputs": total, "accepted": self.counts["accepted"], "rejected": total - self.counts["accepted"],
                "by_reason": {r: self.counts[r] for r in REJECT_REASONS if self.counts[r]},
                "parse_failures": parse_failures, "parse_failure_rate": parse_failures / total if total else 0.0,
                "answer_checks": dict(sorted(self.answer_counts.items())), "on_failure": self.config.on_failure}
