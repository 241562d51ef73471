"""Readers for the data files of problem sets: one record (a dict) at a time, bad records counted per reason.

Formats: ``jsonl``; ``json`` (a list of records, or a mapping id -> record whose key becomes ``_key``); ``csv``
and ``tsv`` (a header row, or the definition's ``columns`` for files without one; TSV fields are never quoted);
``ditto`` (Ditto's entity-matching pairs: ``COL name VAL ... COL description VAL ...`` TAB the second offer TAB
a label; each offer becomes one record whose ``_key`` is its raw text, so an offer seen in many pairs has one id).
A ``.gz`` suffix is decompressed on the fly. Every record also gets ``_file`` (the file name without its
extensions, e.g. ``abstract_algebra_dev``: MMLU's subject) and ``_row`` (1-based line or item number).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from trait.benchmarks import FileReport
from trait.config import ConfigError

_DITTO_ATTR = re.compile(r"COL (\S+) VAL ?")
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # Abt-Buy descriptions and Webis responses exceed the 128 KiB default


def _open(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def resolve_format(declared: str, path: Path) -> str:
    """The declared format, or the one the file's extensions name (``x.tsv.gz`` -> tsv)."""
    if declared != "auto":
        return declared
    suffixes = [s for s in path.suffixes if s not in (".gz", ".medium")]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext in ("jsonl", "json", "csv", "tsv"):
        return ext
    raise ConfigError(f"{path}: cannot tell the format from the extension {ext!r}; set `format:` "
                      "(jsonl, json, csv, tsv, ditto)")


def _ditto_offer(text: str) -> dict:
    marks = list(_DITTO_ATTR.finditer(text))
    return {m.group(1): text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
            for i, m in enumerate(marks)}


def _records(path: Path, fmt: str, columns: list[str] | None, report: FileReport) -> Iterator[tuple[str, dict]]:
    """(where, record) for every record of one file; malformed ones go to ``report`` instead."""
    with _open(path) as fh:
        if fmt == "json":
            try:
                data = json.load(fh)
            except ValueError as exc:
                raise ConfigError(f"{path} is not valid JSON ({exc}); use format jsonl for one record per line") \
                    from exc
            items = ([(f"{k}", {**v, "_key": k}) if isinstance(v, dict) else (k, v) for k, v in data.items()]
                     if isinstance(data, dict) else [(str(i + 1), v) for i, v in enumerate(data)])
            for where, record in items:
                report.records += 1
                if isinstance(record, dict):
                    yield where, record
                else:
                    report.bad(where, "not_an_object", f"item is {type(record).__name__}")
            return
        if fmt in ("csv", "tsv"):
            reader = (csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(fh))
            names = columns or next(reader, None) or []
            for number, row in enumerate(reader, 1 if columns else 2):
                if not any(cell.strip() for cell in row):
                    report.blank_lines += 1
                    continue
                report.records += 1
                if len(row) != len(names):
                    report.bad(f"line {number}", "wrong_field_count", f"{len(row)} fields, expected {len(names)}")
                    continue
                yield str(number), dict(zip(names, row))
            return
        for number, line in enumerate(fh, 1):
            if not line.strip():
                report.blank_lines += 1
                continue
            if fmt == "ditto":
                parts = line.rstrip("\r\n").split("\t")
                report.records += 1
                if len(parts) != 3:
                    report.bad(f"line {number}", "wrong_field_count", f"{len(parts)} tab fields, expected 3")
                    continue
                for side, offer in enumerate(parts[:2]):
                    yield f"{number}.{side}", {**_ditto_offer(offer), "_key": offer.strip(), "label": parts[2]}
                continue
            report.records += 1
            try:
                record = json.loads(line)
            except ValueError as exc:
                report.bad(f"line {number}", "invalid_json", str(exc))
                continue
            if isinstance(record, dict):
                yield str(number), record
            else:
                report.bad(f"line {number}", "not_an_object", f"top-level JSON {type(record).__name__}")


def _expand(root: Path, pattern: str) -> list[Path]:
    paths = sorted(root.glob(pattern)) if any(c in pattern for c in "*?[") else [root / pattern]
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise ConfigError(f"task data {pattern!r} not found under {root} ({missing[0] if missing else 'no match'}); "
                          "check the shared data dir (--data or $TRAIT_SHARED_DATA)")
    return paths


def read_records(definition, root: Path, reports: list[FileReport]) -> Iterator[tuple[str, FileReport, str, dict]]:
    """(relative path, its report, where, record) for every record of ``definition``'s files, joined if asked.

    A FileReport is appended to ``reports`` per file. With ``join``, a main record whose key has no partner in the
    joined file is counted as ``no_join_partner``; the partner's fields do not overwrite the main record's.
    """
    from synth.problem_sets import check_not_test_split

    partners: dict[str, dict] = {}
    if definition.join:
        check_not_test_split(definition.join.file)
        join_path = _expand(root, definition.join.file)[0]
        join_report = FileReport(str(join_path))
        for _, record in _records(join_path, resolve_format("auto", join_path), None, join_report):
            partners[str(record.get(definition.join.key))] = record
        reports.append(join_report)
    for pattern in definition.files:
        for path in _expand(root, pattern):
            relative = path.relative_to(root).as_posix()
            check_not_test_split(relative)  # globs are checked per match: a pattern may reach a test file
            report = FileReport(str(path))
            reports.append(report)
            stem = path.name.split(".")[0]
            for where, record in _records(path, resolve_format(definition.format, path), definition.columns, report):
                record.setdefault("_file", stem)
                record.setdefault("_row", where)
                if definition.join:
                    partner = partners.get(str(record.get(definition.join.key)))
                    if partner is None:
                        report.bad(where, "no_join_partner", f"no {definition.join.key}="
                                   f"{record.get(definition.join.key)!r} in {definition.join.file}")
                        continue
                    record = {**partner, **record}
                yield relative, report, where, record
