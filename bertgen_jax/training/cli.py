"""`bertgen train`: argument definitions and the command itself.

    bertgen train --model PATH | --encoder X --decoder Y --train-file F [--eval-file F]
                  --output-dir D [--mesh data=N,fsdp=M] [--resume [auto]] [--streaming]
                  [--distributed [--coordinator HOST:PORT --num-processes N --process-id I]] ...

Exit codes: 0 done, 1 bad input / cannot resume / a lost peer process, 130 stopped by SIGINT or SIGTERM
(after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .data import DataError

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Fine-tune an encoder-decoder on source/target pairs (JSONL, CSV or TSV): a converted checkpoint "
    "(--model) or a bert2bert warm-started from two BERT-style checkpoints (--encoder/--decoder). Runs on one "
    "CPU, one GPU or a device mesh (--mesh data=N,fsdp=M), checkpoints every --save-every steps, continues "
    "with --resume, logs to TensorBoard and writes loss_curve.png and the fine-tuned model (transformers "
    "format) into --output-dir. Ctrl-C saves a checkpoint and stops.")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="an EncoderDecoderModel directory or hub id to fine-tune")
    model.add_argument("--encoder", help="warm start: BERT-style checkpoint for the encoder (with --decoder)")
    model.add_argument("--decoder", help="warm start: BERT-style checkpoint for the decoder (with --encoder)")
    model.add_argument("--tokenizer", help="tokenizer directory or id (default: --model, else --encoder)")
    model.add_argument("--tie-encoder-decoder", action="store_true", help="warm start with shared encoder/decoder")
    model.add_argument("--bert-generation-pair", action="store_true",
                       help="warm start the BertGeneration encoder/decoder pair (no token types, plain tied LM head) "
                            "instead of the classes transformers picks from the checkpoints' model_type "
                            "(BERT -> BertModel + BertLMHeadModel, RoBERTa -> RobertaModel + RobertaForCausalLM)")
    model.add_argument("--no-dropout", action="store_true", help="train without dropout")
    model.add_argument("--bf16", action="store_true", help="bfloat16 compute, float32 master params")

    data = parser.add_argument_group("data")
    data.add_argument("--train-file", required=True,
                      help="JSONL, CSV, TSV or Parquet with source and target columns")
    data.add_argument("--streaming", action="store_true",
                      help="read and tokenize the training file lazily (memory flat in the file size; each "
                           "process reads only its own rows of each batch) instead of all of it up front")
    data.add_argument("--pack-rows", type=_pack_rows, default="auto", metavar="ROWS|auto",
                      help="pack each batch's pairs side by side into ROWS rows (at most --batch-size, a multiple "
                           "of the mesh's data x fsdp), each pair attending only to itself: the loss and gradients "
                           "of one pair per row with far less padding, one compiled shape for the run; replaces "
                           "length grouping. 0: one pair per row. auto (default): batch size / 4 rows when that "
                           "plans at least 10%% less compute than one pair per row (never for --streaming)")
    data.add_argument("--eval-file", help="held-out pairs (same format) for eval loss and generated samples")
    data.add_argument("--source-column", default="source")
    data.add_argument("--target-column", default="target")
    data.add_argument("--max-source-length", type=int, default=128)
    data.add_argument("--max-target-length", type=int, default=128)
    data.add_argument("--pad-to-multiple-of", type=int, default=8,
                      help="pad batch lengths to multiples of this (larger: fewer shapes to compile)")
    data.add_argument("--length-group-batches", type=int, default=50, metavar="N",
                      help="sort each pool of N batches by length so that similar lengths share a batch, then "
                           "shuffle the batches (less padding); 1: plain shuffled batches. Grouping changes which "
                           "examples meet in a batch, and so the training, where length tracks the kind of example")

    opt = parser.add_argument_group("optimization")
    opt.add_argument("--output-dir", required=True, help="checkpoints, logs, loss curve and the exported model")
    opt.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch, over all devices")
    opt.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer update")
    opt.add_argument("--epochs", type=int, default=1)
    opt.add_argument("--max-steps", type=int, help="optimizer updates (overrides --epochs)")
    opt.add_argument("--learning-rate", "--lr", type=float, default=5e-5)
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--warmup-steps", type=int)
    opt.add_argument("--warmup-ratio", type=float, default=0.0)
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm clipping (0: off)")
    opt.add_argument("--label-smoothing", type=float, default=0.0)
    opt.add_argument("--labelled-lm-head", action="store_true",
                     help="run the LM head and the loss only on target positions that carry a label (the same "
                          "loss and gradients; pays when targets in a batch differ much in length)")
    opt.add_argument("--separate-update", choices=("auto", "on", "off"), default="auto",
                     help="run the gradients and the optimizer update as two compiled programs (on: compiles "
                          "faster, the two compile at once; off: one program, lower peak memory; auto: two up to "
                          "128M parameters)")
    opt.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument("--mesh", help="device mesh, e.g. data=8 or data=2,fsdp=4 (default: data over all devices)")
    run.add_argument("--distributed", action="store_true",
                     help="several processes (hosts): connect them first. Coordinator, process count and id come "
                          "from the three flags below, else BERTGEN_COORDINATOR_ADDRESS / BERTGEN_NUM_PROCESSES / "
                          "BERTGEN_PROCESS_ID (or the JAX_* names), else SLURM / Open MPI / Kubernetes / Cloud TPU "
                          "auto-detection")
    run.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: process 0's address")
    run.add_argument("--num-processes", type=int, help="with --distributed: how many processes take part")
    run.add_argument("--process-id", type=int, help="with --distributed: this process's id, 0 .. N-1")
    run.add_argument("--resume", nargs="?", const="must", choices=("must", "auto"), default=None,
                     help="continue from the newest intact checkpoint in --output-dir (an error if there is "
                          "none); '--resume auto': resume if there is one, else start from step 0")
    run.add_argument("--log-every", type=int, default=10)
    run.add_argument("--eval-every", type=int, default=0, help="steps between evals (0: at the end only)")
    run.add_argument("--eval-at-start", action="store_true", help="also evaluate before the first step")
    run.add_argument("--save-every", type=int, default=0,
                     help="steps between checkpoints, and one at the end (0: none, except on Ctrl-C / SIGTERM, "
                          "so that the run can be resumed)")
    run.add_argument("--save-final-checkpoint", action="store_true",
                     help="write a checkpoint at the end even with --save-every 0 (the exported model in "
                          "OUTPUT_DIR/model is always written)")
    run.add_argument("--sync-checkpoints", action="store_true",
                     help="wait for each checkpoint to be on disk before training on (default: written in the "
                          "background)")
    run.add_argument("--compilation-cache", default="auto", metavar="DIR|auto|off",
                     help="persistent XLA compilation cache, so a later run with the same shapes skips compiling "
                          "(auto: $BERTGEN_COMPILATION_CACHE, else ~/.cache/bertgen_jax/xla)")
    run.add_argument("--keep-checkpoints", type=int, default=3)
    run.add_argument("--eval-samples", type=int, default=0,
                     help="on eval, generate for this many eval sources and report BLEU / exact match")
    run.add_argument("--num-beams", type=int, default=1)
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _special_ids(tokenizer) -> dict:
    """Start / end / pad ids a warm-started bert2bert (or BertGeneration) model needs."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.cls_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None or tokenizer.pad_token_id is None:
        raise DataError("the tokenizer needs [CLS]/[SEP] (or BOS/EOS) and a pad token to warm-start a model")
    return {"start": start, "end": end, "pad": tokenizer.pad_token_id}


def load_model_and_tokenizer(args):
    from .. import AutoTokenizer, EncoderDecoderModel

    if bool(args.model) == bool(args.encoder or args.decoder):
        raise DataError("pass either --model PATH, or --encoder X and --decoder Y")
    if not args.model and not (args.encoder and args.decoder):
        raise DataError("--encoder and --decoder go together")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model or args.encoder)
    if args.model:
        return EncoderDecoderModel.from_pretrained(args.model), tokenizer
    ids = _special_ids(tokenizer)
    pair = {}
    if getattr(args, "bert_generation_pair", False):
        from .. import BertGenerationDecoder, BertGenerationEncoder

        pair = dict(encoder_model_class=BertGenerationEncoder, decoder_model_class=BertGenerationDecoder)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        args.encoder, args.decoder, decoder_start_token_id=ids["start"], pad_token_id=ids["pad"],
        encoder_bos_token_id=ids["start"], encoder_eos_token_id=ids["end"], encoder_pad_token_id=ids["pad"],
        decoder_bos_token_id=ids["start"], decoder_eos_token_id=ids["end"], decoder_pad_token_id=ids["pad"],
        tie_encoder_decoder=args.tie_encoder_decoder, **pair)
    return model, tokenizer


def _pack_rows(text: str):
    if text == "auto":
        return text
    try:
        rows = int(text)
    except ValueError:
        rows = -1
    if rows < 0:
        raise argparse.ArgumentTypeError(f"expected a number of rows (0: no packing) or 'auto', got {text!r}")
    return rows


def train_config_from_args(args):
    from .trainer import TrainConfig

    return TrainConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size,
        grad_accum=args.grad_accum, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm or None, label_smoothing=args.label_smoothing,
        labelled_lm_head=args.labelled_lm_head, dropout=not args.no_dropout,
        separate_update={"auto": None, "on": True, "off": False}[args.separate_update],
        bf16=args.bf16, seed=args.seed, mesh=args.mesh, log_every=args.log_every, eval_every=args.eval_every,
        save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, eval_at_start=args.eval_at_start,
        save_final_checkpoint=args.save_final_checkpoint, async_checkpoints=not args.sync_checkpoints,
        compilation_cache=args.compilation_cache,
        resume={None: False, "must": True, "auto": "auto"}[args.resume],
        eval_samples=args.eval_samples, max_source_length=args.max_source_length,
        max_target_length=args.max_target_length,
        pad_to_multiple_of=args.pad_to_multiple_of, length_group_batches=args.length_group_batches,
        pack_rows=args.pack_rows, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
        progress=not args.no_progress)


# Settings that may differ between the processes of one run (everything else must match).
PER_PROCESS_SETTINGS = ("coordinator", "num_processes", "process_id", "no_progress", "compilation_cache")


def _settings_to_compare(args) -> dict:
    settings = {k: v for k, v in vars(args).items() if k not in PER_PROCESS_SETTINGS and not callable(v)}
    for key in ("train_file", "eval_file"):  # the same name must also be the same data
        path = settings.get(key)
        settings[key + "_size"] = os.path.getsize(path) if path and os.path.isfile(path) else None
    return settings


def run_train(args) -> int:
    """Run `bertgen train`; returns the exit code (0 done, 1 bad input or a lost peer, 130 stopped by
    SIGINT / SIGTERM after saving a checkpoint)."""
    code = _run_train(args)
    if args.distributed:
        from . import distributed

        code = distributed.finish(code)
    return code


def _run_train(args) -> int:
    from .distributed import DistributedError

    launch_flags = (args.coordinator, args.num_processes, args.process_id)
    try:
        if args.distributed:
            from . import distributed

            distributed.initialize(*launch_flags)
            distributed.check_same_settings(_settings_to_compare(args))
        elif any(value is not None for value in launch_flags):
            raise DistributedError("--coordinator / --num-processes / --process-id need --distributed")
        return _train(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, DistributedError) as err:
        print(f"bertgen train: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        _exit_if_a_peer_was_lost(err)
        raise


def _exit_if_a_peer_was_lost(err: BaseException) -> None:
    """On several processes, a failed collective usually means another process died: name it and leave
    at once (JAX's exit-time shutdown barrier would wait for the dead process, then abort)."""
    from . import distributed

    if not distributed.is_multiprocess():
        return
    try:
        lost = distributed.lost_peers()
    except Exception:
        lost = []
    if lost:
        distributed.report_lost_peers_and_exit(lost, " ".join(str(err).split()))


def _train(args) -> int:
    from .data import load_pairs
    from .streaming import PairSource
    from .trainer import Trainer

    model, tokenizer = load_model_and_tokenizer(args)
    start = model.config.decoder_start_token_id
    data_kwargs = dict(tokenizer=tokenizer, source_column=args.source_column, target_column=args.target_column,
                       max_source_length=args.max_source_length, max_target_length=args.max_target_length,
                       decoder_start_token_id=start, progress=not args.no_progress)
    if args.streaming:
        train_data = PairSource(args.train_file, args.source_column, args.target_column)
    else:
        train_data = load_pairs(args.train_file, **data_kwargs)
    eval_data = load_pairs(args.eval_file, **data_kwargs) if args.eval_file else None
    trainer = Trainer(model, tokenizer, train_data, train_config_from_args(args), eval_data=eval_data)
    result = trainer.train()
    if result.interrupted:
        return 130
    summary = f"done: {result.step} steps"
    if result.train_loss is not None:
        summary += f", train loss {result.train_loss:.4f}"
    if result.eval_loss is not None:
        summary += f", eval loss {result.eval_loss:.4f}"
    for key, value in result.eval_scores.items():
        summary += f", {key} {value:.2f}"
    if result.export_dir:
        summary += f"; model saved to {result.export_dir}"
    print(summary)
    return 0


def main(argv=None) -> int:  # `python -m bertgen_jax.training.cli ...` until `bertgen train` is wired
    parser = add_train_arguments(argparse.ArgumentParser(prog="bertgen train", description=DESCRIPTION))
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
