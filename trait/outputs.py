"""Where a job may write: a folder that is new, empty or the job's own, and never over, inside or around an input.

Every job checks its output before it reads much, writes or deletes anything (``check_output``):

- An existing output folder may hold only what the job itself writes. For a dataset job that is a TRAIT dataset:
  a ``manifest.json`` with the ``job`` that made it, ``part-NNNNN.parquet`` files and ``_``-prefixed side entries
  (``_SUCCESS``, ``_quarantine``, dedup's ``_dropped``). Anything else (a thesis, a CSV, another tool's Parquet) is
  refused with its names, and ``--overwrite`` does not change that: it replaces a TRAIT dataset, never other
  files. Jobs that write named files (eval's results, a trainer run, a classifier card) list their own names.
- An output equal to, inside or containing one of the job's inputs is refused: the rerun that replaces the output
  would delete the input, or the job would read what it writes. An input is a path (a file or a folder) or a glob;
  a glob's matches count as inputs, and so does any path the glob would match on a later run.

A local output must be writable by this process: the folder, or the nearest existing folder above an output that
does not exist yet, takes a probe file that is created and removed at once (permission bits alone do not say it:
root writes through them, and a read-only mount ignores them).

Paths are compared as absolute paths, local ones (plain or ``file:``) with symbolic links resolved. A folder is
read with pathlib, or through the caller's file system object when it gives one (``spark_jobs.fs.HadoopFS``:
``exists``, ``is_dir``, ``list``, ``read_text``), which a URI that is not local (``hdfs://``, ``s3a://``) needs.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import posixpath
import tempfile
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from trait import UserError
from trait.contract import MANIFEST_NAME

# What a TRAIT dataset folder holds: its parts and manifest, and `_` entries (Hadoop's hidden-file convention: the
# _SUCCESS marker, _quarantine, dedup's _dropped), which readers of the parts skip.
PART_FILES = "part-*.parquet"
DATASET_ENTRIES = (PART_FILES, MANIFEST_NAME, "_*")
# A job's staging folder also holds what Spark leaves while it writes: checksum files, _temporary, _SUCCESS.
STAGING_ENTRIES = (*DATASET_ENTRIES, ".*")
SHOWN = 5  # entries named in a refusal before "and N more"


class OutputError(UserError, ValueError):
    """An output that is not the job's own folder, or that overlaps one of the job's inputs."""


def is_local(uri: str | os.PathLike) -> bool:
    return "://" not in str(uri) or str(uri).startswith("file:")


def local_path(uri: str | os.PathLike) -> Path:
    """``file:/x``, ``file:///x`` and plain paths as an absolute path with symbolic links resolved."""
    text = str(uri)
    if text.startswith("file:"):
        text = "/" + text[len("file:"):].lstrip("/")
    return Path(os.path.abspath(os.path.expanduser(text))).resolve()


def _shown(uri: str | os.PathLike) -> str:
    """A path as people type it: a local one absolute (``/abs/out``, not ``file:/abs/out``); a URI as it is."""
    return str(local_path(uri)) if is_local(uri) else str(uri)


class _LocalFiles:
    """The four questions ``check_output`` asks of a folder, for local paths."""

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.lexists(path)

    @staticmethod
    def is_dir(path: str) -> bool:
        return os.path.isdir(path)

    @staticmethod
    def list(path: str) -> list[str]:
        return sorted(os.listdir(path))

    @staticmethod
    def read_text(path: str) -> str:
        return Path(path).read_text(encoding="utf-8")


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _made_by_trait(fs, folder: str) -> bool:
    """True when ``folder/manifest.json`` is a manifest a TRAIT job wrote (a JSON object naming its job)."""
    if not fs.exists(f"{folder}/{MANIFEST_NAME}"):
        return False
    try:
        manifest = json.loads(fs.read_text(f"{folder}/{MANIFEST_NAME}"))
    except (OSError, ValueError):  # unreadable or not JSON: not a manifest of ours
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("job"), str)


def check_writable(output: str | os.PathLike, *, name: str = "--output") -> None:
    """Refuse a local ``output`` this process cannot write: a probe file is created and removed in the folder, or in
    the nearest existing folder above it when it does not exist yet. A non-local URI is left to its file system."""
    if not is_local(output):
        return
    folder = local_path(output)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():  # a file in the way: check_folder or the job's mkdir says so
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".trait-write-probe-", dir=folder)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise OutputError(f"permission denied: cannot write to {folder} ({name} {_shown(output)}); choose an output "
                          "you can write, or fix its permissions") from None
    os.close(fd)
    os.unlink(probe)


def check_folder(output: str | os.PathLike, own: Iterable[str] = DATASET_ENTRIES, *, dataset: bool = True,
                 fs=None, name: str = "--output") -> None:
    """Refuse an existing ``output`` that holds entries other than ``own`` (fnmatch patterns of names) or, for a
    ``dataset``, a non-empty folder that is not a TRAIT dataset, and a local one this process cannot write
    (``check_writable``). ``fs``: the file system object to ask (needed for a URI that is not local); without one,
    local paths are read with pathlib."""
    if fs is None and not is_local(output):
        raise ValueError(f"{output}: a file system object is needed to check a non-local output")
    files = fs or _LocalFiles()
    folder = str(output).rstrip("/") if fs else str(local_path(output))
    shown = _shown(output)
    exists = files.exists(folder)
    if exists and not files.is_dir(folder):
        raise OutputError(f"{name} {shown} is a file, not a folder; choose a new folder")
    names = files.list(folder) if exists else []
    own = tuple(own)
    foreign = [n for n in names if not any(fnmatchcase(n, p) for p in own)]
    if names and dataset and not _made_by_trait(files, folder):
        raise OutputError(f"{name} {shown} is a folder that is not a TRAIT dataset (it holds {_named(names)}); "
                          "nothing was written or deleted: choose a new or empty folder (--overwrite replaces "
                          "only a TRAIT dataset)")
    if foreign:
        what = "a TRAIT dataset and also " if dataset else ""
        raise OutputError(f"{name} {shown} holds {what}{_named(foreign)}, which this job does not write; nothing "
                          "was written or deleted: move that out of the way, or choose a new or empty folder")
    check_writable(output, name=name)


def _location(uri: str) -> tuple[str, PurePosixPath]:
    """(file system, absolute path) of a path or URI, for comparing locations; local paths resolved."""
    if is_local(uri):
        return "file", PurePosixPath(local_path(uri))
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}", PurePosixPath(posixpath.normpath(parts.path or "/"))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _local_glob(pattern: str) -> tuple[PurePosixPath, PurePosixPath, list[str]]:
    """(its fixed folder, the absolute pattern, the paths it matches now) of a local glob."""
    absolute = PurePosixPath(local_path(pattern))  # links resolved up to the first wildcard, which names nothing
    fixed = next(i for i, part in enumerate(absolute.parts) if _is_glob(part))
    return PurePosixPath(*absolute.parts[:fixed]), absolute, glob.glob(str(absolute))


def _relation(out: PurePosixPath, where: PurePosixPath) -> str | None:
    """How ``out`` relates to ``where``: 'is', 'is inside', 'contains', or None (apart)."""
    if where == out:
        return "is"
    if where in out.parents:
        return "is inside"
    if out in where.parents:
        return "contains"
    return None


def check_overlap(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *,
                  matched: Iterable[str] = (), name: str = "--output") -> None:
    """Refuse an ``output`` equal to, inside or containing an input: a path, a local glob (its folder and what it
    matches now or would match later), or one of ``matched`` (files an input was already expanded to, as URIs;
    the only check of a remote glob)."""
    out_fs, out = _location(str(output))

    def refuse(how: str, what: str):
        return OutputError(f"{name} {_shown(output)} {how} {what}; a job never writes over, inside or around what "
                           "it reads: choose an output outside its inputs")

    for spec in map(str, inputs):
        if not _is_glob(spec):
            fs, where = _location(spec)
            if fs == out_fs and (how := _relation(out, where)):
                raise refuse(how, f"the input {spec}")
        elif is_local(spec) and out_fs == "file":
            root, pattern, matches = _local_glob(spec)
            if any(p.match(str(pattern)) for p in (out, *out.parents)):
                raise refuse("is matched by", f"the input {spec} (the job would read it)")
            if (how := _relation(out, root)) in ("is", "contains"):
                raise refuse(how, f"the folder of the input {spec}")
            for match in matches:
                if how := _relation(out, _location(match)[1]):
                    raise refuse(how, f"{match}, an input ({spec})")
    for uri in matched:
        fs, where = _location(uri)
        if fs == out_fs and (how := _relation(out, where)):
            raise refuse(how, f"the input {_shown(uri)}")


def check_output(output: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), matched: Iterable[str] = (),
                 own: Iterable[str] = DATASET_ENTRIES, dataset: bool = True, fs=None, name: str = "--output") -> None:
    """Both checks: ``output`` overlaps no input (``check_overlap``) and is new, empty or the job's own folder
    (``check_folder``). Raises OutputError (a UserError: one line, exit 2) saying what is there."""
    check_overlap(output, inputs, matched=matched, name=name)
    check_folder(output, own, dataset=dataset, fs=fs, name=name)
