"""The one registry of benchmark test files (eval, decontamination and the seed guard read it), the shared data
directory, and a reader for the test files and for any eval file a user names.

Imports only the standard library: the Spark job and the synthetic-passage generator (which never imports
pyspark) decontaminate against the same problems (``trait.decontam``).

Which text a problem contributes. A problem gives one or more *segments*; n-grams are taken inside a segment,
never across two. A segment is one field or several joined with a space (``body+question``: SVAMP and ASDiv
split one problem statement over two fields). We take the problem statement and, where the file has one, the
worked solution or rationale (a web page that copies a benchmark usually copies both); answer letters, bare
numbers, equations and formulas are left out (too short for a 13-gram, or code rather than prose). GSM8K's
``<<48/2=24>>`` calculator annotations are stripped before hashing, since copies on the web rarely carry them.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from trait import UserError


class BenchmarkError(UserError, ValueError):
    """A benchmark name, eval file or field spec is wrong; the message says which and what to do."""


@dataclass(frozen=True)
class BenchmarkFile:
    """One test file: its path (relative to the shared data dir, or absolute), format and text segments; for a
    registry file, the name eval's task YAMLs give it (``dataset_kwargs.benchmark``, ``eval.math_tasks``)."""

    path: str
    segments: tuple[str, ...]
    format: str = "auto"  # "jsonl"; "json": a list of records or a mapping id -> record; "auto": by extension
    strip: str | None = None  # regex removed from every field before hashing
    eval_name: str | None = None

    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        return "json" if self.path.endswith(".json") else "jsonl"


_GSM8K_CALC = r"<<[^>]*>>"

# The one registry of benchmark test files: eval scores a model on each (by its eval_name), decontamination removes
# their n-grams from the corpora (by the key: every key by default), and no problem set may read them
# (synth.problem_sets). The nine math benchmarks of the TRAIT paper's evaluation, and AGIEval's larger SAT-math set,
# as the files in ../shared/data/benchmarks hold them (see each folder's SOURCE.md). MATH500 is a subset of MATH's
# 5,000 test problems; both files are read.
BENCHMARKS: dict[str, tuple[BenchmarkFile, ...]] = {
    "gsm8k": (BenchmarkFile("benchmarks/gsm8k/test.jsonl", ("question", "answer"), strip=_GSM8K_CALC,
                            eval_name="gsm8k"),),
    "math": (BenchmarkFile("benchmarks/math/test_5000_harness.jsonl", ("problem", "solution"), eval_name="math"),
             BenchmarkFile("benchmarks/math/test_math500_harness.jsonl", ("problem", "solution"),
                           eval_name="math500")),
    "svamp": (BenchmarkFile("benchmarks/svamp/test_harness.jsonl", ("Body+Question",), eval_name="svamp"),),
    "asdiv": (BenchmarkFile("benchmarks/asdiv/test_harness.jsonl", ("body+question",), eval_name="asdiv"),),
    "mawps": (BenchmarkFile("benchmarks/mawps/test_harness.jsonl", ("input",), eval_name="mawps"),),
    "tabmwp": (BenchmarkFile("benchmarks/tabmwp/problems_test1k.json", ("question", "solution"),
                             eval_name="tabmwp"),),
    "mathqa": (BenchmarkFile("benchmarks/mathqa/test_harness.jsonl", ("problem", "rationale"), eval_name="mathqa"),),
    "mmlu": (BenchmarkFile("benchmarks/mmlu/mmlu_stem_test_harness.jsonl", ("question", "choices"),
                           eval_name="mmlu_stem"),),
    "sat_math": (BenchmarkFile("benchmarks/sat_math/test_harness.jsonl", ("question", "options"),
                               eval_name="sat_math"),),
    "sat_math_agieval": (BenchmarkFile("benchmarks/sat_math/agieval_sat-math.jsonl", ("passage+question", "options"),
                                       eval_name="sat_math_agieval"),),
}
# The registry's files by the name eval gives them.
EVAL_FILES: dict[str, BenchmarkFile] = {f.eval_name: f for files in BENCHMARKS.values() for f in files}
# The same test problems in files that no job reads (see each folder's SOURCE.md): SVAMP's challenge set (also as
# the "dev" CSV), ASDiv's full set, the MAWPS harness subsets. A seed may not name them either.
OTHER_TEST_COPIES = ("benchmarks/svamp/SVAMP.json", "benchmarks/svamp/mawps-asdiv-a_svamp_dev.csv",
                     "benchmarks/asdiv/ASDiv.xml", "benchmarks/mawps/addsub_harness.jsonl",
                     "benchmarks/mawps/multiarith_harness.jsonl", "benchmarks/mawps/singleeq_harness.jsonl",
                     "benchmarks/mawps/singleop_harness.jsonl")
# Every file under the shared data dir that holds benchmark test problems.
TEST_FILES = frozenset(f.path for f in EVAL_FILES.values()) | frozenset(OTHER_TEST_COPIES)


MAX_MALFORMED_EXAMPLES = 5


def default_shared_data() -> str:
    """``$TRAIT_SHARED_DATA``, else ``../shared/data`` relative to the working directory when it exists, else the
    ``shared/data`` beside the repository (so a command run from a subdirectory, or lm-eval's task loader, finds
    it too)."""
    if "TRAIT_SHARED_DATA" in os.environ:
        return os.environ["TRAIT_SHARED_DATA"]
    if Path("../shared/data").is_dir():
        return "../shared/data"
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(beside_repo) if beside_repo.is_dir() else "../shared/data"


def shared_data_file(relative: str | Path, shared_data: str | Path | None = None) -> Path:
    """``relative`` under the shared data dir (``shared_data``, else ``default_shared_data()``); a missing file is a
    BenchmarkError naming the path and $TRAIT_SHARED_DATA."""
    root = Path(shared_data or default_shared_data())
    path = root / relative
    if not path.is_file():
        raise BenchmarkError(f"{path} not found; set TRAIT_SHARED_DATA to the shared data directory (now {root})")
    return path


@dataclass
class FileReport:
    """What reading one file found: records seen, problems kept, malformed records by reason (with examples)."""

    path: str
    records: int = 0
    problems: int = 0
    blank_lines: int = 0
    malformed: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def bad(self, where: str, reason: str, detail: str) -> None:
        self.malformed[reason] += 1
        if len(self.examples) < MAX_MALFORMED_EXAMPLES:
            self.examples.append(f"{where}: {reason}: {detail}"[:300])

    def to_dict(self) -> dict:
        return {"path": self.path, "records": self.records, "problems": self.problems,
                "blank_lines": self.blank_lines, "malformed": dict(sorted(self.malformed.items())),
                "malformed_total": sum(self.malformed.values()), "malformed_examples": self.examples}


def _field_text(value) -> str | None:
    """A field's text: a string, or a list of strings joined by spaces (MMLU's choices); None for other types."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    return None


def _segments(record, spec: BenchmarkFile, strip: re.Pattern | None) -> tuple[list[str] | None, str, str]:
    """The record's segment texts, or (None, reason, detail) when it cannot give them."""
    if not isinstance(record, dict):
        return None, "not_an_object", f"top-level JSON {type(record).__name__}"
    texts = []
    for segment in spec.segments:
        parts = []
        for name in segment.split("+"):
            if record.get(name) is None:
                return None, "missing_field", f"field {name!r} is missing or null; fields are {sorted(record)}"
            text = _field_text(record[name])
            if text is None:
                return None, "bad_field_type", f"field {name!r} is {type(record[name]).__name__}, not text"
            parts.append(strip.sub(" ", text) if strip else text)
        texts.append(" ".join(parts))
    return texts, "", ""


def read_problems(spec: BenchmarkFile, shared_data: str | Path = "") -> tuple[list[list[str]], FileReport]:
    """Every problem of ``spec`` as its list of segment texts, and the report of what was read.

    Malformed records (invalid JSON, not an object, a missing/null field, a field that is not text) are counted
    by reason in the report and left out; blank lines are counted apart. A missing file is a BenchmarkError.
    """
    path = Path(shared_data, spec.path) if shared_data else Path(spec.path)
    if not path.is_file():
        raise BenchmarkError(f"benchmark/eval file {path} not found; check the path (and the shared data dir, "
                             "--data or $TRAIT_SHARED_DATA)")
    strip = re.compile(spec.strip) if spec.strip else None
    report = FileReport(str(path))
    problems: list[list[str]] = []
    if spec.resolved_format() == "jsonl":
        with open(path, encoding="utf-8", errors="replace") as fh:
            records = []
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    report.blank_lines += 1
                    continue
                try:
                    records.append((f"line {number}", json.loads(line)))
                except ValueError as exc:
                    report.records += 1
                    report.bad(f"line {number}", "invalid_json", str(exc))
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BenchmarkError(f"{path} is not valid JSON ({exc}); a .json eval file must be a list of records "
                                 "or a mapping id -> record (use .jsonl for one record per line)") from exc
        if isinstance(data, dict):
            records = [(f"key {k!r}", v) for k, v in data.items()]
        elif isinstance(data, list):
            records = [(f"item {i}", v) for i, v in enumerate(data)]
        else:
            raise BenchmarkError(f"{path}: top-level JSON is {type(data).__name__}; expected a list or a mapping")
    for where, record in records:
        report.records += 1
        texts, reason, detail = _segments(record, spec, strip)
        if texts is None:
            report.bad(where, reason, detail)
        else:
            problems.append(texts)
    report.problems = len(problems)
    return problems, report
