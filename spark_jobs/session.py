"""SparkSession construction shared by every job.

Under ``spark-submit`` the master and resources come from the submit command; run from the ``trait`` CLI the
job defaults to ``local[*]``. Either way the Python workers run the interpreter that runs the driver. A local master's
driver listens on 127.0.0.1 only; a cluster's on the interface its configuration names.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

# Defaults that every job wants; spark-submit --conf still overrides them.
_DEFAULT_CONF = {
    "spark.ui.showConsoleProgress": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Keep Arrow batches modest: a batch of 16 KB documents x 2048 rows is ~32 MB in a Python worker.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2048",
    # Spark's own _SUCCESS would collide with ours; we write the marker after the manifest.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.parquet.compression.codec": "zstd",
}


def under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (the JVM gateway already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


# C2, the JVM's optimising compiler, spends its CPU on code that gets hot; in a job whose JVM only schedules Python
# tasks and renames files (`trait score`) nothing does, and on local[1] that CPU is the scoring's. Measured there
# (score, 20k documents): JVM CPU 2.0 -> 1.0 s in a first job, 0.7 -> 0.2 s in a later one; session start
# 9.3 -> 5.6 s. Jobs whose rows pass through the JVM (ingest, select) keep C2.
SCHEDULER_ONLY_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


def get_spark(app_name: str, master: str | None = None, conf: dict[str, str] | None = None,
              scheduler_only: bool = False):
    """Return a SparkSession: ``master`` if given, else spark-submit's, else ``local[*]``.

    ``scheduler_only``: the job's driver only schedules Python tasks and moves files. A local JVM this call starts
    then runs without C2 (``SCHEDULER_ONLY_JAVA_OPTIONS``; under spark-submit, or on a cluster, JVM options are the
    submit command's), and unless a session exists already, the session's JVM side is made on first use
    (``scheduler_session``).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
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
            if scheduler_only:
                options["spark.driver.extraJavaOptions"] = SCHEDULER_ONLY_JAVA_OPTIONS
    options |= {**_DEFAULT_CONF, **(conf or {})}
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
