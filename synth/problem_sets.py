"""Problem sets (versioned YAML under ``synth/problem_sets/``) and the loader that turns their files into problems.

A problem set is a downstream task's training problems, named after the task (``gsm8k``, ``qadsm``); the passages
are written about them. (An *eval task* is something else: lm-eval's YAML under ``eval/tasks``, scoring a model on
a test split; docs/design-notes.md#glossary.) A problem set names the data files (relative to the shared data dir:
``$TRAIT_SHARED_DATA`` or ``../shared/data``; globs allowed), their format (jsonl, json, csv, tsv, ditto; ``.gz``
read transparently), how a record becomes a problem (``problem``/``answer`` templates such as
``"{Body} {Question}"``; ``{x:num}`` prints 504.0 as 504), the entity keys of an entity-centric task, and small
derivations (``regex``, ``span``, ``unmask_numbers``, ``map``). Records become :class:`Problem` rows with a stable
id: the first 16 hex of sha1(task name, NUL, source key), the source key being the record's ``id_field`` or
``<file>:<row>``. Bad records are counted per reason, never dropped silently. Problem sets are *training* data: a
test split is refused (``TestSplitError``) by file name and by the benchmark registry that eval and
decontamination read (``trait.benchmarks.TEST_FILES``).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from synth.problem_files import read_records
from trait.benchmarks import TEST_FILES, FileReport, default_shared_data
from trait.config import ConfigError, field, from_dict

PROBLEM_SETS_DIR = Path(__file__).with_name("problem_sets")
DOMAIN_KINDS = ("entity_centric", "knowledge_centric")
FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "ditto")
DERIVE_OPS = ("regex", "span", "unmask_numbers", "map")
# A path component naming a test split: test.jsonl, test_harness, problems_test1k, responses-test-labels, test/.
_TEST_NAME = re.compile(r"(^|[_\-.])test([_\-.]|\d|$)", re.IGNORECASE)


class TestSplitError(ConfigError):
    """A problem set names a benchmark's test split as training data."""

    __test__ = False  # not a pytest test class despite the name


@dataclass
class Derive:
    """A field computed from others before templates are filled."""

    op: str = field(help="regex: group 1 of `pattern` in `source`; span: source[a:b] for a '(a, b)' in `spans`; "
                         "unmask_numbers: numberN in `source` replaced by the N-th of `numbers`; map: `values`[source]")
    source: str = field(help="the input field")
    pattern: str | None = field(None, help="regex op: the pattern (group 1 is kept, else the whole match)")
    spans: str | None = field(None, help="span op: the field holding '(start, end)' character offsets")
    numbers: str | None = field(None, help="unmask_numbers op: the field holding the space-separated numbers")
    values: dict | None = field(None, help="map op: source value (as text) -> result")

    def validate(self) -> None:
        if self.op not in DERIVE_OPS:
            raise ConfigError(f"derive op {self.op!r} unknown; ops are: {', '.join(DERIVE_OPS)}")
        needed = {"regex": "pattern", "span": "spans", "unmask_numbers": "numbers", "map": "values"}[self.op]
        if getattr(self, needed) is None:
            raise ConfigError(f"derive op {self.op!r} needs the key {needed!r}")


@dataclass
class Join:
    """A second file whose records are merged into the main ones by a shared key (Webis responses + labels)."""

    file: str = field(help="path relative to the shared data dir")
    key: str = field(help="the field both files share")


@dataclass
class ProblemSet:
    """One downstream task's training problems, which synthetic passages are written about."""

    name: str = field(help="unique name: the downstream task's, e.g. gsm8k")
    version: int = field(help="bump when the definition changes what problems it yields")
    domain: str = field(help="math, ads, ...")
    kind: str = field(help="entity_centric (grouped by a shared entity) or knowledge_centric (by embedding)")
    split: str = field(help="the split the files hold: train, dev, validation (test is refused)")
    files: list[str] = field(help="data files relative to the shared data dir; globs allowed")
    problem: str = field(help="template of the problem text, e.g. '{Body} {Question}'")
    instruction: str = field(help="what the task asks, for the prompt")
    answer: str | None = field(None, help="template of the reference answer; absent: the task has none")
    entity: list[str] = field(default_factory=list, help="entity-centric: templates of the entity keys")
    entity_pattern: str | None = field(None, help="regex applied to each entity key (group 1 kept)")
    format: str = field("auto", help="jsonl, json, csv, tsv, ditto; auto: by extension")
    columns: list[str] | None = field(None, help="csv/tsv without a header row: the column names")
    id_field: str | None = field(None, help="field holding a stable record id; absent: <file>:<row>")
    where: dict = field(default_factory=dict, help="keep only records whose field (as text) equals this value")
    derive: dict[str, Derive] = field(default_factory=dict, help="computed fields, by name")
    join: Join | None = field(None, help="merge a second file's records by key")
    optional: list[str] = field(default_factory=list, help="fields that may be missing or null (rendered empty)")
    description: str = field("", help="where the data comes from, for people")

    def validate(self) -> None:
        if self.kind not in DOMAIN_KINDS:
            raise ConfigError(f"problem set {self.name}: kind {self.kind!r} must be one of {', '.join(DOMAIN_KINDS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"problem set {self.name}: format {self.format!r} must be one of {', '.join(FORMATS)}")
        if self.kind == "entity_centric" and not self.entity:
            raise ConfigError(f"problem set {self.name}: an entity_centric one needs `entity` (templates of its keys)")
        if self.split.lower() == "test":
            raise TestSplitError(f"problem set {self.name}: split 'test' cannot seed passages (the model is evaluated "
                                 "on it); use the train or dev split")
        self.derive = {k: v if isinstance(v, Derive) else from_dict(Derive, v) for k, v in self.derive.items()}


@dataclass(frozen=True)
class Problem:
    """One problem of a problem set: stable id, task, text, reference answer (None: none), entity keys (normalised)."""

    id: str
    task: str
    text: str
    answer: str | None
    entities: tuple[str, ...] = ()
    source: str = ""  # <file>:<row> or the id field, for tracing a passage back to its record


@dataclass
class ProblemSetReport:
    """What loading one problem set found: per-file counts plus set-level malformed reasons, filtered and duplicates."""

    task: str
    version: int
    files: list[FileReport]
    problems: int = 0
    filtered: int = 0  # records the `where` filter left out (by design, not malformed)
    duplicates: int = 0  # records whose id repeats an earlier one (ditto pairs repeat offers)
    malformed: Counter = None

    def to_dict(self) -> dict:
        return {"task": self.task, "version": self.version, "problems": self.problems, "filtered": self.filtered,
                "duplicates": self.duplicates, "malformed": dict(sorted((self.malformed or Counter()).items())),
                "files": [f.to_dict() for f in self.files]}


def normalise_entity(text: str) -> str:
    """Lower case, runs of white space as one space, surrounding punctuation removed: 'TD  Bank.' -> 'td bank'."""
    return re.sub(r"\s+", " ", text).strip().strip(string.punctuation + " ").lower()


def problem_id(task: str, source_key: str) -> str:
    """16 hex of sha1(task NUL source key): stable across runs and machines."""
    return hashlib.sha1(f"{task}\0{source_key}".encode()).hexdigest()[:16]


def check_not_test_split(relative: str) -> None:
    """Raise TestSplitError when ``relative`` (a path under the shared data dir) is a benchmark's test data."""
    norm = Path(relative).as_posix()
    hit = next((part for part in Path(norm).parts if _TEST_NAME.search(part)), None)
    if norm in TEST_FILES or hit:
        why = f"its name says test ({hit!r})" if hit else "it is a benchmark evaluation file"
        raise TestSplitError(f"{relative} cannot seed synthetic passages: {why}, and passages built from test "
                             "problems would leak them into training; name the train or dev file instead")


def load_problem_set(path: str | Path) -> ProblemSet:
    """Read one problem set YAML; checks keys, types, kind and that no file is a test split."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    definition = from_dict(ProblemSet, data, str(path))
    for relative in definition.files + ([definition.join.file] if definition.join else []):
        check_not_test_split(relative)
    return definition


def load_problem_sets(names: list[str] | None = None, directory: str | Path | None = None) -> list[ProblemSet]:
    """The problem sets in ``directory`` (default: the shipped ``synth/problem_sets``), all or those ``names``."""
    root = Path(directory) if directory else PROBLEM_SETS_DIR
    found = {d.name: d for d in (load_problem_set(p) for p in sorted(root.glob("*.yaml")))}
    if names is None:
        return [found[n] for n in sorted(found)]
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"unknown problem set(s) {', '.join(missing)}; problem sets in {root}: "
                          f"{', '.join(sorted(found))}")
    return [found[n] for n in names]


def problem_set_files(definitions: list[ProblemSet], shared_data: str | Path | None = None) -> list[str]:
    """The paths (globs allowed) of the files ``definitions`` read, under the shared data dir: a job's inputs."""
    root = Path(shared_data or default_shared_data())
    return [str(root / f) for d in definitions for f in d.files + ([d.join.file] if d.join else [])]


def _derive(record: dict, name: str, spec: Derive) -> None:
    value = record.get(spec.source)
    if value is None:
        return
    text = str(value)
    if spec.op == "regex":
        match = re.search(spec.pattern, text, re.MULTILINE | re.DOTALL)
        record[name] = (match.group(1) if match.groups() else match.group(0)).strip() if match else None
    elif spec.op == "span":
        bounds = re.fullmatch(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", str(record.get(spec.spans, "")).strip())
        record[name] = text[int(bounds.group(1)):int(bounds.group(2))].strip() if bounds else None
    elif spec.op == "unmask_numbers":
        numbers = [_number(n) for n in str(record.get(spec.numbers, "")).split()]
        record[name] = re.sub(r"number(\d+)", lambda m: numbers[int(m.group(1))] if int(m.group(1)) < len(numbers)
                              else m.group(0), text)
    else:
        record[name] = spec.values.get(text, spec.values.get(value))


def _number(value) -> str:
    """504.0 or '504.0' -> '504'; 0.25 stays '0.25'; anything else as text."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else repr(number)


def render(template: str, record: dict, optional: list[str]) -> str:
    """Fill ``template`` from ``record``; a missing or null field raises KeyError unless it is optional."""
    out = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        value = record.get(name)
        if value is None:
            if name not in optional:
                raise KeyError(name)
            value = ""
        out.append(_number(value) if spec == "num" else str(value))
    return "".join(out).strip()


def load_problems(definition: ProblemSet, shared_data: str | Path | None = None
                  ) -> tuple[list[Problem], ProblemSetReport]:
    """Every problem of ``definition`` in file order, and the report (malformed by reason, filtered, duplicates)."""
    root = Path(shared_data or default_shared_data())
    report = ProblemSetReport(definition.name, definition.version, [], malformed=Counter())
    entity_re = re.compile(definition.entity_pattern) if definition.entity_pattern else None
    problems, seen = [], set()
    for relative, file_report, where, record in read_records(definition, root, report.files):
        for name, spec in definition.derive.items():
            _derive(record, name, spec)
        if any(str(record.get(k)) != str(v) for k, v in definition.where.items()):
            report.filtered += 1
            continue
        if definition.id_field and record.get(definition.id_field) in (None, ""):
            file_report.bad(where, "missing_id", f"id field {definition.id_field!r} missing or empty")
            continue
        source = f"{relative}:{where}"
        pid = problem_id(definition.name, str(record[definition.id_field]) if definition.id_field else source)
        if pid in seen:  # before the checks below, so a repeated bad record is counted once
            report.duplicates += 1
            continue
        seen.add(pid)
        try:
            text = render(definition.problem, record, definition.optional)
            answer = render(definition.answer, record, definition.optional) if definition.answer else None
            keys = [render(t, record, definition.optional) for t in definition.entity]
        except KeyError as exc:
            file_report.bad(where, "missing_field", f"field {exc.args[0]!r} missing or null; fields: {sorted(record)}")
            continue
        if not text:
            file_report.bad(where, "empty_problem", "the problem template rendered empty")
            continue
        if definition.answer and not answer:
            file_report.bad(where, "empty_answer", "the answer template rendered empty")
            continue
        if entity_re:
            keys = [m.group(1) if m.groups() else m.group(0) for m in map(entity_re.search, keys) if m]
        entities = tuple(dict.fromkeys(k for k in map(normalise_entity, keys) if k))
        if definition.kind == "entity_centric" and not entities:
            file_report.bad(where, "no_entity", "every entity key rendered empty")
            continue
        problems.append(Problem(pid, definition.name, text, answer, entities, source))
        file_report.problems += 1
    for file_report in report.files:
        report.malformed.update(file_report.malformed)
    report.problems = len(problems)
    return problems, report
