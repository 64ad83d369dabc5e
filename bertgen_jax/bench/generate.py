"""Generation speed: bertgen_jax vs PyTorch transformers `generate`, same weights, one run.

For each model size the same bert2bert (random weights, or MiniLM's real weights warm-started) is run
through transformers 4.56.2 (PyTorch, eager) and through this project: 64 input tokens, exactly 32 new
tokens (min = max), greedy batch 1 and 8, beam search with 4 beams, sampling. Prints ms per generated
token (per decoding step for batch 8 / beams), the speed-up ratio, this project's compile time (first
call minus a steady call), and the memory-bandwidth floor: decoder weight bytes / measured bandwidth.

    bertgen bench generate --                       # minilm and base
    bertgen bench generate -- --sizes minilm base large --repeats 5 --markdown bench_out/generate.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from .report import emit_table

SIZES = {
    # name: (layers, hidden, heads, intermediate, vocab)
    "base": (12, 768, 12, 3072, 30522),
    "large": (24, 1024, 16, 4096, 50358),
}
INPUT_TOKENS = 64
NEW_TOKENS = 32
SCENARIOS = (
    ("greedy b1", dict(batch=1)),
    ("greedy b8", dict(batch=8)),
    ("beam4 b1", dict(batch=1, num_beams=4)),
    ("sample b1", dict(batch=1, do_sample=True, top_k=50)),
)


def measure_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth (bytes read + written per second), the rate a decode step streams weights at."""
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / min(times) / 1e9


def build_torch_model(size: str):
    """A transformers bert2bert (BertGeneration encoder + decoder): MiniLM's real weights warm-started, or random."""
    import torch
    import transformers

    from bertgen_jax.parity import shipped_minilm_dir

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if size == "minilm":
        path = shipped_minilm_dir()
        encoder = transformers.BertGenerationEncoder.from_pretrained(path, bos_token_id=101, eos_token_id=102)
        decoder = transformers.BertGenerationDecoder.from_pretrained(path, add_cross_attention=True, is_decoder=True,
                                                                     bos_token_id=101, eos_token_id=102)
    else:
        layers, hidden, heads, inter, vocab = SIZES[size]
        kw = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=inter, bos_token_id=101, eos_token_id=102)
        encoder = transformers.BertGenerationEncoder(transformers.BertGenerationConfig(**kw))
        decoder = transformers.BertGenerationDecoder(transformers.BertGenerationConfig(
            **kw, is_decoder=True, add_cross_attention=True))
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    model.config.decoder_start_token_id = 101
    model.config.pad_token_id = 0
    return model


def build_models(size: str, workdir: str):
    """`build_torch_model` saved to disk, and the same weights here."""
    from bertgen_jax import EncoderDecoderModel

    model = build_torch_model(size)
    model.save_pretrained(workdir)
    ours = EncoderDecoderModel.from_pretrained(workdir)
    decoder_bytes = sum(p.numel() * p.element_size() for p in model.decoder.parameters())
    return model, ours, decoder_bytes


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_size(size: str, repeats: int, bandwidth: float):
    import jax
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        theirs, ours, decoder_bytes = build_models(size, workdir)
        floor_ms = decoder_bytes / (bandwidth * 1e9) * 1e3
        vocab = ours.config.encoder.vocab_size
        rng = np.random.RandomState(0)
        for name, scenario in SCENARIOS:
            batch = scenario["batch"]
            ids = rng.randint(1000 if vocab > 2000 else 3, vocab, size=(batch, INPUT_TOKENS)).astype(np.int64)
            kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
            if scenario.get("num_beams"):
                kwargs["num_beams"] = scenario["num_beams"]
            if scenario.get("do_sample"):
                kwargs.update(do_sample=True, top_k=scenario["top_k"])
            torch_ids = torch.tensor(ids)

            def run_torch():
                with torch.no_grad():
                    out = theirs.generate(torch_ids, attention_mask=torch.ones_like(torch_ids), **kwargs)
                assert out.shape[1] == NEW_TOKENS + 1

            key = jax.random.PRNGKey(0)

            def run_ours():
                out = ours.generate(ids, np.ones_like(ids), prng_key=key if kwargs.get("do_sample") else None,
                                    **kwargs)
                seq = np.asarray(out.sequences)  # blocks until done
                assert seq.shape[1] == NEW_TOKENS + 1

            start = time.perf_counter()
            run_ours()
            first = time.perf_counter() - start
            ours_s = _median_time(run_ours, repeats)
            for _ in range(3):  # warm-up: torch's first calls here are up to 10x slower than steady state
                run_torch()
            torch_s = _median_time(run_torch, repeats)
            rows.append(dict(size=size, scenario=name, torch_ms=torch_s / NEW_TOKENS * 1e3,
                             ours_ms=ours_s / NEW_TOKENS * 1e3, ratio=torch_s / ours_s, compile_s=first - ours_s,
                             floor_ms=floor_ms))
            r = rows[-1]
            print(f"{size:7s} {name:10s} transformers {r['torch_ms']:8.2f} ms/tok | bertgen_jax {r['ours_ms']:8.2f} "
                  f"ms/tok | x{r['ratio']:5.2f} | compile {r['compile_s']:5.1f} s | floor {floor_ms:6.2f} ms/tok",
                  flush=True)
    return rows


def machine_line() -> str:
    """Machine: arch, CPU cores, device; torch (threads), transformers and jax versions (no full stop)."""
    import jax
    import torch
    import transformers

    return (f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, device {jax.devices()[0].device_kind}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
            f"jax {jax.__version__}")


def markdown(rows, bandwidth: float) -> str:
    lines = [
        f"{machine_line()}; measured copy bandwidth {bandwidth:.1f} GB/s. "
        f"{INPUT_TOKENS} input tokens, {NEW_TOKENS} new tokens, float32, medians.",
        "",
        "| model | scenario | transformers ms/token | bertgen_jax ms/token | speed-up | compile s | floor ms/token | "
        "x floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['scenario']} | {r['torch_ms']:.2f} | {r['ours_ms']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['compile_s']:.1f} | {r['floor_ms']:.2f} | {r['ours_ms'] / r['floor_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["minilm", "base"], choices=["minilm", *SIZES])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--markdown", default=None, help="write the table here")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    bandwidth = measure_bandwidth_gbs()
    rows = []
    for size in args.sizes:
        rows.extend(run_size(size, args.repeats, bandwidth))
    emit_table(markdown(rows, bandwidth), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
