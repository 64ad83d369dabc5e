"""Fine-tuning end to end: transformers' `Seq2SeqTrainer` vs `bertgen train`, the same job, each a cold process.

The job is the demo's (`bertgen demo`): the generated sentence-fusion data (3000 train pairs, 200 held-out eval
pairs), a bert2bert warm-started from the shipped all-MiniLM-L6-v2 weights with the same architecture on
both sides (`--architecture bert`, the demo's default: BertModel encoder + BertLMHeadModel decoder, what
transformers builds from a BERT checkpoint; `bert-generation`: the BertGeneration pair), batch 16, AdamW
(lr 2e-4, weight decay 0.01 off LayerNorm and biases, grad-norm clip 1.0), linear warm-up over 10% of the
steps then linear decay to 0, 150 steps, dropout on, and the fine-tuned model saved at the end. Neither side
evaluates during training nor writes intermediate checkpoints:

- transformers (its own interpreter: `--torch-python`, e.g. an environment with the newest transformers):
  `Seq2SeqTrainer` with eval_strategy="no", save_strategy="no", length-grouped sampling (its best setting:
  `group_by_length=True`, in 5.x `train_sampling_strategy="group_by_length"`), `DataCollatorForSeq2Seq`
  padding each batch to its own longest, no dataloader workers; `trainer.save_model()` at the end;
- bertgen_jax: `python -m bertgen_jax.cli train --encoder M --decoder M` with the same settings, no
  --eval-file (no eval at all), --save-every 0, a fresh empty compilation cache (a cold first run); its
  default `--pack-rows auto` packs each batch's 16 pairs into 4 rows on this data (attention within each
  pair; `--pack-rows 0` here times one pair per row).

Each is timed from process start to exit (wall clock: imports, data, compile, training, saving), with that
process's peak RSS (wait4's ru_maxrss of the child; this parent stays small). Then one shared function
scores both final models on the 200 held-out pairs: mean token cross-entropy over all label tokens,
teacher-forced, float32, computed by transformers (in the --torch-python process) on both exported models
(`torch_side.mean_label_loss`). Tokens/s = label tokens trained / wall seconds, label tokens trained =
steps x batch x the mean label length of the training pairs (the same figure for both sides; their
samplers draw different examples). The headline is the speed-up, transformers wall / bertgen_jax wall.

    python benchmarks/finetune_e2e.py                                   # 150 steps, ~10 minutes on 2 CPU cores
    python benchmarks/finetune_e2e.py --torch-python ENV/bin/python     # the newest transformers
    python benchmarks/finetune_e2e.py --steps 5                         # a quick check

GPU run (one command, ~3 minutes on one GPU):

    python benchmarks/finetune_e2e.py --device gpu --dtype bfloat16 --steps 300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from importlib.metadata import version

from bertgen_jax.parity import shipped_minilm_dir

from .common import (BenchError, add_run_arguments, exits_cleanly, jax_env, peak_rss_mib, require_jax_device_in_child,
                     run_json, run_process, torch_command, versions_line, worker_failed)
from .report import emit_table

EVAL_PAIRS = 200  # the demo's eval split
LOSS_TOLERANCE = 0.05


def bertgen_command(args, data: dict, output_dir: str, warmup_steps: int) -> list:
    """`bertgen train` with the job's settings; flags that exist on the CLI today, none that turns an eval
    or a checkpoint on (no --eval-file: no eval; --save-every 0: no intermediate checkpoint)."""
    minilm = shipped_minilm_dir()
    command = [sys.executable, "-m", "bertgen_jax.cli", "train", "--encoder", minilm, "--decoder", minilm,
               "--train-file", data["train"], "--output-dir", output_dir, "--batch-size", str(args.batch_size),
               "--max-steps", str(args.steps), "--learning-rate", str(args.learning_rate), "--weight-decay",
               str(args.weight_decay), "--warmup-steps", str(warmup_steps), "--max-grad-norm", "1.0",
               "--seed", str(args.seed), "--log-every", str(args.log_every), "--save-every", "0", "--no-progress"]
    if args.trainer_sampler == "random":  # both sides draw plain shuffled batches
        command += ["--length-group-batches", "1"]
    command += ["--pack-rows", str(args.pack_rows)]
    if args.architecture == "bert-generation":
        command.append("--bert-generation-pair")
    if args.dtype == "bfloat16":
        command.append("--bf16")
    return command


def transformers_command(args, data: dict, output_dir: str, warmup_steps: int) -> list:
    return torch_command(args.torch_python, "finetune", "--minilm-dir", shipped_minilm_dir(), "--architecture",
                         args.architecture, "--train-file", data["train"], "--output-dir", output_dir,
                         "--batch-size", args.batch_size, "--steps", args.steps, "--learning-rate",
                         args.learning_rate, "--weight-decay", args.weight_decay, "--warmup-steps", warmup_steps,
                         "--log-every", args.log_every, "--seed", args.seed, "--device", args.device,
                         "--dtype", args.dtype, "--sampler", args.trainer_sampler)


def mean_label_tokens(path: str) -> float:
    """Mean label length of the training pairs under `bertgen train`'s tokenization (no leading [CLS])."""
    from bertgen_jax import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shipped_minilm_dir())
    with open(path, encoding="utf-8") as handle:
        targets = [json.loads(line)["target"] for line in handle if line.strip()]
    ids = tokenizer(targets, truncation=True, max_length=129)["input_ids"]
    return sum(min(len(t) - (t[0] == tokenizer.cls_token_id), 128) for t in ids) / len(ids)


def run_ours(args, data: dict, workdir: str, warmup_steps: int, run_name: str = "bertgen") -> dict:
    """One `bertgen train` process. The compilation cache lives in `workdir/xla-cache`: empty for the first
    run (a cold start), filled by it for a second run (`--warm-cache`: what every later run of the same job
    sees, since the cache is on by default)."""
    env = jax_env(args.device, training=True)
    env["BERTGEN_COMPILATION_CACHE"] = os.path.join(workdir, "xla-cache")
    os.makedirs(env["BERTGEN_COMPILATION_CACHE"], exist_ok=True)
    finished = run_process(bertgen_command(args, data, os.path.join(workdir, run_name), warmup_steps), env=env)
    if finished.returncode != 0:
        raise worker_failed("bertgen train", finished)
    model_dir = os.path.join(workdir, run_name, "model")
    if not os.path.isdir(model_dir):
        raise BenchError(f"bertgen train wrote no model in {model_dir}")
    checkpoints = os.path.join(workdir, run_name, "checkpoints")
    written = sorted(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else []
    return dict(wall_s=finished.wall_s, peak_rss_mib=finished.peak_rss_mib, model_dir=model_dir,
                checkpoints=written, log=finished.stdout + finished.stderr)


def markdown(args, rows: dict, losses: dict, eval_info: dict, settings: dict, label_tokens: float,
             parent_mib: float) -> str:
    theirs, ours = rows["transformers"], rows["bertgen_jax"]
    speedup = theirs["wall_s"] / ours["wall_s"]
    gap = abs(losses["bertgen_jax"] - losses["transformers"]) / losses["transformers"]
    close = "within" if gap <= LOSS_TOLERANCE else "NOT within"
    trained = args.steps * args.batch_size * label_tokens
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; bertgen_jax: jax {version('jax')} on "
        f"{args.device}; {versions_line(theirs['info'])}; {args.dtype}.",
        f"Job: the demo's sentence-fusion fine-tuning, {args.architecture} warm start from all-MiniLM-L6-v2 on both "
        f"sides, batch {args.batch_size}, {args.steps} steps, lr {args.learning_rate:g} (linear, "
        f"{rows['warmup_steps']} warm-up steps), weight decay {args.weight_decay:g}, clip 1.0, no eval or "
        f"checkpoint during training, model saved at the end; each side a cold process timed from start to exit. "
        f"Seq2SeqTrainer settings: {json.dumps(settings, sort_keys=True)}.",
        f"Final eval loss: one function (transformers, float32) on both saved models, {eval_info['pairs']} held-out "
        f"pairs ({eval_info['label_tokens']} label tokens). Tokens/s: {trained:,.0f} label tokens trained "
        f"({args.steps} x {args.batch_size} x {label_tokens:.1f} mean label tokens) / wall s.",
        "",
        f"**Speed-up to the same {args.steps} steps: {speedup:.2f}x** (transformers wall / bertgen_jax wall); final "
        f"eval losses {close} {LOSS_TOLERANCE:.0%} of each other ({gap:.1%} apart); peak RSS bertgen_jax / "
        f"transformers {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}.",
        "",
        "| side | ran | wall s | final eval loss | tokens/s | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    sides = [("transformers", theirs), ("bertgen_jax", ours)]
    if "bertgen_jax_warm" in rows:
        sides.append(("bertgen_jax_warm", rows["bertgen_jax_warm"]))
        warm = rows["bertgen_jax_warm"]
        lines.insert(-3, "")
        lines.insert(-3, f"With a warm compilation cache (a second run of the same job): "
                         f"**{theirs['wall_s'] / warm['wall_s']:.2f}x**; peak RSS bertgen_jax / transformers "
                         f"{warm['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}.")
    for name, row in sides:
        loss = losses[name] if name in losses else losses["bertgen_jax"]
        lines.append(f"| {name} | {row['ran']} | {row['wall_s']:.1f} | {loss:.4f} | "
                     f"{trained / row['wall_s']:.0f} | {row['peak_rss_mib']:.0f} |")
    written = ours["checkpoints"]
    lines += ["", f"bertgen train left {'checkpoint(s) ' + ', '.join(written) if written else 'no checkpoint'} in its "
                  f"output directory (besides the model). The parent process that launched both: peak RSS "
                  f"{parent_mib:.0f} MiB, a floor under both figures."]
    return "\n".join(lines) + "\n"


@exits_cleanly
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="the demo's")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="the demo's")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="the demo's; ceil(ratio x steps) warm-up steps")
    parser.add_argument("--train-examples", type=int, default=3000, help="the demo's")
    parser.add_argument("--architecture", choices=("bert", "bert-generation"), default="bert",
                        help="bert: BertModel + BertLMHeadModel (the demo's default); bert-generation: the "
                             "BertGeneration pair")
    parser.add_argument("--log-every", type=int, default=25, help="train-loss logging interval, both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep the data, both runs and their models here (default: a temporary directory)")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--trainer-sampler", choices=("group_by_length", "random"), default="group_by_length",
                        help="the Trainer's sampler. group_by_length (its fastest) hands out each block of 46 "
                             "batches longest first, in order: on this data that is a curriculum (source length "
                             "nearly decides the kind of pair), which changes the final loss, not only the speed; "
                             "random: plain shuffled batches, and bertgen train then runs with --length-group-batches 1 (the same "
                             "kind of batches on both sides, for a like-for-like loss)")
    parser.add_argument("--pack-rows", default="auto", metavar="ROWS|auto",
                        help="passed to bertgen train: its default, auto, packs each batch's pairs into batch size / 4 "
                             "rows where that saves compute (it does on this data); 0: one pair per row")
    parser.add_argument("--warm-cache", action="store_true",
                        help="also time a second bertgen train run with the compilation cache the first one filled")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.steps <= 0 or args.batch_size <= 0:
        parser.error("--steps and --batch-size must be positive")
    require_jax_device_in_child(args.device)  # a one-line answer before minutes of work
    from bertgen_jax.data.fusion import write_fusion_dataset

    warmup_steps = int(math.ceil(args.warmup_ratio * args.steps))
    workdir = args.keep or tempfile.mkdtemp(prefix="finetune-e2e-")
    if args.keep:
        os.makedirs(workdir, exist_ok=True)
        for name in ("data", "transformers", "bertgen", "bertgen-warm", "xla-cache"):
            shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    try:
        data = write_fusion_dataset(os.path.join(workdir, "data"), n_train=args.train_examples, n_eval=EVAL_PAIRS,
                                    n_test=1, seed=args.seed)
        parent_mib = peak_rss_mib()
        print(f"data in {os.path.dirname(data['train'])}; launcher peak RSS {parent_mib:.0f} MiB", flush=True)

        theirs = run_json("transformers' Seq2SeqTrainer", transformers_command(
            args, data, os.path.join(workdir, "transformers"), warmup_steps))
        print(f"transformers {theirs['transformers']} / torch {theirs['torch']}: {theirs['wall_s']:.1f} s wall "
              f"(trainer.train {theirs['train_s']:.1f} s, train loss {theirs['train_loss']:.4f}, "
              f"{theirs['label_tokens']} label tokens in {theirs['padded_label_tokens']} padded), peak RSS "
              f"{theirs['peak_rss_mib']:.0f} MiB", flush=True)
        ours = run_ours(args, data, workdir, warmup_steps)
        print(f"bertgen train: {ours['wall_s']:.1f} s wall, peak RSS {ours['peak_rss_mib']:.0f} MiB"
              + (f"; checkpoints written: {', '.join(ours['checkpoints'])}" if ours["checkpoints"] else ""),
              flush=True)

        warm = None
        if args.warm_cache:
            warm = run_ours(args, data, workdir, warmup_steps, run_name="bertgen-warm")
            print(f"bertgen train, warm compilation cache: {warm['wall_s']:.1f} s wall, peak RSS "
                  f"{warm['peak_rss_mib']:.0f} MiB", flush=True)
        evaluated = run_json("the shared eval loss", torch_command(
            args.torch_python, "eval-loss", "--minilm-dir", shipped_minilm_dir(), "--eval-file", data["eval"], "--models",
            os.path.join(workdir, "transformers", "model"), ours["model_dir"], "--names", "transformers",
            "bertgen_jax", "--device", args.device))
        losses = evaluated["losses"]
        print(f"final eval loss: transformers {losses['transformers']:.4f}, bertgen_jax {losses['bertgen_jax']:.4f}",
              flush=True)
        label_tokens = mean_label_tokens(data["train"])
        rows = {"transformers": dict(theirs, info=theirs,
                                     ran=f"Seq2SeqTrainer, transformers {theirs['transformers']}, "
                                         f"torch {theirs['torch']}"),
                "bertgen_jax": dict(ours, ran="bertgen train" if args.pack_rows == "auto"
                                    else f"bertgen train --pack-rows {args.pack_rows}"),
                "warmup_steps": warmup_steps}
        if warm is not None:  # the same job, so the same model: scored once
            rows["bertgen_jax_warm"] = dict(warm, ran="bertgen train, warm compilation cache")
        emit_table(markdown(args, rows, losses, evaluated, theirs["settings"], label_tokens, parent_mib),
                   args.markdown)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
