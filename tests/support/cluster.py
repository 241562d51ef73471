"""A real Spark standalone cluster on 127.0.0.1: one master and two one-core workers, for the cluster tests.

Started with the ``spark-class`` launcher of the installed pyspark (the wheel has no start-master.sh). Each
worker is the leader of its own process group, so killing the group takes its executor JVM and Python workers
with it, as a lost machine would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

from trait.net import free_port


@dataclass
class StandaloneCluster:
    root: Path
    workers: int = 2
    master_port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        spark_home = os.path.dirname(pyspark.__file__)
        env = {**os.environ, "SPARK_HOME": spark_home, "SPARK_LOCAL_IP": "127.0.0.1",
               "SPARK_LOG_DIR": str(self.root / "logs"), "SPARK_NO_DAEMONIZE": "1"}
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([f"{spark_home}/bin/spark-class", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 90) -> StandaloneCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs.append(self._spawn("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                      "--port", str(self.master_port), "--webui-port", str(self.ui_port)))
        for i in range(self.workers):
            work = self.root / f"worker-{i}"
            self.procs.append(self._spawn(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", self.url,
                                          "--cores", "1", "--memory", "2g", "--host", "127.0.0.1",
                                          "--webui-port", str(free_port()), "--work-dir", str(work)))
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if len(self.alive_workers()) == self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"standalone cluster did not come up in {timeout} s; logs in {self.root}")

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
            return json.load(r)

    def alive_workers(self) -> list[dict]:
        return [w for w in self.state()["workers"] if w["state"] == "ALIVE"]

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` and everything it started (its executor and the executor's Python)."""
        os.killpg(self.procs[1 + index].pid, signal.SIGKILL)
        self.procs[1 + index].wait()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
