"""The generator endpoint: a configured OpenAI-compatible URL, or a local vLLM server started and stopped here.

``VllmServer`` is a context manager. With ``endpoint`` set it only checks the URL and finds the model name. Without
it, it starts ``<vllm_python> -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 and a free port in its own
process group (the vLLM environment is separate: this process never imports vLLM or torch), waits for ``GET /health``,
fails fast with the log tail if the process dies, and stops the whole group (SIGTERM, then SIGKILL after
``stop_grace_s``) on exit, on error, on Ctrl-C and on SIGTERM of the parent. If the parent is SIGKILLed, a watchdog
thread inside the server process notices and stops the group the same way, so no engine is left running.
All the local server listens on is on 127.0.0.1: its port and its workers' collectives (gloo, NCCL).
A local server has a temporary folder of its own (``trait-vllm-*``) that ``stop`` removes, after a clean run as
after a failed start: vLLM's interprocess sockets go there (``VLLM_RPC_BASE_PATH``; in the shared temporary folder,
a stopped server left ~10 behind), and so does its log when no ``log_path`` is given (a failed start's error then
carries the log's last lines).

The API key is read from the environment variable named by ``api_key_env``; it is passed to a local server
through its environment (``VLLM_API_KEY``, never the command line, which vLLM logs) and never written to a log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from trait import UserError
from trait.config import ConfigError, field
from trait.net import free_port, socket_name_fits
from trait.tiny_model import TinyModelConfig, build_tiny_model

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
# Runs the server module with a watchdog thread: when the parent that started it dies (even by SIGKILL, when no
# cleanup code of the parent runs), it SIGTERMs its own process group (server, engine core, workers), then SIGKILLs
# it after the grace period. A plain PR_SET_PDEATHSIG is not enough: a server still starting up ignores SIGTERM.
BOOTSTRAP = """\
import os, runpy, shutil, signal, sys, threading, time
parent = os.getppid()
def watch_parent():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(0, signal.SIGTERM)
    # nothing will stop() this server or read a log there: its temporary folder goes now (the process may not outlive
    # the SIGTERM)
    shutil.rmtree(os.environ["TRAIT_VLLM_RUN_DIR"], ignore_errors=True)
    time.sleep(float(os.environ.get("TRAIT_VLLM_STOP_GRACE_S", "20")))
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch_parent, daemon=True, name="trait-parent-watchdog").start()
sys.argv[0] = "vllm-api-server"
runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
"""


class ServerError(UserError):
    """The generator could not be started or reached; the message says why and where the log is."""


@dataclasses.dataclass
class ServerConfig:
    """Where the generator runs: a configured endpoint, or a local vLLM server this process starts."""

    endpoint: str | None = field(None, help="OpenAI-compatible base URL, e.g. http://node1:8000/v1; empty: start a "
                                            "local vLLM server on 127.0.0.1")
    api_key_env: str | None = field(None, help="name of the environment variable holding the API key (never "
                                               "logged); a local server then requires it too")
    model: str | None = field(None, help="model directory or name to serve (or the served name at `endpoint`); "
                                         "empty: the embedded tiny random-weight model")
    vllm_python: str = field(".venv-vllm/bin/python", help="interpreter of the vLLM environment (relative to the "
                                                            "repository root; infra/vllm/setup_vllm_cpu.sh makes it)")
    tensor_parallel_size: int = field(1, help="GPUs per server (vLLM's --tensor-parallel-size); 1 on CPU")
    dtype: str = field("auto", help="weights dtype passed to vLLM (auto, float32, bfloat16, ...)")
    max_model_len: int | None = field(None, help="context length in tokens; empty: the model's")
    chat_template: str | None = field(None, help="Jinja chat template file for a model whose tokenizer has none "
                                                 "(vLLM's --chat-template; relative to the repository root), e.g. "
                                                 "infra/vllm/gemma_chat.jinja; empty: the tokenizer's")
    extra_args: list[str] = field(default_factory=list, help="further api_server flags, e.g. ['--seed', '0']")
    compact_json: bool = field(True, help="structured outputs without free whitespace between JSON tokens (vLLM's "
                                          "disable_any_whitespace); a weak model otherwise spends its budget on it")
    cpu_kvcache_gib: int = field(2, help="KV cache on CPU servers in GiB (VLLM_CPU_KVCACHE_SPACE)")
    chunked_prefill: bool | None = field(None, help="vLLM's chunked prefill; empty: off with vllm-cpu, whose engine "
                                                    "dies ('CPU Generator does not use offset') when a seeded "
                                                    "request's prompt is split across steps; vLLM's default else")
    startup_timeout_s: float = field(600.0, help="seconds to wait for GET /health before giving up")
    stop_grace_s: float = field(20.0, help="seconds between SIGTERM and SIGKILL when stopping")
    tiny_model: TinyModelConfig = field(default_factory=TinyModelConfig, help="shape of the embedded model")

    def validate(self) -> None:
        if self.tensor_parallel_size < 1 or self.cpu_kvcache_gib < 1:
            raise ConfigError(f"server: tensor_parallel_size and cpu_kvcache_gib must be >= 1, got "
                              f"{self.tensor_parallel_size} and {self.cpu_kvcache_gib}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"server: max_model_len must be >= 1 tokens, or empty for the model's; got "
                              f"{self.max_model_len}")
        if not 0 < self.startup_timeout_s < math.inf or not 0 <= self.stop_grace_s < math.inf:
            raise ConfigError(f"server: startup_timeout_s must be a positive number of seconds and stop_grace_s "
                              f">= 0, got {self.startup_timeout_s} and {self.stop_grace_s}")


def root_url(endpoint: str) -> str:
    """``http://h:8000/v1/`` -> ``http://h:8000``: the client adds ``/v1/...`` itself."""
    url = endpoint.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ServerError(f"endpoint {endpoint!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class VllmServer:
    """A running generator: ``base_url`` (no /v1), ``model`` (the served name) and ``api_key`` (None if unset)."""

    def __init__(self, config: ServerConfig | None = None, log_path: str | Path | None = None):
        self.config = config or ServerConfig()
        self.log_path = Path(log_path) if log_path else None
        self._run_dir: Path | None = None  # the server's temporary folder, while it runs
        self.base_url: str | None = None
        self.model: str | None = None
        self.process: subprocess.Popen | None = None
        self._old_sigterm = None

    def __repr__(self) -> str:  # no key here: reprs end up in logs and tracebacks
        return f"VllmServer(base_url={self.base_url!r}, model={self.model!r}, pid={self.pid})"

    @property
    def api_key(self) -> str | None:
        name = self.config.api_key_env
        return os.environ.get(name) or None if name else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.config.api_key_env and not self.api_key:
            raise ServerError(f"api_key_env is {self.config.api_key_env!r} but that environment variable is empty; "
                              "export it or drop api_key_env")
        if self.config.endpoint:
            self.base_url = root_url(self.config.endpoint)
            self.model = self.config.model or self._served_models()[0]
            log.info("generator: endpoint %s, model %s", self.base_url, self.model)
            return
        self._start_local()

    def _served_models(self) -> list[str]:
        try:
            resp = httpx.get(f"{self.base_url}/v1/models", headers=self.headers(), timeout=30)
            resp.raise_for_status()
            return [m["id"] for m in resp.json()["data"]] or ["?"]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise ServerError(f"could not list the models at {self.base_url}/v1/models ({type(exc).__name__}: "
                              f"{exc}); check the endpoint, or set model: in the config") from exc

    def _command(self, model_dir: str, port: int) -> list[str]:
        python = Path(self.config.vllm_python)
        python = python if python.is_absolute() else REPO_ROOT / python
        if not python.exists():
            raise ServerError(f"vLLM interpreter {python} not found; run infra/vllm/setup_vllm_cpu.sh (CPU) or point "
                              "vllm_python at an environment with vllm installed")
        cmd = [str(python), "-c", BOOTSTRAP, "--model", model_dir, "--served-model-name", self.model,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", self.config.dtype]
        if self.config.tensor_parallel_size > 1:
            cmd += ["--tensor-parallel-size", str(self.config.tensor_parallel_size)]
        if self.config.compact_json:  # server-wide in vLLM 0.32 (the per-request field is ignored), and only with
            # an explicit xgrammar or guidance backend, not "auto"
            cmd += ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
        if self.config.max_model_len:
            cmd += ["--max-model-len", str(self.config.max_model_len)]
        if self.config.chat_template:
            template = Path(self.config.chat_template)
            template = template if template.is_absolute() else REPO_ROOT / template
            if not template.is_file():
                raise ServerError(f"chat template {template} not found; set server.chat_template to a Jinja file")
            cmd += ["--chat-template", str(template)]
        chunked = self.config.chunked_prefill
        if chunked is None and _is_vllm_cpu(python):
            # vllm-cpu 0.32 rewinds the per-request generator of a partly prefilled request with set_offset, which
            # CPU generators lack: 8 seeded ~650-token prompts (5.2k tokens > the 2,048-token step budget) killed
            # the engine. Unchunked, a prompt is prefilled whole in one step; the step budget becomes
            # max(max_model_len, 2048) tokens.
            chunked = False
        if chunked is not None:
            cmd.append("--enable-chunked-prefill" if chunked else "--no-enable-chunked-prefill")
        return cmd + list(self.config.extra_args)

    def _start_local(self) -> None:
        if self.config.model is None:
            log.warning("generator: no server.model and no server.endpoint: serving the EMBEDDED TINY RANDOM-WEIGHT "
                        "model, whose outputs are noise (it tests the machinery); set server.model to a model "
                        "directory or server.endpoint to a running server for real passages")
        model_dir = self.config.model or str(build_tiny_model(self.config.tiny_model))
        # A stable served name (not the cache path) so passage ids and provenance do not depend on the machine.
        self.model = Path(model_dir).name if Path(model_dir).is_dir() else model_dir
        port = free_port()
        cmd = self._command(model_dir, port)
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.cpu_kvcache_gib))
        env["TRAIT_VLLM_STOP_GRACE_S"] = str(self.config.stop_grace_s)
        # The server and its workers are on this machine: vLLM's host address and the workers' collectives stay on
        # loopback, whatever the environment says for other jobs (vllm-cpu's worker listens on ~13 gloo ports, on
        # the interface of the host name by default).
        env.update(VLLM_HOST_IP="127.0.0.1", GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        self._run_dir = Path(tempfile.mkdtemp(prefix="trait-vllm-"))
        env["TRAIT_VLLM_RUN_DIR"] = str(self._run_dir)
        if socket_name_fits(self._run_dir, 36):  # vLLM names a socket by a uuid4; else it keeps its default folder
            env["VLLM_RPC_BASE_PATH"] = str(self._run_dir)
        if self.log_path is None:
            self.log_path = self._run_dir / "server.log"
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log.info("generator: starting vLLM for %s on 127.0.0.1:%d, log %s", self.model, port, self.log_path)
            with open(self.log_path, "ab") as log_file:
                log_file.write(f"# {' '.join(c if c != BOOTSTRAP else '<bootstrap>' for c in cmd)}\n".encode())
                log_file.flush()
                self.process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            self.base_url = f"http://127.0.0.1:{port}"
            self._trap_sigterm()
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        start = time.monotonic()
        while time.monotonic() - start < self.config.startup_timeout_s:
            if self.process.poll() is not None:
                raise ServerError(f"vLLM exited with code {self.process.returncode} while starting; "
                                  f"{self._log_excerpt()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    log.info("generator: healthy after %.1f s (pid %d)", time.monotonic() - start, self.pid)
                    return
            time.sleep(0.5)
        raise ServerError(f"vLLM did not answer /health within {self.config.startup_timeout_s:.0f} s; raise "
                          f"startup_timeout_s; {self._log_excerpt()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is not None:  # None: not started, or stopped and its temporary log removed
            with contextlib.suppress(OSError):
                return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def _log_excerpt(self) -> str:
        """The end of the log, for an error; it names the log only if it stays (a temporary one is removed)."""
        where = "its log" if self._log_is_temporary() else f"its log {self.log_path}"
        return f"{where} ends:\n{self.log_tail()}"

    def _trap_sigterm(self) -> None:
        """Turn SIGTERM of this process into SystemExit so ``__exit__`` (and ``finally``) stop the server."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum, frame):
            raise SystemExit(128 + signum)

        self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def stop(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after ``stop_grace_s``; then remove its
        temporary folder (with the log, if that is there). Idempotent."""
        proc, self.process = self.process, None
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if proc is not None:
            _stop_group(proc, self.config.stop_grace_s)
        if self._run_dir is not None:
            if self._log_is_temporary():
                self.log_path = None
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def _log_is_temporary(self) -> bool:
        return self.log_path is not None and self.log_path.parent == self._run_dir


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group led by ``proc``, then SIGKILL it if it is still alive after ``grace_s``."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(pgid, proc):
            time.sleep(0.2)
        if not _group_alive(pgid, proc):
            break
    log.info("generator: stopped (pid %d, exit code %s)", proc.pid, proc.poll())


def _is_vllm_cpu(python: Path) -> bool:
    """Whether the vLLM environment of ``python`` is the CPU build (the ``vllm-cpu`` distribution); ~0.1 s."""
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; m.version('vllm-cpu')"],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    return probe.returncode == 0


def _group_alive(pgid: int, leader: subprocess.Popen) -> bool:
    leader.poll()  # reap the leader, or it stays in the group as a zombie
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":  # python -m trait.serving.server: serve the embedded model until Ctrl-C
    logging.basicConfig(level=logging.INFO)
    with VllmServer() as server:
        print(f"serving {server.model} at {server.base_url}/v1 (Ctrl-C stops)", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
