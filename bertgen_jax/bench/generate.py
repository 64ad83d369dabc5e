"""Generation speed: bertgen_jax vs PyTorch transformers `generate`, same weights, one run.

For each model size the transformers side (its own process, `--torch-python` interpreter: default this one)
builds a bert2bert (BertGeneration pair: random weights, or MiniLM's real weights warm-started), saves it and
times transformers' `generate` (PyTorch, eager); then this process loads the saved weights and times this
project's: 64 input tokens, exactly 32 new tokens (min = max), greedy batch 1 and 8, beam search with 4
beams, sampling. Prints ms per generated token (per decoding step for batch 8 / beams), the speed-up ratio,
this project's compile time (first call minus a steady call), its decoding step alone (32 new tokens minus
1, over 31: without the encoder), the memory-bandwidth floor of a step (decoder weight bytes / measured
host copy bandwidth over all cores; CPU only) and the versions each side ran.

    bertgen bench generate --                       # minilm and base
    bertgen bench generate -- --sizes minilm base large --repeats 5 --markdown bench_out/generate.md
    python benchmarks/generate.py --torch-python ENV/bin/python      # transformers from another environment

GPU run (one command, ~2 minutes on one GPU):

    python benchmarks/generate.py --device gpu --dtype bfloat16 --sizes minilm base large --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

from .common import (INPUT_TOKENS, NEW_TOKENS, SIZES, add_run_arguments, exits_cleanly, generation_inputs, jax_dtype,
                     median_time, run_json, torch_command, use_jax_device, versions_line)
from .report import emit_table

def measure_bandwidth_gbs(megabytes: int = 512, repeats: int = 5, threads: int = 0) -> float:
    """Copy bandwidth (bytes read + written per second), the rate a decode step streams weights at: one
    thread per CPU core each copying its share (numpy's copy releases the GIL), as XLA's kernels use them all."""
    from concurrent.futures import ThreadPoolExecutor

    threads = threads or os.cpu_count() or 1
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    shares = list(zip(np.array_split(src, threads), np.array_split(dst, threads)))
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda share: np.copyto(share[1], share[0]), shares))
            times.append(time.perf_counter() - start)
    return 2 * src.nbytes / min(times) / 1e9


def run_size(size: str, repeats: int, bandwidth: float, args) -> tuple[list, dict]:
    import jax

    from bertgen_jax import EncoderDecoderModel
    from bertgen_jax.parity import shipped_minilm_dir

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        theirs = run_json("the transformers side", torch_command(
            args.torch_python, "generate", "--size", size, "--minilm-dir", shipped_minilm_dir(), "--save-to", workdir,
            "--repeats", repeats, "--device", args.device, "--dtype", args.dtype))
        dtype = jax_dtype(args.dtype)
        ours = EncoderDecoderModel.from_pretrained(workdir, dtype=dtype, param_dtype=dtype)
    floor_ms = theirs["decoder_bytes"] / (bandwidth * 1e9) * 1e3 if bandwidth else None
    for name, options, ids in generation_inputs(ours.config.encoder.vocab_size):
        key = jax.random.PRNGKey(0) if options.get("do_sample") else None

        def run_ours(new_tokens=NEW_TOKENS):
            out = ours.generate(ids, np.ones_like(ids), prng_key=key, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, **options)
            seq = np.asarray(out.sequences)  # blocks until done
            assert seq.shape[1] == new_tokens + 1

        start = time.perf_counter()
        run_ours()
        first = time.perf_counter() - start
        ours_s = median_time(run_ours, repeats)
        # One new token: the encoder, the cross-attention cache and one step. The difference to 32 tokens,
        # over 31, is one decoding step: what the floor (decoder weights read once per step) bounds.
        run_ours(1)
        one_s = median_time(lambda: run_ours(1), repeats)
        torch_s = theirs["seconds"][name]
        rows.append(dict(size=size, scenario=name, torch_ms=torch_s / NEW_TOKENS * 1e3,
                         ours_ms=ours_s / NEW_TOKENS * 1e3, ratio=torch_s / ours_s, compile_s=first - ours_s,
                         step_ms=(ours_s - one_s) / (NEW_TOKENS - 1) * 1e3, floor_ms=floor_ms))
        r = rows[-1]
        floor = f" | floor {floor_ms:6.2f} ms/tok" if floor_ms else ""
        print(f"{size:7s} {name:10s} transformers {r['torch_ms']:8.2f} ms/tok | bertgen_jax {r['ours_ms']:8.2f} "
              f"ms/tok (step {r['step_ms']:7.2f} ms) | x{r['ratio']:5.2f} | compile {r['compile_s']:5.1f} s{floor}",
              flush=True)
    return rows, theirs


def machine_line(torch_info: dict) -> str:
    """Machine: arch, CPU cores, JAX device; what each side ran (no full stop)."""
    import jax

    return (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; bertgen_jax on {jax.devices()[0].device_kind} "
            f"(jax {jax.__version__}); {versions_line(torch_info)}")


def markdown(rows, bandwidth: float, torch_info: dict, dtype: str) -> str:
    floor = (f"; measured copy bandwidth {bandwidth:.1f} GB/s ({os.cpu_count()} threads)" if bandwidth else "")
    lines = [
        f"{machine_line(torch_info)}{floor}. "
        f"{INPUT_TOKENS} input tokens, {NEW_TOKENS} new tokens, {dtype}, medians.",
        "",
        "| model | scenario | transformers ms/token | bertgen_jax ms/token | speed-up | compile s | "
        "bertgen_jax step ms | floor ms/step | x floor (ms/token) | x floor (step) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        floor = (f"{r['floor_ms']:.2f} | {r['ours_ms'] / r['floor_ms']:.2f} | {r['step_ms'] / r['floor_ms']:.2f}"
                 if r["floor_ms"] else "- | - | -")
        lines.append(f"| {r['size']} | {r['scenario']} | {r['torch_ms']:.2f} | {r['ours_ms']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['compile_s']:.1f} | {r['step_ms']:.2f} | {floor} |")
    return "\n".join(lines) + "\n"


@exits_cleanly
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["minilm", "base"], choices=["minilm", *SIZES])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", default=None, help="write the table here")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    use_jax_device(args.device)
    # the CPU floor: weight bytes / host copy bandwidth (a GPU's HBM bandwidth is not measured here)
    bandwidth = measure_bandwidth_gbs() if args.device == "cpu" else None
    rows, torch_info = [], None
    for size in args.sizes:
        size_rows, torch_info = run_size(size, args.repeats, bandwidth, args)
        rows.extend(size_rows)
    emit_table(markdown(rows, bandwidth, torch_info, args.dtype), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
