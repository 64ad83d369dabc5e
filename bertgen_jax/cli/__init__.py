"""`bertgen` command line: one module per subcommand, registered in `COMMANDS`.

A subcommand module has `NAME`, `HELP`, `DESCRIPTION`, `add_arguments(parser)` and `run(args) -> int`; adding
one is a new module here and one line in `COMMANDS`. Arguments several subcommands share (dtype, model
source) are in `common.py`. Errors are one line on stderr and a non-zero exit code (`main` is the one
handler); `BERTGEN_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

# Imported when first needed, so that `python -m bertgen_jax.cli` can re-execute itself (bertgen_jax.launch)
# before JAX is loaded.
COMMAND_MODULES = ("convert", "parity", "generate", "train", "bench", "demo", "export", "serve")

__all__ = ["COMMANDS", "build_parser", "main", "model_class_for"]


def _commands() -> tuple:
    return tuple(importlib.import_module(f".{module}", __name__) for module in COMMAND_MODULES)


def __getattr__(name: str):
    if name == "COMMANDS":
        return _commands()
    if name == "model_class_for":
        from .common import model_class_for

        return model_class_for
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertgen",
        description="BertGeneration (bert2bert, roberta2roberta) in JAX/Flax: convert checkpoints, check parity "
                    "with PyTorch transformers, generate text, fine-tune, benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _commands():
        command_parser = sub.add_parser(command.NAME, help=command.HELP, description=command.DESCRIPTION)
        command.add_arguments(command_parser)
        command_parser.set_defaults(func=command.run)
    return parser


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
