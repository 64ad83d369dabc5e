"""Training speed: bertgen_jax's train step vs PyTorch transformers (forward + backward + AdamW), one run.

For each model size the same bert2bert (MiniLM's real weights warm-started, or random bert-base) is
built and saved by the transformers side, then trained in two fresh subprocesses so that their peak memory
does not mix (the transformers one with `--torch-python`, default this interpreter):

- transformers' EncoderDecoderModel in train mode (bfloat16: autocast, float32 master weights); a step is zero_grad, forward with labels,
  loss.backward(), clip_grad_norm_(1.0), torch.optim.AdamW(lr 5e-5, weight_decay 0).step();
- this project's jitted step as `bertgen train` builds it (`training.step.make_train_step` with the
  Trainer's optimizer and state/batch shardings, on a one-device mesh): clip 1.0 + AdamW(lr 5e-5,
  weight_decay 0), state donated, gradients and update as two programs up to 128M parameters (MiniLM)
  and one above (bert-base), as `bertgen train` picks; each step blocks on the loss (bfloat16: `--bf16`'s
  compute dtype, float32 master params).

Same batch in both: 8 examples, 128 source / 32 target tokens of random ids, full attention masks,
labels = targets. Dropout on in both (train mode, as `bertgen train` runs by default).
Both warm up 2 steps, then the median of --steps timed steps; compile s = first JAX step - median.
Peak memory is each worker's peak RSS (VmHWM), model loading included.

    bertgen bench train --                          # minilm and base
    bertgen bench train -- --sizes minilm --steps 3
    bertgen bench train -- --sizes minilm base --steps 5 --markdown bench_out/train.md
    python benchmarks/train.py --torch-python ENV/bin/python     # transformers from another environment

GPU run (one command, ~2 minutes on one GPU):

    python benchmarks/train.py --device gpu --dtype bfloat16 --sizes minilm base --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import numpy as np

from .common import (LEARNING_RATE, SIZES, SOURCE_TOKENS, STEP_BATCH as BATCH, STEP_WARMUP as WARMUP, TARGET_TOKENS,
                     add_run_arguments, exits_cleanly, jax_env, peak_rss_mib, run_json, torch_command,
                     train_step_batch, use_jax_device)
from .generate import machine_line
from .report import emit_table


def _timed(step, steps: int):
    """(seconds of the first call, median seconds of `steps` calls after WARMUP, last loss)."""
    times, loss = [], None
    for _ in range(WARMUP + steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[WARMUP:]), loss


def jax_worker(model_dir: str, steps: int, device: str, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp

    from bertgen_jax import EncoderDecoderModel
    from bertgen_jax.training import sharding as sh
    from bertgen_jax.training.optim import OptimizerConfig, make_optimizer
    from bertgen_jax.training.step import create_train_state, make_train_step
    from converters.checkpoint_io import release_freed_host_memory

    use_jax_device(device)
    model = EncoderDecoderModel.from_pretrained(model_dir)
    # What Trainer.__init__ builds, on a one-device mesh.
    mesh = sh.make_mesh(1, 1, jax.devices()[:1])
    optimizer = make_optimizer(OptimizerConfig(learning_rate=LEARNING_RATE, max_grad_norm=1.0), model.params)
    init = lambda params: create_train_state(params, optimizer, 0)  # noqa: E731
    state_sharding = sh.state_shardings(jax.eval_shape(init, model.params), optimizer, mesh)
    batch_sharding = sh.batch_sharding(mesh)
    train_step = make_train_step(
        model, optimizer, deterministic=False, state_sharding=state_sharding, batch_sharding=batch_sharding,
        compute_dtype=jnp.bfloat16 if dtype == "bfloat16" else None)
    ids, mask, labels = train_step_batch(model.config.encoder.vocab_size)
    host_batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    host_batch = {k: v[None].astype(np.int32) for k, v in host_batch.items()}  # [accum=1, B, T]
    # As Trainer does: the step compiles before the state exists (the compiler's memory does not come
    # on top of it), the state takes over model.params' buffers, and the heap is trimmed after each.
    abstract_state = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                            jax.eval_shape(init, model.params), state_sharding)
    started = time.perf_counter()
    train_step.compile_ahead(abstract_state, sh.shard_batch(host_batch, batch_sharding))
    compile_s = time.perf_counter() - started
    release_freed_host_memory()
    state = jax.jit(init, out_shardings=state_sharding, donate_argnums=0)(model.params)
    release_freed_host_memory()

    def step():
        nonlocal state
        state, metrics = train_step(state, sh.shard_batch(host_batch, batch_sharding))
        return float(metrics["loss"].block_until_ready())

    first, median, loss = _timed(step, steps)
    return dict(first_s=compile_s + first, step_s=median, loss=loss, torch_imported="torch" in sys.modules)


def run_jax_worker(model_dir: str, steps: int, device: str = "cpu", dtype: str = "float32") -> dict:
    """This project's step in a fresh process (also used by benchmarks/data.py)."""
    env = jax_env(device, training=True)
    env.pop("BERTGEN_COMPILATION_CACHE", None)  # measure a real compile
    return run_json("the bertgen_jax train step", [sys.executable, "-m", __spec__.name, "--worker", "--model-dir",
                                                   model_dir, "--steps", str(steps), "--device", device,
                                                   "--dtype", dtype], env=env)


def build_and_save(size: str, workdir: str, torch_python: str) -> None:
    """The transformers side builds the bert2bert and saves it (float32); nothing timed."""
    from bertgen_jax.parity import shipped_minilm_dir

    run_json("building the model", torch_command(torch_python, "build", "--size", size, "--minilm-dir",
                                                 shipped_minilm_dir(), "--save-to", workdir))


def run_size(size: str, args) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as workdir:
        build_and_save(size, workdir, args.torch_python)
        theirs = run_json("the transformers train step", torch_command(
            args.torch_python, "train-step", "--model-dir", workdir, "--steps", args.steps, "--device", args.device,
            "--dtype", args.dtype))
        ours = run_jax_worker(workdir, args.steps, args.device, args.dtype)
    tokens = BATCH * (SOURCE_TOKENS + TARGET_TOKENS)
    row = dict(size=size, torch_s=theirs["step_s"], ours_s=ours["step_s"], ratio=theirs["step_s"] / ours["step_s"],
               torch_tok=tokens / theirs["step_s"], ours_tok=tokens / ours["step_s"], torch_mib=theirs["peak_rss_mib"],
               ours_mib=ours["peak_rss_mib"], compile_s=ours["first_s"] - ours["step_s"])
    print(f"{size:7s} transformers {row['torch_s']:6.2f} s/step (loss {theirs['loss']:.3f}, "
          f"{row['torch_mib']:.0f} MiB) | bertgen_jax {row['ours_s']:6.2f} s/step (loss {ours['loss']:.3f}, "
          f"{row['ours_mib']:.0f} MiB) | x{row['ratio']:.2f} | compile {row['compile_s']:.1f} s", flush=True)
    if ours["torch_imported"]:
        print("  note: the bertgen_jax worker imported torch (its RSS includes torch's)", flush=True)
    return row, theirs


def markdown(rows, torch_info: dict, dtype: str) -> str:
    lines = [
        f"{machine_line(torch_info)}. Batch {BATCH}, {SOURCE_TOKENS} source + {TARGET_TOKENS} target tokens "
        f"({BATCH * (SOURCE_TOKENS + TARGET_TOKENS)} tokens/step), {dtype}, dropout on in both, "
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


@exits_cleanly
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["minilm", "base"], choices=["minilm", *SIZES])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    parser.add_argument("--markdown", default=None, help="write the table here")
    add_run_arguments(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = jax_worker(args.model_dir, args.steps, args.device, args.dtype)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result), flush=True)
        return 0
    use_jax_device(args.device)  # fails early, with one line, where --device gpu finds no GPU
    rows, torch_info = [], None
    for size in args.sizes:
        row, torch_info = run_size(size, args)
        rows.append(row)
    emit_table(markdown(rows, torch_info, args.dtype), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
