"""The ``trait`` command as the user runs it (the console script, from the repository root), to its end or
SIGKILLed from outside, with its whole process group, at a chosen moment (a lost node)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.conftest import REPO

# The console script people run (``.venv/bin/trait``, beside this interpreter), else the module.
_SCRIPT = Path(sys.executable).with_name("trait")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "trait.cli"]


def trait(*args: str, env: Mapping[str, str] | None = None, timeout: float = 900, check: bool = False,
          prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """``trait ARGS`` run to its end (``env``: the whole environment, default this process's; ``prefix``: a command
    it runs under, such as ``support.privileges.WITHOUT_DAC``); with ``check`` a non-zero exit is an AssertionError
    carrying the end of stderr."""
    proc = subprocess.run([*prefix, *COMMAND, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"trait {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def trait_killed_when(ready: Callable[[], bool], *args: str, env: Mapping[str, str] | None = None,
                      timeout: float = 900) -> subprocess.CompletedProcess:
    """``trait ARGS`` in a process group of its own, SIGKILLed as a whole (the command, torchrun and its workers, a
    JVM) as soon as ``ready()`` holds, polled every 5 ms. Returns what it printed; its returncode is -SIGKILL when it
    was killed. A command that ends before ``ready()`` holds returns as it ended; the caller's assert says so."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # a pipe could fill and block
        proc = subprocess.Popen([*COMMAND, *args], stdout=out, stderr=err, text=True, cwd=REPO, env=env,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if ready():
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"trait {' '.join(args)}: not ready after {timeout} s")
                time.sleep(0.005)
        finally:
            if proc.poll() is None:  # a timeout, or the kill above not reaped yet (killing twice is harmless)
                os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, returncode, out.read(), err.read())
