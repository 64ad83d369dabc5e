"""Serving throughput: `bertgen serve` (an exported model) under 1, 8 and 32 concurrent clients vs
transformers' `pipeline("text2text-generation", batch_size=8)` in PyTorch (5.x, which dropped that task:
the same loop by hand, batches of 8 through `generate`), same weights, one run. The transformers side runs in
its own process (`--torch-python`, default this interpreter).

256 requests of mixed input lengths (8-128 tokens, one text each), exactly 32 new tokens greedy
(min = max new tokens, so every request generates the same amount). The server is a real subprocess
on localhost (`bertgen serve --model EXPORT --warmup`); each client is a thread that posts its next
request as soon as the previous one is answered (a bounded loop over the 256). Prints requests/s,
generated tokens/s, p50/p99 latency, the ratio of tokens/s to transformers', and beside them the
latency of a single in-process `generate` call (the exported model, batch 1) on the same inputs.

    python benchmarks/serve.py                                # minilm (the shipped weights, warm-started)
    python benchmarks/serve.py --sizes minilm base --markdown bench_out/serve.md
    python benchmarks/serve.py --torch-python ENV/bin/python      # transformers from another environment
    python benchmarks/serve.py --workdir bench_out/serve          # keep the export and transformers' answers
    python benchmarks/serve.py --workdir bench_out/serve --server-only --clients 32 \
        --server-env GLIBC_TUNABLES=glibc.malloc.hugetlb=1          # then only the server, e.g. for an A/B

GPU run (one command, ~3 minutes on one GPU; the server's JAX on the GPU, bfloat16 weights on both sides):

    python benchmarks/serve.py --device gpu --dtype bfloat16 --sizes minilm base
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bertgen_jax.bench.common import (add_run_arguments, exits_cleanly, jax_dtype, jax_env, run_json, torch_command,
                                      use_jax_device, versions_line)
from bertgen_jax.bench.report import emit_table

NUM_REQUESTS = 256
NEW_TOKENS = 32
MIN_TOKENS, MAX_TOKENS = 8, 128
CLIENTS = (1, 8, 32)
BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def make_texts(tokenizer, count: int, seed: int = 0) -> list[str]:
    """`count` texts whose token counts ([CLS] and [SEP] included) spread over 8..128."""
    rng = np.random.RandomState(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    words.sort()
    texts = []
    for target in rng.randint(MIN_TOKENS, MAX_TOKENS + 1, size=count):
        chosen = list(rng.choice(words, size=target - 2))
        while len(tokenizer(" ".join(chosen))["input_ids"]) > target:
            chosen.pop()
        texts.append(" ".join(chosen))
    return texts


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(export_dir: str, env: dict, extra_args=()):
    import httpx

    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "bertgen_jax.cli", "serve", "--model", export_dir, "--port",
                                str(port), "--warmup", "--batch-window-ms", "5", "--max-queue", "4096",
                                *extra_args],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not start")


def load(url: str, texts: list[str], clients: int, parameters: dict):
    """Every text once, `clients` at a time; returns (wall seconds, latencies, answers)."""
    import httpx

    latencies, answers = [None] * len(texts), [None] * len(texts)
    next_index = iter(range(len(texts)))
    lock = threading.Lock()

    def client():
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                started = time.perf_counter()
                answer = http.post(url + "/generate", json={"inputs": texts[index], "parameters": parameters})
                latencies[index] = time.perf_counter() - started
                answer.raise_for_status()
                answers[index] = answer.json()[0]["generated_text"]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, answers


def run_size(size: str, clients_list, log, args) -> tuple[list, dict]:
    from bertgen_jax import AutoTokenizer
    from bertgen_jax.parity import shipped_minilm_dir
    from bertgen_jax.serving import load_exported
    from bertgen_jax.serving.export import export_model

    rows = []
    # num_beams=1 explicitly: transformers' text2text pipeline otherwise defaults to beam search (4 beams).
    parameters = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "num_beams": 1}
    with (contextlib.nullcontext(os.path.join(args.workdir, size)) if args.workdir
          else tempfile.TemporaryDirectory()) as workdir:
        os.makedirs(workdir, exist_ok=True)
        # The server loads the programs this process compiled from JAX's persistent cache.
        os.environ.setdefault("BERTGEN_COMPILATION_CACHE", os.path.join(workdir, "xla"))
        from bertgen_jax import enable_persistent_compilation_cache

        enable_persistent_compilation_cache(os.environ["BERTGEN_COMPILATION_CACHE"])
        model_dir, export_dir = os.path.join(workdir, "model"), os.path.join(workdir, "export")
        reuse = os.path.isfile(os.path.join(export_dir, "bertgen_export.json"))
        if not reuse:
            run_json("building the model", torch_command(args.torch_python, "build", "--size", size, "--minilm-dir",
                                                         shipped_minilm_dir(), "--save-to", model_dir))
        tokenizer = AutoTokenizer.from_pretrained(shipped_minilm_dir())
        if not reuse:
            tokenizer.save_pretrained(model_dir)
        texts = make_texts(tokenizer, NUM_REQUESTS)
        lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
        log(f"[{size}] {len(texts)} requests, input tokens {min(lengths)}..{max(lengths)} "
            f"(mean {np.mean(lengths):.0f})")

        started = time.perf_counter()
        if reuse:
            log(f"[{size}] reusing the export in --workdir")
        else:
            export_model(model_dir, export_dir, batch_sizes=BATCH_SIZES, max_input_length=MAX_TOKENS,
                         option_sets=[parameters], platforms=("cuda" if args.device == "gpu" else "cpu",),
                         dtype=jax_dtype(args.dtype))
            log(f"[{size}] exported in {time.perf_counter() - started:.1f} s")

        # transformers' pipeline, batch_size=8 (its best batched setting here), after a warm-up batch.
        texts_file, theirs_file = os.path.join(workdir, "texts.json"), os.path.join(workdir, "transformers.json")
        if args.server_only and os.path.isfile(theirs_file):
            with open(theirs_file, encoding="utf-8") as handle:
                theirs = json.load(handle)
            log(f"[{size}] --server-only: transformers' figures of an earlier run in --workdir")
        else:
            with open(texts_file, "w", encoding="utf-8") as handle:
                json.dump(texts, handle)
            theirs = run_json("the transformers side", torch_command(
                args.torch_python, "serve", "--model-dir", model_dir, "--texts", texts_file, "--parameters",
                json.dumps(parameters), "--device", args.device, "--dtype", args.dtype))
            with open(theirs_file, "w", encoding="utf-8") as handle:
                json.dump(theirs, handle)
        torch_s, torch_answers = theirs["seconds"], theirs["answers"]
        torch_tps = NUM_REQUESTS * NEW_TOKENS / torch_s
        log(f"[{size}] {theirs['how']} ({versions_line(theirs)}): {torch_s:.1f} s, {torch_tps:.0f} tokens/s")
        rows.append((size, theirs["how"], "-", NUM_REQUESTS / torch_s, torch_tps, None, None, 1.0))

        if not args.server_only:
            # A single in-process generate call per input (exported model, batch 1): the latency floor.
            exported = load_exported(export_dir)
            exported.warmup()
            single = []
            for text in texts[:64]:
                started = time.perf_counter()
                exported.generate(text, **parameters)
                single.append(time.perf_counter() - started)
            log(f"[{size}] single generate call: p50 {percentile(single, 50) * 1e3:.0f} ms, "
                f"p99 {percentile(single, 99) * 1e3:.0f} ms")
            rows.append((size, "one generate call in-process (batch 1)", "-", None, None, percentile(single, 50),
                         percentile(single, 99), None))
            del exported

        env = jax_env(args.device)
        env.update(dict(item.split("=", 1) for item in args.server_env))
        started = time.perf_counter()
        process, url = start_server(export_dir, env, args.server_arg)
        log(f"[{size}] server up (all {len(BATCH_SIZES) * 4} programs compiled) in "
            f"{time.perf_counter() - started:.1f} s")
        try:
            mismatches = 0
            for clients in clients_list:
                load(url, texts[:max(8, clients)], clients, parameters)  # warm the connections
                wall, latencies, answers = load(url, texts, clients, parameters)
                mismatches += sum(a != b for a, b in zip(answers, torch_answers))
                tps = NUM_REQUESTS * NEW_TOKENS / wall
                log(f"[{size}] {clients:>2} clients: {wall:.1f} s, {NUM_REQUESTS / wall:.1f} req/s, "
                    f"{tps:.0f} tokens/s, p50 {percentile(latencies, 50) * 1e3:.0f} ms, "
                    f"p99 {percentile(latencies, 99) * 1e3:.0f} ms")
                rows.append((size, "bertgen serve (export)", clients, NUM_REQUESTS / wall, tps,
                             percentile(latencies, 50), percentile(latencies, 99), tps / torch_tps))
            log(f"[{size}] texts differing from transformers' pipeline: {mismatches} of "
                f"{NUM_REQUESTS * len(clients_list)}")
        finally:
            process.terminate()
            process.wait(timeout=600)
    return rows, theirs


def format_table(rows, torch_info: dict, dtype: str) -> str:
    def ms(value):
        return "-" if value is None else f"{value * 1e3:.0f}"

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = [f"Serving, {NUM_REQUESTS} requests of {MIN_TOKENS}-{MAX_TOKENS} input tokens, {NEW_TOKENS} new tokens "
             f"greedy, {dtype}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; bertgen serve on "
             f"{'the GPU' if torch_info['device'] != 'cpu' else 'cpu'}; {versions_line(torch_info)}", "",
             "| model | server | clients | requests/s | tokens/s | p50 ms | p99 ms | tokens/s vs transformers |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for size, server, clients, rps, tps, p50, p99, ratio in rows:
        lines.append(f"| {size} | {server} | {clients} | {num(rps, '.1f')} | {num(tps, '.0f')} | {ms(p50)} | "
                     f"{ms(p99)} | {num(ratio, '.2f') + 'x' if ratio else '-'} |")
    return "\n".join(lines) + "\n"


@exits_cleanly
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["minilm"], choices=("minilm", "base"))
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--workdir", default=None,
                        help="keep the model, export and transformers' answers here and reuse them on the next run "
                             "(default: a temporary directory)")
    parser.add_argument("--server-only", action="store_true",
                        help="measure only the server (transformers' figures from an earlier run in --workdir)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `bertgen serve` (repeatable), e.g. --server-arg=--max-batch-size=16")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="one more environment variable for the server process (repeatable)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.server_only and not args.workdir:
        parser.error("--server-only needs --workdir (where an earlier run left the export and transformers' answers)")
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    clients = [int(c) for c in args.clients.split(",")]
    use_jax_device(args.device)
    rows, torch_info = [], None
    for size in args.sizes:
        size_rows, torch_info = run_size(size, clients, lambda message: print(message, flush=True), args)
        rows += size_rows
    emit_table(format_table(rows, torch_info, args.dtype), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
