"""`bertgen serve` as a real subprocess on a free localhost port, driven by a real HTTP client: answers
equal the pipeline's, bad requests get 4xx naming the field, concurrent requests share generate calls,
a full queue answers 503 with Retry-After, SIGTERM finishes every accepted request before exiting."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from bertgen_jax import pipeline
from bertgen_jax.serving.batcher import Batcher, QueueFull

from conftest import wordpiece_bert2bert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # subprocesses import this checkout
ENV = dict(os.environ,
           PYTHONPATH=os.pathsep.join([ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
TEXTS = ["The cat sat on the mat.", "JAX compiles the loop once.", "Short one.", "Dogs bark at night.",
         "A fourth, longer input sentence.", "Five.", "Trains run late on Sundays.", "Bread rises slowly.",
         "The river froze.", "Music fills the hall.", "Ten words are not many.", "Rain again."]
GREEDY = {"max_new_tokens": 8, "num_beams": 1}
BEAM = {"max_new_tokens": 8, "num_beams": 2, "num_return_sequences": 2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_dir):
    """A tiny bert2bert over MiniLM's real WordPiece vocab, with its tokenizer files beside it."""
    return wordpiece_bert2bert(str(tmp_path_factory.mktemp("b2b")), minilm_dir, seed=130)[0]


@pytest.fixture(scope="module")
def pipe(model_dir):
    return pipeline("text2text-generation", model=model_dir)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, model: str, *flags: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bertgen_jax.cli", "serve", "--model", model, "--port", str(self.port), *flags],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.25)
        self.stop()
        raise AssertionError("the server did not answer /health within 120 s")

    def post(self, body, **kwargs):
        kwargs.setdefault("timeout", 120)
        if isinstance(body, (bytes, str)):
            return httpx.post(self.url + "/generate", content=body, **kwargs)
        return httpx.post(self.url + "/generate", json=body, **kwargs)

    def metrics(self) -> dict:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)}

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def export_server(model_dir, tmp_path_factory):
    from bertgen_jax.serving.export import export_model

    out = str(tmp_path_factory.mktemp("exports") / "tiny")
    export_model(model_dir, out, batch_sizes=[1, 2, 4, 8], max_input_length=16, option_sets=[GREEDY, BEAM])
    server = Server(out, "--batch-window-ms", "150", "--max-queue", "64")
    yield server
    server.stop()


@pytest.mark.slow
def test_answers_equal_the_pipeline(export_server, pipe):
    assert export_server.post({"inputs": TEXTS[0], "parameters": GREEDY}).json() == pipe(TEXTS[0], **GREEDY)
    answer = export_server.post({"inputs": TEXTS[:3], "parameters": GREEDY})
    assert answer.status_code == 200 and answer.json() == pipe(TEXTS[:3], **GREEDY)
    answer = export_server.post({"inputs": TEXTS[:2], "parameters": BEAM}).json()
    assert answer == pipe(TEXTS[:2], **BEAM) and all(len(row) == 2 for row in answer)
    health = httpx.get(export_server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["engine"] == "export"


@pytest.mark.slow
def test_bad_requests_get_4xx_naming_the_field(export_server):
    long_text = " ".join(["word"] * 20)
    cases = [
        (b"{not json", 400, "body"),
        ([1, 2], 422, "body"),
        ({"parameters": GREEDY}, 422, "inputs"),
        ({"inputs": []}, 422, "inputs"),
        ({"inputs": "hi", "extra": 1}, 422, "extra"),
        ({"inputs": "hi", "parameters": {"beams": 2}}, 422, "parameters.beams"),
        ({"inputs": "hi", "parameters": {"num_beams": "two"}}, 422, "parameters.num_beams"),
        ({"inputs": "hi", "parameters": {"max_new_tokens": -1}}, 422, "parameters.max_new_tokens"),
        ({"inputs": "hi", "parameters": {"max_new_tokens": 9}}, 422, "parameters.max_new_tokens"),
        ({"inputs": "hi", "parameters": {**GREEDY, "seed": "x"}}, 422, "parameters.seed"),
        ({"inputs": long_text, "parameters": GREEDY}, 413, "inputs"),
        ({"inputs": ["ok", long_text], "parameters": GREEDY}, 413, "inputs[1]"),
    ]
    for body, status, field in cases:
        answer = export_server.post(body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["field"] == field and answer.json()["error"], (body, answer.text)
    metrics = export_server.metrics()
    assert metrics['bertgen_requests_total{code="422"}'] >= 9 and metrics['bertgen_requests_total{code="413"}'] >= 2


@pytest.mark.slow
def test_concurrent_requests_share_generate_calls(export_server, pipe):
    expected = pipe(TEXTS, **GREEDY)
    before = export_server.metrics()
    answers: dict = {}

    def send(index, body):
        answers[index] = export_server.post(body)

    threads = [threading.Thread(target=send, args=(i, {"inputs": text, "parameters": GREEDY}))
               for i, text in enumerate(TEXTS)]
    threads.append(threading.Thread(target=send, args=("bad", {"inputs": "x", "parameters": {"num_beams": 0}})))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers["bad"].status_code == 422  # a bad request among them fails alone
    for index, text in enumerate(TEXTS):
        assert answers[index].status_code == 200 and answers[index].json() == [expected[index]], index
    after = export_server.metrics()
    calls = after["bertgen_batch_size_count"] - before["bertgen_batch_size_count"]
    rows = after["bertgen_batch_size_sum"] - before["bertgen_batch_size_sum"]
    assert rows == len(TEXTS) and calls < len(TEXTS)  # batch sizes > 1
    singles = after['bertgen_batch_size_bucket{le="1.0"}'] - before['bertgen_batch_size_bucket{le="1.0"}']
    assert singles < calls
    assert after["bertgen_generated_tokens_total"] > before["bertgen_generated_tokens_total"]
    assert after["bertgen_request_latency_seconds_count"] - before["bertgen_request_latency_seconds_count"] == 12


@pytest.mark.slow
def test_full_queue_503_and_sigterm_drains_accepted_requests(model_dir, pipe):
    """A checkpoint directory (model.generate): two requests wait out a long window, a third finds the
    queue full; SIGTERM then still answers both waiting requests before the process exits."""
    server = Server(model_dir, "--batch-window-ms", "3000", "--max-queue", "2", "--max-batch-size", "8")
    try:
        answers: dict = {}

        def send(index):
            answers[index] = server.post({"inputs": TEXTS[index], "parameters": GREEDY})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while server.metrics()["bertgen_queue_depth"] < 2:
            assert time.monotonic() < deadline, "the two requests were not queued"
            time.sleep(0.05)
        busy = server.post({"inputs": TEXTS[2], "parameters": GREEDY})
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1" and "busy" in busy.json()["error"]
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=120)
        assert server.process.wait(timeout=60) == 0
        expected = pipe(TEXTS[:2], **GREEDY)
        assert [answers[i].status_code for i in range(2)] == [200, 200]
        assert [answers[i].json() for i in range(2)] == [[expected[0]], [expected[1]]]
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/health", timeout=5)
    finally:
        server.stop()


def test_batcher_runs_a_failing_request_alone():
    """When a shared generate call fails, each request runs alone: only the bad one gets the error."""
    calls = []

    def run(key, payload, rows):
        calls.append(list(rows))
        if "bad" in rows:
            raise ValueError("bad row")
        return [row.upper() for row in rows]

    async def scenario():
        batcher = Batcher(run, max_batch=8, window_s=0.05, max_queue=4)
        batcher.start()
        jobs = [batcher.submit("k", None, rows) for rows in (["a", "b"], ["bad"], ["c"])]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        with pytest.raises(QueueFull):
            await asyncio.gather(batcher.submit("k", None, ["x"] * 3), batcher.submit("k", None, ["y"] * 2))
        await batcher.drain_and_stop()
        return results

    results = asyncio.run(scenario())
    assert results[0] == ["A", "B"] and results[2] == ["C"]
    assert isinstance(results[1], ValueError)
    assert calls[:4] == [["a", "b", "bad", "c"], ["a", "b"], ["bad"], ["c"]]


def _batches_of(arrivals_s, *, window_s, max_wait_s, max_batch=32, run_s=0.0):
    """Submit one row at each offset of `arrivals_s` (seconds from the start); returns the rows of each
    generate call, in order. `run_s`: how long each call takes."""
    calls = []

    def run(key, payload, rows):
        calls.append(list(rows))
        time.sleep(run_s)
        return rows

    async def scenario():
        batcher = Batcher(run, max_batch=max_batch, window_s=window_s, max_queue=64, max_wait_s=max_wait_s)
        batcher.start()
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(index, offset):
            await asyncio.sleep(max(0.0, start + offset - loop.time()))
            return await batcher.submit("k", None, [index])

        results = await asyncio.gather(*(one(i, t) for i, t in enumerate(arrivals_s)))
        await batcher.drain_and_stop()
        assert results == [[i] for i in range(len(arrivals_s))]

    asyncio.run(scenario())
    return calls


def test_batch_stays_open_while_requests_keep_arriving_up_to_the_max_wait():
    """Arrivals 60 ms apart with a 150 ms window: one call, though the last comes 240 ms after the
    first (the window counts from the latest arrival); a 300 ms max wait then cuts a longer stream."""
    assert _batches_of([0.0, 0.06, 0.12, 0.18, 0.24], window_s=0.15, max_wait_s=1.0) == [[0, 1, 2, 3, 4]]
    calls = _batches_of([0.06 * i for i in range(10)], window_s=0.15, max_wait_s=0.3)
    assert len(calls) >= 2 and calls[0][0] == 0 and len(calls[0]) < 10
    assert sorted(row for call in calls for row in call) == list(range(10))
    # Without a max wait the window is fixed from the first arrival, as before.
    assert _batches_of([0.0, 0.1, 0.2], window_s=0.15, max_wait_s=None)[0] == [0, 1]
    # A lone request leaves after one window.
    assert _batches_of([0.0], window_s=0.05, max_wait_s=1.0) == [[0]]
    with pytest.raises(ValueError):
        Batcher(lambda k, p, r: r, max_batch=8, window_s=0.01, max_queue=4, max_wait_s=-1)


def test_request_that_waited_through_a_call_joins_the_requests_arriving_after_it():
    """Row 1 arrives while the call of row 0 runs (0.1 to 0.5 s); rows 2, 3 arrive 50 ms after that call
    ends. Row 1 must not leave alone the moment the call ends: its window starts then, and rows 2, 3 join."""
    calls = _batches_of([0.0, 0.2, 0.55, 0.56], window_s=0.1, max_wait_s=1.0, max_batch=3, run_s=0.4)
    assert calls == [[0], [1, 2, 3]]


@pytest.mark.parametrize("flag", ["--batch-window-ms", "--batch-max-wait-ms"])
def test_a_negative_batching_flag_is_refused_before_the_model_loads(tmp_path, flag):
    # The directory holds no model: the flag must be what is refused, before any loading or compiling.
    done = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "serve", "--model", str(tmp_path), flag, "-1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "bertgen serve: error: --batch-window-ms and --batch-max-wait-ms must be non-negative")
