"""Every command that starts servers on one machine listens on loopback only: score (the Spark driver), synth
generate and eval with a local vLLM server, and train with one and two processes (the rendezvous and process group
stores, gloo).

Each test runs the real command in a child process and samples the LISTEN sockets of its process tree every
0.2 s while it runs (psutil, what ``ss -ltnp`` shows); every one must be on 127.0.0.1 or ::1, and at least one must
have been seen, or the sampling saw nothing and proves nothing. A socket that lives less than a sample's interval
can be missed: the servers that matter live as long as the run.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO
from .support.training import ENV, tiny_config, write_config

psutil = pytest.importorskip("psutil")
TRAIT = [sys.executable, "-m", "trait.cli"]
needs_vllm = pytest.mark.skipif(not (REPO / ".venv-vllm/bin/python").exists(),
                                reason="run infra/vllm/setup_vllm_cpu.sh first")


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # the JVM reports ::ffff:127.0.0.1


def tree_listeners(pid: int) -> set[tuple[str, str, int]]:
    """``(process name, address, port)`` of every LISTEN socket of ``pid`` and its descendants."""
    try:
        names = {p.pid: p.name() for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]}
    except psutil.NoSuchProcess:
        return set()
    return {(names[c.pid], c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in names}


def run_sampling(args: list[str], tmp_path: Path, env: dict | None = None,
                 timeout_s: float = 1200) -> tuple[set[tuple[str, str, int]], str]:
    """Run ``trait ARGS`` to its end, sampling its process tree's listeners; it must succeed. Returns them all, and
    what it wrote to stderr."""
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(TRAIT + args, cwd=REPO, env={**ENV, **(env or {})}, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    seen: set[tuple[str, str, int]] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= tree_listeners(proc.pid)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "stderr.txt").read_text()
    assert proc.wait() == 0, f"trait {' '.join(args)} failed:\n{log[-4000:]}"
    return seen, log


def check_loopback_only(seen: set[tuple[str, str, int]], *expected: str) -> None:
    """Every listener is on loopback, and each ``expected`` process name opened at least one."""
    assert [s for s in seen if not is_loopback(s[1])] == [], sorted(seen)
    assert set(expected) <= {name for name, _, _ in seen}, sorted(seen)


def external_gloo_interface() -> dict[str, str]:
    """GLOO_SOCKET_IFNAME naming an interface with a non-loopback IPv4 address, if this machine has one: gloo's
    sockets then listen there, as they do by default where the host name resolves to such an address. A run on one
    machine (training, a local vLLM server) must keep its gloo sockets on loopback all the same."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and not is_loopback(a.address) for a in addresses):
            return {"GLOO_SOCKET_IFNAME": name}
    return {}


def check_vllm_server_seen(seen: set[tuple[str, str, int]], log: str) -> None:
    """The vLLM server the command started (its port is in the command's log) was among the sampled listeners."""
    port = int(re.search(r"starting vLLM for \S+ on 127\.0\.0\.1:(\d+)", log).group(1))
    assert port in {p for _, ip, p in seen if ip == "127.0.0.1"}, (port, sorted(seen))


def test_score_listens_on_loopback_only(small_corpus, classifiers, tmp_path):
    # The driver's RPC and block manager ports (the JVM), py4j and the Python worker daemon.
    seen, _ = run_sampling(["score", "--master", "local[2]", "--input", small_corpus["pool"], "--model", *classifiers,
                            "--output", str(tmp_path / "scored")], tmp_path)
    check_loopback_only(seen, "java")
    assert len({port for name, _, port in seen if name == "java"}) >= 3, sorted(seen)


def train_config(tmp_path: Path, tiny_model: Path, datasets: dict) -> str:
    """Stage 1 of the tiny config, 8 steps: long enough to be sampled, short enough to be cheap."""
    cfg = tiny_config(tmp_path, tiny_model, datasets)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update(micro_batch_size=2, token_budget=8 * 8 * 64, checkpoint_every=4)
    return write_config(tmp_path, cfg)


@pytest.mark.train
@pytest.mark.parametrize("nproc", [1, 2])
def test_train_listens_on_loopback_only(tmp_path, tiny_model, datasets, nproc):
    # One process: its process group's store and gloo. Two: also torchrun's rendezvous store, served by `trait train`.
    seen, _ = run_sampling(["train", "--config", train_config(tmp_path, tiny_model, datasets),
                            "--nproc", str(nproc)], tmp_path, external_gloo_interface())
    check_loopback_only(seen, "python")
    assert len({port for _, _, port in seen}) >= (2 if nproc == 1 else 4), sorted(seen)


@pytest.mark.vllm
@needs_vllm
def test_synth_generate_with_a_local_server_listens_on_loopback_only(tmp_path):
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({  # tests/test_synth_e2e.py's settings: a random model finishes its passages
        "problem_sets": ["gsm8k", "math"], "max_problems_per_task": 8, "limit": 2, "batch_groups": 1,
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024, "seed": 0},
        "max_paragraph_chars": 200, "max_answer_chars": 20,
        "validation": {"check_answers": False, "on_failure": "flag"},
        "server": {"stop_grace_s": 5, "startup_timeout_s": 900}}))
    seen, log = run_sampling(["synth", "generate", "--config", str(config), "--output", str(tmp_path / "passages")],
                             tmp_path, external_gloo_interface())
    check_loopback_only(seen, "python")
    check_vllm_server_seen(seen, log)


@pytest.mark.vllm
@needs_vllm
def test_eval_with_the_vllm_backend_listens_on_loopback_only(tiny_model, tmp_path):
    seen, log = run_sampling(["eval", "--model", str(tiny_model), "--tasks", "qadsm", "--limit", "2",
                              "--backend", "vllm", "--output", str(tmp_path / "eval")], tmp_path,
                             external_gloo_interface())
    check_loopback_only(seen, "python")
    check_vllm_server_seen(seen, log)


def test_the_sampling_sees_a_listener_on_every_interface(tmp_path):
    """The check itself can fail: a child that listens on 0.0.0.0 is seen, and is not loopback."""
    code = "import socket, time; s = socket.create_server(('0.0.0.0', 0)); time.sleep(1.5)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    seen: set = set()
    while proc.poll() is None:
        seen |= tree_listeners(proc.pid)
        time.sleep(0.2)
    assert [ip for _, ip, _ in seen if not is_loopback(ip)] == ["0.0.0.0"], sorted(seen)
