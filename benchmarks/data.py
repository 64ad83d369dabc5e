"""Training input pipelines: the streaming one (`--streaming`, training.streaming) vs reading everything up
front (training.data), on generated 100k- and 1M-pair JSONL and Parquet files, against what the MiniLM
train step consumes.

Each measurement runs in a fresh subprocess (peak RSS = that process's VmHWM):

- streaming: build the block index, then take batches of 32 (MiniLM's tokenizer, lengths up to
  128 / 128, 2 Grain reader threads) until --examples examples: examples/s with tokenization;
- in memory: read and tokenize the whole file (`load_pairs`), then take the same number of examples
  from `BatchLoader`: start-up s, examples/s over the whole file.

The MiniLM bert2bert train step (benchmarks/train.py's JAX worker, batch 8, 128 + 32 tokens) is timed
in the same run; the pipeline must deliver more examples/s than it consumes.

    python benchmarks/data.py                               # 100k and 1M pairs, JSONL and Parquet
    python benchmarks/data.py --sizes 100000 --no-step      # quick
    python benchmarks/data.py --markdown bench_out/data.md

No transformers side here (the pipelines feed this project's trainer). --device / --dtype apply to the
timed train step (the pipelines run on the host either way). GPU run (one command, ~3 minutes):

    python benchmarks/data.py --sizes 100000 --device gpu --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bertgen_jax.bench.common import add_run_arguments, exits_cleanly, peak_rss_mib, use_jax_device
from bertgen_jax.bench.report import emit_table

WORDS = ("the a an one two some every this that my your our their old new small big quick slow red green blue "
         "bright dark quiet loud happy tired young clever brave kind cat dog bird fish horse teacher doctor "
         "farmer child student friend neighbour city village river forest garden kitchen market station "
         "school library museum bridge road house window door table book letter song story idea plan "
         "picture meal coffee bread apple train bus ship plane morning evening night winter summer "
         "walked ran jumped looked found brought carried opened closed painted wrote read sang cooked "
         "visited crossed watched followed helped called met left reached built fixed cleaned").split()
BATCH = 32


def write_pairs(directory: str, n: int) -> dict:
    """n (source, target) pairs: 6-40 words each; JSONL and Parquet (row groups of 16384)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(n)
    words = np.asarray(WORDS)
    paths = {"jsonl": os.path.join(directory, f"pairs{n}.jsonl"), "parquet": os.path.join(directory, f"pairs{n}.parquet")}
    writer = None
    with open(paths["jsonl"], "w") as handle:
        for start in range(0, n, 50_000):
            count = min(50_000, n - start)
            lengths = rng.integers(6, 41, size=(count, 2))
            picks = rng.integers(0, len(words), size=(count, 80))
            sources = [" ".join(words[picks[i, :lengths[i, 0]]]) + " ." for i in range(count)]
            targets = [" ".join(words[picks[i, 40:40 + lengths[i, 1]]]) + " ." for i in range(count)]
            handle.writelines(json.dumps({"source": s, "target": t}) + "\n" for s, t in zip(sources, targets))
            table = pa.table({"source": sources, "target": targets})
            if writer is None:
                writer = pq.ParquetWriter(paths["parquet"], table.schema)
            writer.write_table(table, row_group_size=16384)
    writer.close()
    return paths


def streaming_worker(path: str, examples: int) -> dict:
    from bertgen_jax import AutoTokenizer
    from bertgen_jax.parity import shipped_minilm_dir
    from bertgen_jax.training.streaming import PairSource, StreamingLoader

    tokenizer = AutoTokenizer.from_pretrained(shipped_minilm_dir())
    start = time.perf_counter()
    source = PairSource(path)
    index_s = time.perf_counter() - start
    loader = StreamingLoader(source, tokenizer, batch_size=BATCH, pad_token_id=tokenizer.pad_token_id, seed=0,
                             decoder_start_token_id=tokenizer.cls_token_id, num_threads=2, prefetch=8)
    start, taken = time.perf_counter(), 0
    for _, batch in loader.batches():
        batch.arrays(*loader.padded_lengths(*batch.lengths, (128, 128)), tokenizer.pad_token_id)
        taken += sum(s is not None for row in batch.sources for s in row)
        if taken >= examples:
            break
    seconds = time.perf_counter() - start
    return dict(startup_s=index_s, examples=taken, examples_per_s=taken / seconds, records=source.num_records)


def memory_worker(path: str, examples: int) -> dict:
    from bertgen_jax import AutoTokenizer
    from bertgen_jax.parity import shipped_minilm_dir
    from bertgen_jax.training.data import BatchLoader, load_pairs

    tokenizer = AutoTokenizer.from_pretrained(shipped_minilm_dir())
    start = time.perf_counter()
    data = load_pairs(path, tokenizer, decoder_start_token_id=tokenizer.cls_token_id, progress=False)
    loader = BatchLoader(data, batch_size=BATCH, pad_token_id=tokenizer.pad_token_id, seed=0)
    batches = loader.batches()
    next(batches)
    startup = time.perf_counter() - start
    start, taken = time.perf_counter(), BATCH
    for _, batch in batches:
        taken += BATCH
        if taken >= examples:
            break
    batch_s = time.perf_counter() - start
    # over the whole file: everything was tokenized before the first batch
    return dict(startup_s=startup, examples=taken, examples_per_s=len(data) / (startup + batch_s), records=len(data))


def run_worker(kind: str, path: str, examples: int) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind, "--path", path,
                          "--examples", str(examples)], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_step_examples_per_s(steps: int, device: str, dtype: str) -> tuple[float, float]:
    """(s/step, examples/s) of the MiniLM bert2bert train step, benchmarks/train.py's JAX worker."""
    from bertgen_jax.bench.common import STEP_BATCH
    from bertgen_jax.bench.train import build_and_save, run_jax_worker

    with tempfile.TemporaryDirectory() as workdir:
        build_and_save("minilm", workdir, sys.executable)
        result = run_jax_worker(workdir, steps, device, dtype)
    return result["step_s"], STEP_BATCH / result["step_s"]


def markdown(rows, step, device: str, dtype: str) -> str:
    lines = []
    if step is not None:
        lines += [f"MiniLM bert2bert train step (batch 8, 128 + 32 tokens, this machine, {device}, {dtype}): "
                  f"{step[0]:.2f} s/step = "
                  f"{step[1]:.1f} examples/s consumed.", ""]
    lines += ["| file | pairs | MiB | pipeline | start-up s | examples/s | x train step | peak RSS MiB |",
              "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['examples_per_s'] / step[1]:.0f}x" if step is not None else "-"
        lines.append(f"| {r['format']} | {r['pairs']:,} | {r['mib']:.0f} | {r['kind']} | {r['startup_s']:.1f} | "
                     f"{r['examples_per_s']:,.0f} | {ratio} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


@exits_cleanly
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"], choices=["jsonl", "parquet"])
    parser.add_argument("--examples", type=int, default=20_000, help="examples taken from each pipeline")
    parser.add_argument("--no-memory", action="store_true", help="skip the in-memory pipeline")
    parser.add_argument("--no-step", action="store_true", help="do not time the MiniLM train step")
    parser.add_argument("--steps", type=int, default=3, help="timed MiniLM train steps")
    parser.add_argument("--markdown", default=None, help="write the table here")
    add_run_arguments(parser, torch_side=False)
    parser.add_argument("--worker", choices=["streaming", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = (streaming_worker if args.worker == "streaming" else memory_worker)(args.path, args.examples)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result), flush=True)
        return 0
    if not args.no_step:
        use_jax_device(args.device)  # fails early, with one line, where --device gpu finds no GPU
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for n in args.sizes:
            start = time.perf_counter()
            paths = write_pairs(directory, n)
            print(f"wrote {n:,} pairs in {time.perf_counter() - start:.1f} s", flush=True)
            for fmt in args.formats:
                kinds = ["streaming"] + ([] if args.no_memory or fmt == "parquet" else ["memory"])
                for kind in kinds:
                    result = run_worker(kind, paths[fmt], args.examples)
                    row = dict(result, format=fmt, pairs=n, kind="streaming" if kind == "streaming" else "in memory",
                               mib=os.path.getsize(paths[fmt]) / 2**20)
                    rows.append(row)
                    print(f"{fmt:8s} {n:>9,} {row['kind']:10s} start-up {row['startup_s']:6.1f} s  "
                          f"{row['examples_per_s']:8,.0f} ex/s  peak RSS {row['peak_rss_mib']:6.0f} MiB", flush=True)
            for fmt in paths:
                os.remove(paths[fmt])
    step = None if args.no_step else train_step_examples_per_s(args.steps, args.device, args.dtype)
    if step is not None:
        print(f"MiniLM train step: {step[0]:.2f} s/step, {step[1]:.1f} examples/s", flush=True)
    streamed = {(r["format"], r["pairs"]): r["peak_rss_mib"] for r in rows if r["kind"] == "streaming"}
    for fmt in args.formats:
        sizes = sorted(n for f, n in streamed if f == fmt)
        if len(sizes) > 1:
            growth = streamed[(fmt, sizes[-1])] / streamed[(fmt, sizes[0])] - 1
            print(f"streaming {fmt}: peak RSS {sizes[-1]:,} vs {sizes[0]:,} pairs: {growth:+.1%}", flush=True)
    emit_table(markdown(rows, step, args.device, args.dtype), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
