"""`bertgen convert`: any supported checkpoint -> Flax params or transformers' layout."""

from __future__ import annotations

import os

from .common import MODEL_KINDS, model_class_for

NAME = "convert"
HELP = "convert a checkpoint: transformers (PyTorch) <-> Flax"
DESCRIPTION = ("Read any supported checkpoint (transformers safetensors / sharded / pytorch_model.bin, BertGeneration, "
               "EncoderDecoder, BERT, RoBERTa layouts, or this project's flax_model.msgpack) and write it as Flax "
               "params (--to flax: config.json + flax_model.msgpack) or in transformers' layout (--to pytorch: "
               "config.json + model.safetensors, loadable by transformers).")


def add_arguments(parser) -> None:
    parser.add_argument("source", help="checkpoint directory or hub repo id")
    parser.add_argument("destination", help="output directory")
    parser.add_argument("--to", choices=("flax", "pytorch"), default="flax")
    parser.add_argument("--model-class", choices=MODEL_KINDS, default="auto")
    parser.add_argument("--max-shard-size", default=None, help="shard safetensors output, e.g. 2GB")


def run(args) -> int:
    from ..flax_format import save_flax_params

    cls = model_class_for(args.source, args.model_class)
    model = cls.from_pretrained(args.source)
    if getattr(model, "quantization", None) is not None:  # int8/int4 checkpoint: write the dequantized weights
        from ..models import dequantize_model

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
