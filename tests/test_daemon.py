"""spark_jobs/daemon.py: a local session's Python workers import pyspark as installed, not from Spark's zip of it;
collect garbage after a task without walking again what their first task loaded; and end quietly when the JVM has
closed their connection."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from spark_jobs.daemon import FreezingGC, closed_quietly, installed_first

from .conftest import REPO


def _package(root: Path) -> Path:
    """A pyspark package under ``root`` with a bundled zip, as pip installs it; returns the zip."""
    (root / "pyspark" / "python" / "lib").mkdir(parents=True)
    (root / "pyspark" / "__init__.py").write_text("")
    (zipped := root / "pyspark" / "python" / "lib" / "pyspark.zip").write_bytes(b"")
    return zipped


def test_the_installed_packages_own_zips_go_last(tmp_path):
    zipped = _package(tmp_path / "site")
    py4j = zipped.parent / "py4j-0.10.9.9-src.zip"
    path = ["/work", str(zipped), str(py4j), "/usr/lib/python311.zip", str(tmp_path / "site"), "/other"]
    assert installed_first(path) == ["/work", "/usr/lib/python311.zip", str(tmp_path / "site"), "/other",
                                     str(zipped), str(py4j)]


def test_a_zip_named_by_its_real_path_goes_last_from_a_linked_environment(tmp_path):
    zipped = _package(tmp_path / "real" / "site")
    (tmp_path / "venv").symlink_to(tmp_path / "real")
    linked = str(tmp_path / "venv" / "site")
    assert installed_first([str(zipped), linked]) == [linked, str(zipped)]


def test_a_path_without_pyspark_installed_is_left_as_it_is(tmp_path):
    zipped = _package(tmp_path / "dist")  # a Spark distribution's zip, no installed package on the path
    path = [str(zipped), "/usr/lib/python3.11", str(tmp_path / "elsewhere")]
    assert installed_first(path) == path
    other = _package(tmp_path / "other")  # a zip inside another pyspark than the one installed stays first
    assert installed_first([str(zipped), str(other.parents[2])]) == [str(zipped), str(other.parents[2])]


def test_a_local_sessions_workers_import_the_installed_pyspark(spark):
    import pyspark

    def where(_):
        import sys

        import pyspark as worker_pyspark

        return worker_pyspark.__file__, sys.modules["pyspark.worker"].__file__

    found = spark.sparkContext.parallelize(range(2), 2).map(where).collect()
    package = Path(pyspark.__file__).resolve().parent
    assert [tuple(Path(f).resolve() for f in files) for files in found] == [(package / "__init__.py",
                                                                             package / "worker.py")] * 2


def test_workers_of_another_interpreter_keep_sparks_daemon(tmp_path):
    """Workers that run another interpreter than the driver's may lack trait: their daemon stays pyspark's."""
    other = tmp_path / "python"
    other.symlink_to(sys.executable)
    script = ("from spark_jobs.session import get_spark; s = get_spark('t', 'local[1]', scheduler_only=True); "
              "print(s.sparkContext.getConf().get('spark.python.daemon.module', 'unset'))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True,
                         cwd=REPO, env={**os.environ, "PYSPARK_PYTHON": str(other)})
    assert out.stdout.strip().splitlines()[-1] == "unset"


def test_the_first_collection_freezes_what_survived_and_later_ones_do_not():
    collector = FreezingGC()
    try:
        collector.collect()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        later = [[i] for i in range(1000)]  # noqa: F841 (alive across the next collection, not frozen)
        collector.collect()
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_a_closed_connection_ends_a_worker_quietly_and_other_errors_still_raise():
    def worker(error):
        def run(sock, authenticated):
            if error:
                raise error
            return 0
        return run

    assert closed_quietly(worker(None))(None, True) == 0
    assert closed_quietly(worker(BrokenPipeError(32, "Broken pipe")))(None, True) == 1
    assert closed_quietly(worker(ConnectionResetError(104, "reset")))(None, True) == 1
    with pytest.raises(ValueError):
        closed_quietly(worker(ValueError("a task's own error")))(None, True)


def test_a_local_sessions_workers_freeze_what_they_loaded_and_talk_over_unix_sockets(spark):
    """Through spark_jobs.daemon: a worker's later tasks find its first task's objects frozen, and the workers reach
    the JVM over Unix sockets in the session's private folder."""
    def seen(_):
        import gc
        import os

        return gc.get_freeze_count(), os.environ.get("PYTHON_UNIX_DOMAIN_ENABLED"), \
            os.environ.get("PYTHON_WORKER_FACTORY_SOCK_DIR")

    found = spark.sparkContext.parallelize(range(8), 8).map(seen).collect()
    assert max(frozen for frozen, _, _ in found) > 0  # 8 tasks, 2 workers: most are a worker's later tasks
    folder = spark.sparkContext.getConf().get("spark.python.unix.domain.socket.dir")
    assert {(enabled.lower(), where) for _, enabled, where in found} == {("true", folder)}
    assert Path(folder).parent == Path(tempfile.gettempdir()) and Path(folder).name.startswith("trait-spark-")
    assert Path(folder).stat().st_mode & 0o777 == 0o700
