"""Files shipped to executors with the job, and the objects loaded from them once per Python worker.

This module must be importable on the executors (it is, inside the package zip or the packed environment):
a cache defined in the driver's ``__main__`` would be pickled into every task and reloaded each time.
"""

from __future__ import annotations

import os

_CACHE: dict[tuple[str, str], object] = {}


def ship(spark, path: str) -> str:
    """Send a local or remote file to every executor; returns the name to ``resolve`` it by there."""
    spark.sparkContext.addFile(path)
    return os.path.basename(path)


def resolve(name: str) -> str:
    """Local path of a shipped file on this executor (or on the driver, in local mode)."""
    from pyspark import SparkFiles

    return SparkFiles.get(name)


def fasttext_model(name: str):
    """The shipped fastText model ``name``, loaded once per Python worker process."""
    key = ("fasttext", name)
    if key not in _CACHE:
        import fasttext

        _CACHE[key] = fasttext.load_model(resolve(name))
    return _CACHE[key]


def token_counter(spec: str):
    """A TokenCounter for ``spec`` ('words' or 'hf:<shipped tokenizer.json name>'), once per worker."""
    key = ("tokens", spec)
    if key not in _CACHE:
        from .text import TokenCounter

        _CACHE[key] = TokenCounter(f"hf:{resolve(spec[3:])}" if spec.startswith("hf:") else spec)
    return _CACHE[key]
