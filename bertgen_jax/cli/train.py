"""`bertgen train`: the arguments and the runner live with the trainer (`bertgen_jax/training/cli.py`)."""

from __future__ import annotations

from ..training.cli import DESCRIPTION, add_train_arguments, run_train

NAME = "train"
HELP = "fine-tune an encoder-decoder on source/target text pairs"
__all__ = ["NAME", "HELP", "DESCRIPTION", "add_arguments", "run"]


def add_arguments(parser) -> None:
    add_train_arguments(parser)


def run(args) -> int:
    return run_train(args)
