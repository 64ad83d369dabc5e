"""Memory and quality of float32 / bfloat16 / float16 / int8 / int4 weights (bertgen_jax only).

For each model size the bert2bert is saved once per variant (half precision as half-precision
safetensors, int8/int4 in this project's quantized format), then each variant runs in its own
subprocess, so its peak resident memory (the kernel's VmHWM, reset after imports) is its own: load, compile, greedy
generation of 32 new tokens from 64 input tokens (batch 1, best ms per token of the repeats), then quality on
real sentences: logits (decoder fed the sentence itself) compared with float32 (max and mean
|difference|, top-1 agreement) and greedy outputs (32 tokens) compared with float32, plain and with
no_repeat_ngram_size=1 (plain greedy decoding of a warm-started, untrained bert2bert repeats [CLS];
banning repeats makes the outputs non-trivial and sensitive to small logit changes).

    bertgen bench quantization --                                  # MiniLM real weights
    bertgen bench quantization -- --sizes minilm large --markdown bench_out/quantization.md
    bertgen bench quantization -- --sizes large --variants float32 int8 int4 --repeats 2

`large` is the L24/H1024 BertGeneration size (vocab 50358, 16 heads, 4096 intermediate) with random
weights: about 3.3 GB of float32 parameters, slow on a few CPU cores.
`fusion` is a fine-tuned model, by default the one `bertgen demo` writes (runs/fusion-demo/train/model, or
`--fusion-model DIR`): its quality is measured on 20 held-out sentence-fusion inputs with plain greedy
decoding that stops at [SEP], the fair test of whether quantization changes what a trained model says.

    bertgen demo && bertgen bench quantization -- --sizes fusion

No transformers side here, and the dtypes are the variants: --device only (no --dtype). GPU run (one
command, ~2 minutes): `python benchmarks/quantization.py --device gpu --sizes minilm large --repeats 3`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from .common import add_run_arguments, exits_cleanly, use_jax_device
from .report import emit_table

INPUT_TOKENS = 64
NEW_TOKENS = 32
VARIANTS = ("float32", "bfloat16", "float16", "int8", "int4")
LARGE = dict(vocab_size=50358, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Plants create energy through photosynthesis, turning sunlight into sugar.",
    "JAX compiles numerical Python programs for CPUs, GPUs and TPUs.",
    "She sells sea shells by the sea shore.",
    "The museum opens at nine in the morning and closes at six.",
    "Heavy rain caused flooding in several coastal towns last night.",
    "He forgot his umbrella on the train and got soaked walking home.",
    "The committee will announce the winners of the prize next week.",
    "Doctors recommend drinking water regularly throughout the day.",
    "A new bridge across the river will shorten the commute by twenty minutes.",
    "The orchestra played a symphony by Beethoven to a full house.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Our flight was delayed because of a storm over the mountains.",
    "The bakery on the corner sells fresh bread every morning.",
    "Electric cars are becoming cheaper as battery prices fall.",
    "The children built a sandcastle before the tide came in.",
    "Stock markets rose sharply after the central bank cut interest rates.",
    "The library lends laptops to students who need them for class.",
    "A volunteer team cleaned up the beach over the weekend.",
    "The chef recommends the mushroom soup with a slice of sourdough.",
]
PROMPT_TEXT = " ".join(SENTENCES)


# ----------------------------------------------------------------------------- building the variants
def fusion_sources(n: int = len(SENTENCES)) -> list[str]:
    """Held-out inputs of the demo's fusion data (the test split, never trained on)."""
    from bertgen_jax.data.fusion import fusion_splits

    return [pair["source"] for pair in fusion_splits()["test"][:n]]  # the demo's default splits


def build_float32(size: str, fusion_model: str = None):
    from bertgen_jax import EncoderDecoderModel
    from bertgen_jax.config import BertGenerationConfig, EncoderDecoderConfig
    from bertgen_jax.parity import shipped_minilm_dir

    ids = dict(decoder_start_token_id=101, pad_token_id=0)
    if size == "fusion":
        return EncoderDecoderModel.from_pretrained(fusion_model)
    if size == "minilm":
        path = shipped_minilm_dir()
        return EncoderDecoderModel.from_encoder_decoder_pretrained(
            path, path, encoder_bos_token_id=101, encoder_eos_token_id=102, decoder_bos_token_id=101,
            decoder_eos_token_id=102, **ids)
    sub = dict(LARGE, bos_token_id=101, eos_token_id=102, pad_token_id=0)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertGenerationConfig(**sub), BertGenerationConfig(**sub, is_decoder=True, add_cross_attention=True), **ids)
    return EncoderDecoderModel.from_config(config, seed=0)


def save_variants(size: str, workdir: str, variants=VARIANTS, fusion_model: str = None) -> dict:
    """Write one checkpoint directory per variant (float32 always); returns {variant: directory}."""
    import jax.numpy as jnp

    from bertgen_jax import EncoderDecoderModel
    from bertgen_jax import quantize_model

    dirs = {v: os.path.join(workdir, v) for v in ("float32", *variants)}
    model = build_float32(size, fusion_model)
    model.save_pretrained(dirs["float32"])
    for mode in {"int8", "int4"} & set(variants):
        quantize_model(model, mode).save_pretrained(dirs[mode])
    del model
    for name in {"bfloat16", "float16"} & set(variants):
        dtype = getattr(jnp, name)
        EncoderDecoderModel.from_pretrained(dirs["float32"], dtype=dtype, param_dtype=dtype).save_pretrained(dirs[name])
    return dirs


# ----------------------------------------------------------------------------- one variant (subprocess)
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0). A process started by fork keeps its parent's
    getrusage maxrss, which would hide this process's own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    try:
        return _status_mb("VmRSS")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(variant: str, directory: str, output: str, size: str, repeats: int) -> None:
    import jax
    import jax.numpy as jnp

    from bertgen_jax import AutoTokenizer, EncoderDecoderModel
    from bertgen_jax.parity import shipped_minilm_dir
    from bertgen_jax.quantization import tree_nbytes

    jnp.zeros(1).block_until_ready()  # runtime up
    reset_peak_rss()
    baseline = rss_mb()
    if variant in ("bfloat16", "float16"):
        dtype = getattr(jnp, variant)
        model = EncoderDecoderModel.from_pretrained(directory, dtype=dtype, param_dtype=dtype)
    else:
        model = EncoderDecoderModel.from_pretrained(directory)  # int8/int4: restored from the quantized format
    load_peak = peak_rss_mb()
    reset_peak_rss()
    loaded = rss_mb()
    tokenizer = AutoTokenizer.from_pretrained(shipped_minilm_dir())
    prompt = np.asarray(tokenizer(PROMPT_TEXT)["input_ids"][:INPUT_TOKENS])[None, :]
    mask = np.ones_like(prompt)

    def run():
        out = model.generate(prompt, mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        assert np.asarray(out.sequences).shape[1] == NEW_TOKENS + 1

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    steady = min(times)  # the least disturbed run: other processes share the cores
    peak = peak_rss_mb()

    batch = tokenizer(fusion_sources() if size == "fusion" else SENTENCES, padding=True, return_tensors="np")
    ids, smask = batch["input_ids"], batch["attention_mask"]
    logits = model(ids, smask, decoder_input_ids=ids, decoder_attention_mask=smask).logits
    # A trained model stops at [SEP] by itself; the untrained ones are held to NEW_TOKENS.
    min_new = None if size == "fusion" else NEW_TOKENS
    greedy = model.generate(ids, smask, max_new_tokens=NEW_TOKENS, min_new_tokens=min_new).sequences
    no_repeat = model.generate(ids, smask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                               no_repeat_ngram_size=1).sequences
    np.savez(output, logits=np.asarray(logits.astype(jnp.float32)), mask=smask, greedy=np.asarray(greedy),
             no_repeat=np.asarray(no_repeat), param_bytes=tree_nbytes(model.params), baseline_mb=baseline,
             load_peak_mb=load_peak, loaded_mb=loaded, peak_mb=peak, ms_per_token=steady / NEW_TOKENS * 1e3,
             compile_s=first - steady, device=jax.devices()[0].device_kind)


# ----------------------------------------------------------------------------- driver
def run_variant(variant: str, directory: str, workdir: str, size: str, repeats: int) -> dict:
    output = os.path.join(workdir, f"{variant}.npz")
    subprocess.run([sys.executable, "-m", __spec__.name, "--worker", variant, directory, output, size,
                    "--repeats", str(repeats)], check=True)
    with np.load(output) as data:
        return {k: data[k] for k in data.files}


def _same_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row token equality; outputs that stopped at EOS early are padded (with 0, the pad id) first."""
    width = max(a.shape[1], b.shape[1])
    a, b = (np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in (a, b))
    return a == b


def compare(result: dict, reference: dict) -> dict:
    valid = reference["mask"].astype(bool)
    diff = np.abs(result["logits"] - reference["logits"])[valid]
    top1 = (result["logits"].argmax(-1) == reference["logits"].argmax(-1))[valid].mean()
    no_repeat = _same_rows(result["no_repeat"], reference["no_repeat"])
    return dict(drift_max=float(diff.max()), drift_mean=float(diff.mean()), top1=float(top1),
                greedy_same=int(_same_rows(result["greedy"], reference["greedy"]).all(axis=1).sum()),
                no_repeat_same=int(no_repeat.all(axis=1).sum()), no_repeat_tokens=float(no_repeat.mean()))


def run_size(size: str, repeats: int, variants=VARIANTS, fusion_model: str = None) -> list[dict]:
    rows = []
    variants = ["float32"] + [v for v in variants if v != "float32"]  # the reference runs first
    with tempfile.TemporaryDirectory() as workdir:
        dirs = save_variants(size, workdir, variants, fusion_model)
        results = {}
        for variant in variants:
            results[variant] = run_variant(variant, dirs[variant], workdir, size, repeats)
            r = results[variant]
            row = dict(size=size, variant=variant, param_mb=float(r["param_bytes"]) / 2**20,
                       baseline_mb=float(r["baseline_mb"]), load_peak_mb=float(r["load_peak_mb"]),
                       loaded_mb=float(r["loaded_mb"]), peak_mb=float(r["peak_mb"]),
                       ms_per_token=float(r["ms_per_token"]), compile_s=float(r["compile_s"]),
                       device=str(r["device"]), **compare(r, results["float32"]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict], repeats: int) -> str:
    import jax

    n = len(SENTENCES)
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, device {rows[0]['device']}; "
        f"jax {jax.__version__}. "
        f"Greedy generation, batch 1, {INPUT_TOKENS} input tokens, {NEW_TOKENS} new tokens, best of {repeats}. "
        f"Memory of a process that loads the saved variant (its RSS with JAX imported, before loading: "
        f"{rows[0]['baseline_mb']:.0f} MB): peak RSS while loading, RSS once loaded, peak RSS while compiling "
        f"and generating (VmHWM, reset after loading). Quality on {n} real sentences against float32: "
        f"logits with the sentence as decoder input (max / mean |diff|, top-1 agreement), and how many of the "
        f"{n} greedy outputs ({NEW_TOKENS} tokens) are identical, plain and with no_repeat_ngram_size=1. "
        f"`fusion` rows: the model fine-tuned by `bertgen demo`, quality on {n} held-out fusion inputs, plain "
        f"greedy stopping at [SEP] (up to {NEW_TOKENS} tokens).",
        "",
        "| model | weights | param MB | load peak MB | loaded RSS MB | generate peak MB | ms/token | compile s | "
        "logit drift max | drift mean | top-1 agree | greedy identical | no-repeat greedy identical (tokens) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['variant']} | {r['param_mb']:.1f} | {r['load_peak_mb']:.0f} | {r['loaded_mb']:.0f} | "
            f"{r['peak_mb']:.0f} | "
            f"{r['ms_per_token']:.2f} | {r['compile_s']:.1f} | {r['drift_max']:.4f} | {r['drift_mean']:.5f} | "
            f"{100 * r['top1']:.1f}% | {r['greedy_same']}/{n} | {r['no_repeat_same']}/{n} "
            f"({100 * r['no_repeat_tokens']:.0f}%) |")
    return "\n".join(lines) + "\n"


@exits_cleanly
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["minilm"], choices=["minilm", "large", "fusion"])
    parser.add_argument("--fusion-model", default=os.path.join("runs", "fusion-demo", "train", "model"),
                        help="fine-tuned model for --sizes fusion (default: what `bertgen demo` writes)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--markdown", default=None, help="also write the table here")
    add_run_arguments(parser, torch_side=False, dtype=False)
    parser.add_argument("--worker", nargs=4, metavar=("VARIANT", "DIR", "OUT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    use_jax_device(args.device)  # sets JAX_PLATFORMS, which the variant workers inherit
    if args.worker:
        worker(*args.worker, repeats=args.repeats)
        return 0
    rows = []
    for size in args.sizes:
        if size == "fusion" and not os.path.isdir(args.fusion_model):
            parser.error("--sizes fusion needs a fine-tuned model: run `bertgen demo` or pass --fusion-model")
        rows.extend(run_size(size, args.repeats, args.variants, args.fusion_model))
    emit_table(markdown(rows, args.repeats), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
