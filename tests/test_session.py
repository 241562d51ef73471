"""The JVM class archive of spark_jobs/session.py: built once into the cache, not rebuilt, mapped by a local
session, and checked by the JVM itself against the class path it was built with; a local session's private
folder of Unix sockets; Python workers that keep the memory they free; and spark-submit's settings winning over
the session's defaults."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid

from spark_jobs.session import _java, _socket_folder, build_class_archive, class_archive

from .conftest import REPO

SESSION = ("import json; from spark_jobs.session import get_spark; "
           "s = get_spark('t', 'local[1]', scheduler_only=True); "
           "print(json.dumps([list(s._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()"
           ".getInputArguments()), s._jvm.java.lang.System.getProperty('java.class.path')]))")


def test_the_archive_is_built_once_mapped_by_a_session_and_checked_by_the_jvm(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIT_CACHE", str(tmp_path))
    path = build_class_archive()
    assert path == class_archive() and path.parent == tmp_path / "jvm" and path.stat().st_size > 10 << 20
    assert sorted(path.parent.iterdir()) == [path]  # the dump's work folder is gone
    stamp = path.stat().st_mtime_ns
    assert build_class_archive() == path and path.stat().st_mtime_ns == stamp

    out = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True, timeout=300, check=True,
                         cwd=REPO, env={**os.environ, "TRAIT_CACHE": str(tmp_path)})
    arguments, class_path = json.loads(out.stdout.strip().splitlines()[-1])
    assert f"-XX:SharedArchiveFile={path}" in arguments

    # -Xshare:on makes an archive the JVM cannot map an error: it maps with the session's class path, not another
    def java(class_path: str) -> int:
        return subprocess.run([_java(), "-Xshare:on", f"-XX:SharedArchiveFile={path}", "-cp", class_path, "-version"],
                              capture_output=True, timeout=60).returncode

    assert java(class_path) == 0
    assert java(str(tmp_path)) != 0


def test_without_an_archive_a_session_starts_as_before(tmp_path):
    out = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True, timeout=300, check=True,
                         cwd=REPO, env={**os.environ, "TRAIT_CACHE": str(tmp_path)})
    arguments, _ = json.loads(out.stdout.strip().splitlines()[-1])
    assert not any(a.startswith("-XX:SharedArchiveFile") for a in arguments)
    assert not (tmp_path / "jvm").exists()


def test_a_local_sessions_socket_folder_is_gone_when_the_driver_exits():
    """`trait` commands exit without stopping their session: the accumulator server's socket file, which Spark removes
    only at a stop, goes with the folder. (In a temporary folder of its own, short enough for sockets; pytest's
    are not.)"""
    script = ("from spark_jobs.session import get_spark; s = get_spark('t', 'local[1]', scheduler_only=True); "
              "s.sparkContext.parallelize(range(2), 2).map(lambda x: x).collect(); "
              "import os; d = s.sparkContext.getConf().get('spark.python.unix.domain.socket.dir'); "
              "print(d, len(os.listdir(d)))")
    with tempfile.TemporaryDirectory(dir="/tmp") as temporary:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True,
                             cwd=REPO, env={**os.environ, "TMPDIR": temporary})
        folder, sockets = out.stdout.strip().splitlines()[-1].split()
        assert os.path.dirname(folder) == temporary and int(sockets) >= 2  # the daemon's, the accumulators'
        assert not os.path.exists(folder) and os.listdir(temporary) == []


def test_a_temporary_folder_too_deep_for_a_sockets_name_leaves_the_session_on_tcp(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 80)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    assert _socket_folder() is None and list(deep.iterdir()) == []


def test_the_progress_bar_is_drawn_only_for_a_terminal():
    """Spark redraws its progress line with carriage returns: into a batch log (stderr not a terminal) it is off."""
    script = ("from spark_jobs.session import get_spark; s = get_spark('t', 'local[1]', scheduler_only=True); "
              "print(s.sparkContext.getConf().get('spark.ui.showConsoleProgress'))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True,
                         cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "false"


def test_a_new_session_removes_the_socket_folders_of_drivers_that_died(monkeypatch):
    """A SIGKILLed driver runs no exit handler: the next session removes its folder, and leaves a running driver's
    and one of another boot or PID namespace alone."""
    from spark_jobs.session import _process_scope

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    scope = _process_scope()
    assert len(scope) == 8
    with tempfile.TemporaryDirectory(dir="/tmp") as temporary:
        monkeypatch.setattr(tempfile, "tempdir", temporary)
        folders = {name: os.path.join(temporary, name) for name in (
            f"trait-spark-{scope}-{dead.pid}-abc_1", f"trait-spark-{scope}-{os.getpid()}-abc_2",
            f"trait-spark-00000000-{dead.pid}-abc_3", f"other-{scope}-{dead.pid}-abc_4")}
        for folder in folders.values():
            os.mkdir(folder)
        with socket.socket(socket.AF_UNIX) as left:  # what a killed driver leaves: its accumulator server's socket
            left.bind(os.path.join(folders[f"trait-spark-{scope}-{dead.pid}-abc_1"], f".{uuid.uuid4()}.sock"))
        new = _socket_folder()
        assert sorted(os.listdir(temporary)) == sorted([*list(folders)[1:], os.path.basename(new)])
        assert os.path.basename(new).startswith(f"trait-spark-{scope}-{os.getpid()}-")


def test_python_workers_keep_the_memory_they_free(spark):
    """A worker's Arrow allocates through glibc's malloc, which keeps a freed block for the next: a second 64 MB array
    faults in (almost) no fresh pages. (Unmapped and mapped again, it would fault 16,384 pages, or 32 huge ones.)"""
    def worker_memory(_):
        import resource

        import numpy as np
        import pyarrow as pa

        def faults_of_a_64_mb_array() -> int:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = np.ones(64 << 20, dtype=np.uint8)
            del block
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        first = faults_of_a_64_mb_array()
        return pa.default_memory_pool().backend_name, first, faults_of_a_64_mb_array()

    found = spark.sparkContext.parallelize(range(2), 2).map(worker_memory).collect()
    assert [pool for pool, _, _ in found] == ["system", "system"]
    assert all(first >= 32 and again < 16 for _, first, again in found), found


def test_spark_submits_settings_win_over_the_sessions_defaults(tmp_path):
    """--conf of a key the session sets by default (a compression codec, the workers' Arrow pool) keeps its value; a
    default it was not given still applies."""
    import pyspark

    script = tmp_path / "job.py"
    script.write_text(
        "import json, pyarrow\nfrom spark_jobs.session import get_spark\n"
        "s = get_spark('t')\nconf = s.sparkContext.getConf()\n"
        "pool = s.sparkContext.parallelize([0], 1).map(lambda _: pyarrow.default_memory_pool().backend_name).first()\n"
        "print(json.dumps([conf.get('spark.sql.parquet.compression.codec'), "
        "conf.get('spark.sql.execution.arrow.maxRecordsPerBatch'), pool]))\n")
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    out = subprocess.run([submit, "--master", "local[1]", "--conf", f"spark.pyspark.driver.python={sys.executable}",
                          "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.parquet.compression.codec=snappy",
                          "--conf", "spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL=mimalloc", str(script)],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["snappy", "2048", "mimalloc"]
