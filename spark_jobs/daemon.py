"""The Python daemon of a local session's executors (``spark.python.daemon.module``, set by ``get_spark``): pyspark's
own daemon, with pyspark imported from the installed package rather than from the zip of it that Spark puts first
on the workers' path, a worker's garbage collection after each task walking only what came after its first
(``FreezingGC``), and a worker whose connection the JVM has closed ending without a traceback (``closed_quietly``).
The last two replace names pyspark's daemon looks up when a worker runs (``gc``, ``worker``); were they renamed, the
daemon would run as pyspark's own.

Spark starts the daemon with ``$SPARK_HOME/python/lib/pyspark.zip`` at the head of ``PYTHONPATH``. For a pip-installed
pyspark that zip sits inside the installed package and holds the same modules, but as sources only, and Python
caches no bytecode for a zip: every daemon compiles pyspark again, and every worker it forks compiles what
``pyspark.worker`` adds. Measured on this 2-core machine (2026-12-06): importing the daemon and the worker takes
0.52 s from the zip and 0.11 s installed; a fresh local[2] session's first Python job 0.80 s and 0.37 s. Here the
zip goes to the end of the path when it is the installed package's own (so the same release); anywhere else, a
cluster executor's or a Spark distribution's, the path is left as it is.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
from importlib.machinery import PathFinder


def installed_first(path: list[str]) -> list[str]:
    """``path`` with the entries inside the installed pyspark package (its bundled zips) moved to the end, links
    resolved (Spark names the zip by its real path, a venv may be reached through a link); unchanged when pyspark is
    not installed outside a zip."""
    spec = PathFinder.find_spec("pyspark", [p for p in path if not p.endswith(".zip")])
    if spec is None or spec.origin is None:
        return list(path)
    package = os.path.realpath(os.path.dirname(spec.origin)) + os.sep
    bundled = [p for p in path if os.path.realpath(p).startswith(package)]
    return [p for p in path if p not in bundled] + bundled


class FreezingGC:
    """pyspark's daemon calls ``gc.collect()`` in a worker after each task it runs. A full collection walks every
    object the worker tracks: with a scoring task's modules loaded (numba's registries, pyarrow, numpy) ~160,000,
    ~80 ms a task. This collects, then the first time freezes what survived (``gc.freeze``: the modules and caches a
    worker's first task loaded, there for its life), so each later collection walks only what came after."""

    def __init__(self):
        self.frozen = False

    def collect(self) -> int:
        found = gc.collect()
        if not self.frozen:
            gc.freeze()
            self.frozen = True
        return found


def closed_quietly(worker):
    """pyspark's ``worker(sock, authenticated)``, ending the worker without a traceback when the JVM has closed its
    connection (EPIPE or ECONNRESET: the session stopping, the task gone, so nothing is left to tell it). Over Unix
    sockets pyspark's daemon printed one for about one session stop in four."""
    @functools.wraps(worker)
    def run(sock, authenticated):
        try:
            return worker(sock, authenticated)
        except (BrokenPipeError, ConnectionResetError):
            return 1  # the daemon's loop then ends this worker
    return run


if __name__ == "__main__":
    sys.path[:] = installed_first(sys.path)
    import pyspark.daemon

    # the names pyspark's daemon calls in a forked worker
    pyspark.daemon.gc = FreezingGC()
    pyspark.daemon.worker = closed_quietly(pyspark.daemon.worker)
    pyspark.daemon.manager()
