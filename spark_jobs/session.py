"""SparkSession construction shared by every job.

Under ``spark-submit`` the master and resources come from the submit command; run from the ``trait`` CLI the
job defaults to ``local[*]``. Either way the Python workers run the interpreter that runs the driver. A local master's
driver listens on 127.0.0.1 only; a cluster's on the interface its configuration names.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from trait.net import socket_name_fits

log = logging.getLogger(__name__)

# Defaults that every job wants; a job's own conf overrides them, and so do spark-submit's --conf and
# spark-defaults.conf (``get_spark``).
_DEFAULT_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Keep Arrow batches modest: a batch of 16 KB documents x 2048 rows is ~32 MB in a Python worker.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2048",
    # Spark's own _SUCCESS would collide with ours; we write the marker after the manifest.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.parquet.compression.codec": "zstd",
}


# A Python worker takes one Arrow batch after another, each tens of MB (a scoring batch: ~23 MB of text, its
# normalised copy, the scores). By default the memory of a batch goes back to the OS when it is freed, and the next
# batch's comes fresh: Arrow's mimalloc purges its freed pages (and its arena is marked for huge pages, so each
# fault then zeroes 2 MB), and glibc's malloc unmaps any block over its mmap threshold (at most 32 MB) and trims
# the rest. Each fresh page costs a fault and its zeroing: on this 2-core VM the kernel's page clearing took 20 %
# of a scoring worker's CPU. With Arrow on the system allocator and glibc's malloc keeping what it frees (no mmap;
# up to 256 MB free at the top of its heap before it trims), `trait score` on the 200,000-document benchmark corpus
# on 2 cores took a median 34.7 s against 42.2 s (three pairs, 2026-12-06).
WORKER_MEMORY_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system",
                     "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=268435456"}


def worker_memory_env() -> dict[str, str]:
    """``WORKER_MEMORY_ENV`` less what this process's environment sets already: workers inherit that instead."""
    return {name: value for name, value in WORKER_MEMORY_ENV.items() if name not in os.environ}


def submitted_keys() -> set[str]:
    """The settings spark-submit was given (--conf, --properties-file, spark-defaults.conf): its JVM holds them as
    system properties, which a new SparkConf reads."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return {key for key, _ in SparkConf().getAll()}


def under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (the JVM gateway already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


# C2, the JVM's optimising compiler, spends its CPU on code that gets hot; in a job whose JVM only schedules Python
# tasks and renames files (`trait score`) nothing does, and on local[1] that CPU is the scoring's. Measured there
# (score, 20k documents): JVM CPU 2.0 -> 1.0 s in a first job, 0.7 -> 0.2 s in a later one; session start
# 9.3 -> 5.6 s. Jobs whose rows pass through the JVM (ingest, select) keep C2.
SCHEDULER_ONLY_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


# A local JVM spends most of its start loading and verifying Spark's classes. A class archive (the JVM's AppCDS:
# classes parsed, verified and laid out once, then mapped at each start) cuts that: measured on this 2-core machine
# (2026-12-06, three pairs, local[2]), session start 2.6-3.0 -> 1.7-1.9 s and a first Python job 1.34-1.37 ->
# 1.11-1.20 s. `infra/setup.sh` builds the archive once per machine (``build_class_archive``, ~10 s); a local
# session maps it when it exists. The JVM checks it against its own build and class path: an archive it cannot use
# it ignores (the logging of that is turned off, the session starts as without one).
def class_archive() -> Path:
    """This machine's class archive for Spark's local JVM (it may not exist yet): under ``$TRAIT_CACHE`` (else
    ~/.cache/trait), named by the java binary and Spark's jars, their folder included (the JVM checks the class
    path it was built with), so a new Java, Spark or checkout gets an archive of its own."""
    import pyspark

    from trait.models import cache_root

    java = _java()
    folder = Path(pyspark.__file__).resolve().parent / "jars"
    key = hashlib.sha1(json.dumps([java, os.stat(java).st_mtime_ns, pyspark.__version__, str(folder),
                                   sorted(os.listdir(folder))]).encode()).hexdigest()
    return cache_root() / "jvm" / f"spark-{pyspark.__version__}-{key[:16]}.jsa"


def _java() -> str:
    """The java binary pyspark starts: $JAVA_HOME's, else the one on PATH (resolved)."""
    home = os.environ.get("JAVA_HOME")
    found = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not found or not os.path.exists(found):
        raise RuntimeError("no java: set JAVA_HOME or put java on PATH (infra/setup.sh installs Java 17)")
    return os.path.realpath(found)


def build_class_archive() -> Path:
    """Build ``class_archive()`` if missing: a child process runs a local session through what jobs load (a Python
    task, Hadoop's file system, a SQL read and write) with the JVM dumping its classes at exit; the archive is
    renamed into place only when complete. Returns its path."""
    target = class_archive()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        dump = Path(work) / target.name
        done = subprocess.run([sys.executable, "-m", "spark_jobs.session", "--dump-classes", str(dump)],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
        if done.returncode or not dump.is_file() or not dump.stat().st_size:
            raise RuntimeError(f"the JVM wrote no class archive (exit {done.returncode}): {done.stderr[-2000:]}")
        os.replace(dump, target)
    return target


def _dump_classes(path: str) -> None:
    """The archive's child: a session started with ``-XX:ArchiveClassesAtExit``, the loads of a job, and a JVM that
    exits normally (its stdin closed), which is when it writes the archive."""
    from pyspark import SparkContext

    from .fs import HadoopFS

    options = f"{SCHEDULER_ONLY_JAVA_OPTIONS} -XX:ArchiveClassesAtExit={path} -Xlog:cds=off -Xlog:cds+dynamic=off"
    spark = get_spark("trait-class-archive", "local[1]", {"spark.driver.extraJavaOptions": options},
                      archive=False)
    with tempfile.TemporaryDirectory() as tmp:
        spark.sparkContext.parallelize(range(4), 2).map(lambda x: x + 1).sum()
        fs = HadoopFS(spark)
        fs.write_text(f"{tmp}/a.txt", "a")
        fs.rename(f"{tmp}/a.txt", f"{tmp}/b.txt")
        fs.glob(f"{tmp}/*.txt")
        spark.range(10).write.parquet(f"{tmp}/t")
        spark.read.parquet(f"{tmp}/t").count()
    gateway = SparkContext._gateway
    spark.stop()
    gateway.proc.stdin.close()
    gateway.proc.wait()


# A local session's Python workers and its driver's accumulator server talk to the JVM over Unix sockets rather than
# TCP: over TCP each Python task waited ~45 ms for its input (measured 2026-12-06 on local[1]: a trivial task 50 ->
# 5 ms; `trait score` at the demo's size, with spark_jobs.daemon's collections, 7.33 -> 7.06 s over eight pairs).
# Their socket files go to a private folder the driver removes when it exits: Spark's default is java.io.tmpdir,
# and the accumulator server's file stays there unless the session is stopped, which `trait` commands leave to the
# exit.
_SOCKET_NAME_CHARS = 42  # pyspark's and Spark's ".<uuid4>.sock"


def _socket_folder() -> str | None:
    """A new private folder for a local session's sockets, removed at exit; None where its path would leave a socket
    too long a name (the session then keeps TCP). A killed driver's exit handlers never run, so the name holds where
    its PID means something (``_process_scope``) and the PID, and each new session first removes the folders of dead
    drivers (``_sweep_socket_folders``)."""
    scope = _process_scope()
    _sweep_socket_folders(tempfile.gettempdir(), scope)
    folder = tempfile.mkdtemp(prefix=f"trait-spark-{scope or 'x'}-{os.getpid()}-")
    if not socket_name_fits(folder, _SOCKET_NAME_CHARS):
        os.rmdir(folder)
        return None
    atexit.register(_remove_socket_folder, folder)
    return folder


def _remove_socket_folder(folder: str) -> None:
    """Remove the sockets Spark and pyspark made in ``folder`` (``.<uuid4>.sock``), then the folder if that left it
    empty: nothing else is ever deleted."""
    try:
        for entry in os.scandir(folder):
            socket_file = stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode)
            if socket_file and re.fullmatch(r"\.[0-9a-f-]{36}\.sock", entry.name):
                os.unlink(entry.path)
        os.rmdir(folder)
    except OSError:
        pass  # gone already, or holding something else: left as it is


def _process_scope() -> str:
    """Eight hex digits naming this machine's boot and this process's PID namespace, within which a PID names one
    process (a temporary folder may be shared by containers, or by machines); '' where either cannot be read."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return hashlib.sha1(f"{boot}/{namespace}".encode()).hexdigest()[:8]


def _sweep_socket_folders(parent: str, scope: str) -> None:
    """Remove this user's socket folders in ``parent`` of ``scope`` whose driver no longer runs. A folder of another
    scope is left alone: its PID means nothing here."""
    if not scope:
        return
    for entry in os.scandir(parent):
        match = re.fullmatch(rf"trait-spark-{scope}-(\d+)-\w+", entry.name)
        if not match or not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            _remove_socket_folder(entry.path)
        except PermissionError:
            pass  # a running process of another user


def get_spark(app_name: str, master: str | None = None, conf: dict[str, str] | None = None,
              scheduler_only: bool = False, archive: bool = True):
    """Return a SparkSession: ``master`` if given, else spark-submit's, else ``local[*]``.

    ``scheduler_only``: the job's driver only schedules Python tasks and moves files. A local JVM this call starts
    then runs without C2 (``SCHEDULER_ONLY_JAVA_OPTIONS``; under spark-submit, or on a cluster, JVM options are the
    submit command's), and unless a session exists already, the session's JVM side is made on first use
    (``scheduler_session``). A local JVM this call starts maps the machine's class archive if it has one
    (``class_archive``; ``archive`` False: never), its Python workers reach it over Unix sockets in a private folder
    (``_socket_folder``), and when they run this interpreter, their Python daemon is ``spark_jobs.daemon``.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    options = {"spark.app.name": app_name}
    if master:
        options["spark.master"] = master
    elif not under_spark_submit():
        options["spark.master"] = "local[*]"
    if not under_spark_submit():
        options["spark.ui.enabled"] = "false"
        options["spark.driver.memory"] = os.environ.get("TRAIT_DRIVER_MEMORY", "4g")
        if (master or "local").startswith("local"):
            # A local master's executors run in this JVM (local-cluster's, on this machine): nothing from outside
            # needs the driver, so its RPC and block manager ports listen on loopback. Spark's default is the
            # address of the host name; for a cluster master it still is, or spark.driver.host / SPARK_LOCAL_IP.
            options["spark.driver.bindAddress"] = options["spark.driver.host"] = "127.0.0.1"
            if SparkContext._active_spark_context is None and (folder := _socket_folder()):
                options["spark.python.unix.domain.socket.enabled"] = "true"
                options["spark.python.unix.domain.socket.dir"] = folder
            if os.environ["PYSPARK_PYTHON"] == sys.executable:
                # The executors run this environment, so their Python daemon can import pyspark as installed, with
                # its cached bytecode, rather than from the sources-only zip Spark puts first (spark_jobs/daemon.py)
                options["spark.python.daemon.module"] = "spark_jobs.daemon"
            java_options = [SCHEDULER_ONLY_JAVA_OPTIONS] if scheduler_only else []
            if archive and (path := class_archive()).exists():
                java_options.append(f"-XX:SharedArchiveFile={path} -Xlog:cds=off -Xlog:cds+dynamic=off")
            if java_options:
                options["spark.driver.extraJavaOptions"] = " ".join(java_options)
    defaults = {**_DEFAULT_CONF,
                **{f"spark.executorEnv.{name}": value for name, value in worker_memory_env().items()},
                # Spark's progress bar redraws a line with carriage returns: for a terminal, not for a batch log
                "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower()}
    if under_spark_submit():  # a session's options override what spark-submit was given: leave those alone
        submitted = submitted_keys()
        defaults = {key: value for key, value in defaults.items() if key not in submitted}
    options |= {**defaults, **(conf or {})}
    if scheduler_only and SparkSession.getActiveSession() is None:
        spark = scheduler_session(options)
    else:
        spark = SparkSession.builder.config(map=options).getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("TRAIT_SPARK_LOG_LEVEL", "WARN"))
    log.info("spark %s master=%s parallelism=%d", spark.version, spark.sparkContext.master,
             spark.sparkContext.defaultParallelism)
    return spark


def scheduler_session(options: dict[str, str]):
    """A SparkSession on a SparkContext started with ``options`` whose JVM side, Spark SQL's session, is made on
    first use, which a job that runs no SQL (``trait score``) never makes: in a fresh JVM it costs ~1.8 s of one
    core's CPU (SQL's configuration and classes), before the first task, on the cores the scoring needs
    (benchmarks/score_throughput.py). Anything that uses SQL gets the session as ``SparkSession`` makes it."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    class SchedulerSession(SparkSession):
        def __init__(self, sc: SparkContext):  # SparkSession.__init__ would make the JVM session now
            self._sc, self._jsc, self._jvm = sc, sc._jsc, sc._jvm

        @functools.cached_property
        def _jsparkSession(self):  # noqa: N802 (SparkSession's name)
            return SparkSession(self._sc)._jsparkSession

        @property
        def version(self) -> str:
            return self._sc.version

        def stop(self) -> None:
            if "_jsparkSession" in self.__dict__:
                super().stop()
            else:
                self._sc.stop()

    return SchedulerSession(SparkContext.getOrCreate(SparkConf().setAll(list(options.items()))))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--dump-classes"]:
        _dump_classes(sys.argv[2])
    elif sys.argv[1:] == ["--build-class-archive"]:
        print(build_class_archive())
    else:
        sys.exit("usage: python -m spark_jobs.session --build-class-archive")
