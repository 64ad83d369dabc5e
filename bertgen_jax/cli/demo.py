"""`bertgen demo`: the arguments; the job itself is `bertgen_jax/demo.py`."""

from __future__ import annotations

import os

from .common import add_model_argument

NAME = "demo"
HELP = "fine-tune the shipped MiniLM bert2bert on sentence fusion and show before/after scores"
DESCRIPTION = ("Fine-tune a bert2bert warm-started from the shipped all-MiniLM-L6-v2 weights on a generated "
               "sentence-fusion data set (no network), and print generated fusions with BLEU / exact-match scores "
               "before and after training.")


def add_arguments(parser) -> None:
    parser.add_argument("--output-dir", default=os.path.join("runs", "fusion-demo"),
                        help="where data, checkpoints, logs and the model go (a previous demo run there is replaced)")
    add_model_argument(parser, help="BERT-style checkpoint to warm-start from (default: shipped MiniLM)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer updates")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--train-examples", type=int, default=3000)
    parser.add_argument("--test-examples", type=int, default=100, help="held-out pairs scored before and after")
    parser.add_argument("--show", type=int, default=5, help="generated examples to print")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--bert-generation-pair", action="store_true",
                        help="warm-start the BertGeneration pair instead of BertModel + BertLMHeadModel (the "
                             "transformers way, the default: it learns faster, see the README)")


def run(args) -> int:
    from ..demo import run_demo

    return run_demo(args)
