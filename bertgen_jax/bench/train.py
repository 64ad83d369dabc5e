"""Training speed: bertgen_jax's train step vs PyTorch transformers (forward + backward + AdamW), one run.

For each model size the same bert2bert (MiniLM's real weights warm-started, or random bert-base) is
saved once, then trained in two fresh subprocesses so that their peak memory does not mix:

- transformers 4.56.2 EncoderDecoderModel in train mode; a step is zero_grad, forward with labels,
  loss.backward(), clip_grad_norm_(1.0), torch.optim.AdamW(lr 5e-5, weight_decay 0).step();
- this project's jitted step as `bertgen train` builds it (`training.step.make_train_step` with the
  Trainer's optimizer and state/batch shardings, on a one-device mesh): clip 1.0 + AdamW(lr 5e-5,
  weight_decay 0), state donated; each step blocks on the loss.

Same batch in both: 8 examples, 128 source / 32 target tokens of random ids, full attention masks,
labels = targets. Dropout on in both (train mode, as `bertgen train` runs by default). Float32.
Both warm up 2 steps, then the median of --steps timed steps; compile s = first JAX step - median.
Peak memory is each worker's peak RSS (getrusage), model loading included.

    bertgen bench train --                          # minilm and base
    bertgen bench train -- --sizes minilm --steps 3
    bertgen bench train -- --sizes minilm base --steps 5 --markdown bench_out/train.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from .report import emit_table
from .generate import SIZES, build_torch_model, machine_line

BATCH, SOURCE_TOKENS, TARGET_TOKENS = 8, 128, 32
LEARNING_RATE = 5e-5
WARMUP = 2


def make_batch(vocab: int):
    rng = np.random.RandomState(0)
    ids = rng.randint(1000, vocab, size=(BATCH, SOURCE_TOKENS))
    labels = rng.randint(1000, vocab, size=(BATCH, TARGET_TOKENS))
    return ids, np.ones_like(ids), labels


def _timed(step, steps: int):
    """(seconds of the first call, median seconds of `steps` calls after WARMUP, last loss)."""
    times, loss = [], None
    for _ in range(WARMUP + steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[WARMUP:]), loss


def torch_worker(model_dir: str, steps: int) -> dict:
    import torch
    import transformers

    warnings.simplefilter("ignore")  # transformers' deprecation notes on the labels-only forward
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = transformers.EncoderDecoderModel.from_pretrained(model_dir).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    ids, mask, labels = (torch.tensor(a) for a in make_batch(model.config.encoder.vocab_size))

    def step():
        optimizer.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    first, median, loss = _timed(step, steps)
    return dict(first_s=first, step_s=median, loss=loss, threads=torch.get_num_threads())


def jax_worker(model_dir: str, steps: int) -> dict:
    import jax

    from bertgen_jax import EncoderDecoderModel
    from bertgen_jax.training import sharding as sh
    from bertgen_jax.training.optim import OptimizerConfig, make_optimizer
    from bertgen_jax.training.step import create_train_state, make_train_step
    from converters.checkpoint_io import release_freed_host_memory

    model = EncoderDecoderModel.from_pretrained(model_dir)
    # What Trainer.__init__ builds, on a one-device mesh.
    mesh = sh.make_mesh(1, 1, jax.devices()[:1])
    optimizer = make_optimizer(OptimizerConfig(learning_rate=LEARNING_RATE, max_grad_norm=1.0), model.params)
    init = lambda params: create_train_state(params, optimizer, 0)  # noqa: E731
    state_sharding = sh.state_shardings(jax.eval_shape(init, model.params), optimizer, mesh)
    batch_sharding = sh.batch_sharding(mesh)
    # As Trainer does: the state takes over model.params' buffers; the heap is trimmed after building
    # the state and after the first (compiling) step.
    state = jax.jit(init, out_shardings=state_sharding, donate_argnums=0)(model.params)
    release_freed_host_memory()
    train_step = make_train_step(model, optimizer, deterministic=False, state_sharding=state_sharding,
                                 batch_sharding=batch_sharding)
    ids, mask, labels = make_batch(model.config.encoder.vocab_size)
    host_batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    host_batch = {k: v[None].astype(np.int32) for k, v in host_batch.items()}  # [accum=1, B, T]

    compiled = False

    def step():
        nonlocal state, compiled
        state, metrics = train_step(state, sh.shard_batch(host_batch, batch_sharding))
        loss = float(metrics["loss"].block_until_ready())
        if not compiled:
            release_freed_host_memory()
            compiled = True
        return loss

    first, median, loss = _timed(step, steps)
    return dict(first_s=first, step_s=median, loss=loss, torch_imported="torch" in sys.modules)


def run_worker(framework: str, model_dir: str, steps: int) -> dict:
    env = dict(os.environ)
    env.pop("BERTGEN_COMPILATION_CACHE", None)  # measure a real compile
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--worker", framework, "--model-dir", model_dir,
                          "--steps", str(steps)], stdout=subprocess.PIPE, env=env, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_size(size: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        build_torch_model(size).save_pretrained(workdir)
        theirs = run_worker("torch", workdir, steps)
        ours = run_worker("jax", workdir, steps)
    tokens = BATCH * (SOURCE_TOKENS + TARGET_TOKENS)
    row = dict(size=size, torch_s=theirs["step_s"], ours_s=ours["step_s"], ratio=theirs["step_s"] / ours["step_s"],
               torch_tok=tokens / theirs["step_s"], ours_tok=tokens / ours["step_s"], torch_mib=theirs["peak_rss_mib"],
               ours_mib=ours["peak_rss_mib"], compile_s=ours["first_s"] - ours["step_s"])
    print(f"{size:7s} transformers {row['torch_s']:6.2f} s/step (loss {theirs['loss']:.3f}, "
          f"{row['torch_mib']:.0f} MiB) | bertgen_jax {row['ours_s']:6.2f} s/step (loss {ours['loss']:.3f}, "
          f"{row['ours_mib']:.0f} MiB) | x{row['ratio']:.2f} | compile {row['compile_s']:.1f} s", flush=True)
    if ours["torch_imported"]:
        print("  note: the bertgen_jax worker imported torch (its RSS includes torch's)", flush=True)
    return row


def markdown(rows) -> str:
    lines = [
        f"{machine_line()}. Batch {BATCH}, {SOURCE_TOKENS} source + {TARGET_TOKENS} target tokens "
        f"({BATCH * (SOURCE_TOKENS + TARGET_TOKENS)} tokens/step), float32, dropout on in both, "
        "AdamW + grad-norm clipping 1.0; median of the timed steps after 2 warm-up steps; "
        "peak RSS of each framework's own process.",
        "",
        "| model | transformers s/step | bertgen_jax s/step | speed-up | transformers tokens/s | bertgen_jax tokens/s "
        "| transformers peak RSS MiB | bertgen_jax peak RSS MiB | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['torch_s']:.2f} | {r['ours_s']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['torch_tok']:.0f} | {r['ours_tok']:.0f} | {r['torch_mib']:.0f} | {r['ours_mib']:.0f} | "
                     f"{r['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["minilm", "base"], choices=["minilm", *SIZES])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = (torch_worker if args.worker == "torch" else jax_worker)(args.model_dir, args.steps)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps(result), flush=True)
        return 0
    import torch

    torch.set_num_threads(os.cpu_count())  # as the torch worker does (shown in the machine line)
    rows = [run_size(size, args.steps) for size in args.sizes]
    emit_table(markdown(rows), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
