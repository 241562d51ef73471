"""File operations on any URI Spark can write (local, HDFS, S3A, GCS, ABFS) through Hadoop's FileSystem API."""

from __future__ import annotations

import os
import re

from trait import UserError


class InputPathError(UserError, ValueError):
    """An input path that cannot be listed (permission denied) or named (a ':' in a file name) through Hadoop."""


class HadoopFS:
    """Thin wrapper over ``org.apache.hadoop.fs.FileSystem`` reached through the driver's JVM gateway."""

    def __init__(self, spark):
        self._jvm = spark._jvm
        self._conf = spark._jsc.hadoopConfiguration()

    def _path(self, path: str):
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self, path: str):
        fs = self._path(path).getFileSystem(self._conf)
        # Local FS writes .crc side files; they are noise in a Parquet directory.
        fs.setWriteChecksum(False)
        return fs

    def qualify(self, path: str) -> str:
        """Fully qualified URI (``file:/abs/path`` for local paths)."""
        p = self._path(path)
        return str(p.getFileSystem(self._conf).makeQualified(p).toString())

    def exists(self, path: str) -> bool:
        return bool(self._fs(path).exists(self._path(path)))

    def is_dir(self, path: str) -> bool:
        return bool(self._fs(path).getFileStatus(self._path(path)).isDirectory())

    def delete(self, path: str) -> None:
        self._fs(path).delete(self._path(path), True)

    def mkdirs(self, path: str) -> None:
        self._fs(path).mkdirs(self._path(path))

    def rename(self, src: str, dst: str) -> None:
        if not self._fs(src).rename(self._path(src), self._path(dst)):
            raise OSError(f"could not move {src} to {dst}")

    def list(self, path: str) -> list[str]:
        """Names (not paths) of the entries directly under ``path``, sorted."""
        return sorted(str(s.getPath().getName()) for s in self._fs(path).listStatus(self._path(path)))

    def glob(self, pattern: str) -> list[tuple[str, int, int]]:
        """Files matching ``pattern`` (directories expanded one level): (uri, bytes, mtime ms), sorted.

        Raises InputPathError where a folder on the way may not be listed or entered, or a file name holds ':',
        rather than matching nothing or failing with a Java trace."""
        out = []
        try:
            for status in self._fs(pattern).globStatus(self._path(pattern)) or []:
                if status.isDirectory():
                    inner = self._fs(pattern).listStatus(status.getPath())
                    out.extend((str(s.getPath().toString()), int(s.getLen()), int(s.getModificationTime()))
                               for s in inner if s.isFile() and not s.getPath().getName().startswith(("_", ".")))
                else:
                    out.append((str(status.getPath().toString()), int(status.getLen()),
                                int(status.getModificationTime())))
        except Exception as exc:  # py4j's Py4JJavaError, or pyspark's IllegalArgumentException for a bad name
            if denied := re.search(r"AccessDeniedException: (.*?): Permission denied", str(exc)):
                raise InputPathError(f"permission denied: cannot list folder {denied[1]} (input {pattern!r})") from None
            if named := re.search(r"Relative path in absolute URI: (\S+)", str(exc)):
                raise InputPathError(f"input {pattern!r}: Hadoop paths cannot name a file with ':' in its name "
                                     f"({named[1]}); rename it") from None
            raise
        if not out and (folder := _closed_folder(pattern)):
            raise InputPathError(f"permission denied: cannot enter folder {folder} (input {pattern!r})")
        return sorted(out)

    def write_text(self, path: str, text: str) -> None:
        stream = self._fs(path).create(self._path(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def read_text(self, path: str) -> str:
        fs = self._fs(path)
        p = self._path(path)
        length = int(fs.getFileStatus(p).getLen())
        stream = fs.open(p)
        try:
            buf = self._jvm.java.io.ByteArrayOutputStream()
            self._jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, buf, max(4096, length), False)
            return bytes(buf.toByteArray()).decode("utf-8")
        finally:
            stream.close()


def _closed_folder(pattern: str) -> str | None:
    """For a local pattern: the folder on its way that this process may not enter or (before a glob) list, else
    None. Java's file API reports what lies behind such a folder as missing."""
    path = pattern[len("file:"):] if pattern.startswith("file:") else pattern
    if "://" in path:
        return None
    folder = os.sep
    for part in os.path.abspath(path).split(os.sep)[1:]:
        try:
            if re.search(r"[*?\[{]", part):
                os.listdir(folder)
                return None
            os.stat(os.path.join(folder, part))
        except PermissionError:
            return folder
        except OSError:
            return None
        folder = os.path.join(folder, part)
    return None


def arrow_filesystem(uri: str):
    """(pyarrow FileSystem, path) for a Hadoop-style URI, for Python code on the executors.

    ``file:/x`` (how Hadoop qualifies local paths) and plain paths are local; ``s3a://`` is S3 to pyarrow;
    anything else (``hdfs://``, ``s3://``, ``gs://``, ``abfs://``) goes to ``pyarrow.fs.FileSystem.from_uri``.
    """
    import pyarrow.fs as pafs

    if uri.startswith("file:"):
        return pafs.LocalFileSystem(), "/" + uri[len("file:"):].lstrip("/")
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://"):]
    return pafs.FileSystem.from_uri(uri)
