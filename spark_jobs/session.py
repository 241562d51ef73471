"""SparkSession construction shared by every job.

Under ``spark-submit`` the master and resources come from the submit command; run from the ``trait`` CLI the
job defaults to ``local[*]``. Either way the Python workers run the interpreter that runs the driver. A local master's
driver listens on 127.0.0.1 only; a cluster's on the interface its configuration names.
"""

from __future__ import annotations

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

    ``scheduler_only``: the job's JVM only schedules Python tasks; a local JVM this call starts then runs without
    C2 (``SCHEDULER_ONLY_JAVA_OPTIONS``). Under spark-submit, or on a cluster, JVM options are the submit command's.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not under_spark_submit():
        builder = builder.master("local[*]")
    if not under_spark_submit():
        builder = builder.config("spark.ui.enabled", "false")
        builder = builder.config("spark.driver.memory", os.environ.get("TRAIT_DRIVER_MEMORY", "4g"))
        if (master or "local").startswith("local"):
            # A local master's executors run in this JVM (local-cluster's, on this machine): nothing from outside
            # needs the driver, so its RPC and block manager ports listen on loopback. Spark's default is the
            # address of the host name; for a cluster master it still is, or spark.driver.host / SPARK_LOCAL_IP.
            builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
            if scheduler_only:
                builder = builder.config("spark.driver.extraJavaOptions", SCHEDULER_ONLY_JAVA_OPTIONS)
    for key, value in {**_DEFAULT_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("TRAIT_SPARK_LOG_LEVEL", "WARN"))
    log.info("spark %s master=%s parallelism=%d", spark.version, spark.sparkContext.master,
             spark.sparkContext.defaultParallelism)
    return spark
