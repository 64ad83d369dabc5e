"""`bertgen bench`: the packaged side-by-side benchmarks (this project vs PyTorch transformers)."""

from __future__ import annotations

from ..bench import finetune_e2e, generate, quantization, train

NAME = "bench"
HELP = "benchmark against PyTorch transformers"
DESCRIPTION = ("Run a benchmark (generate, train, finetune_e2e, quantization) against PyTorch transformers in the same run; "
               "arguments after -- go to the benchmark (`bertgen bench generate -- --help`).")
BENCHMARKS = {"generate": generate.main, "train": train.main, "finetune_e2e": finetune_e2e.main,
              "quantization": quantization.main}


def add_arguments(parser) -> None:
    parser.add_argument("which", choices=tuple(BENCHMARKS), help="which benchmark")
    parser.add_argument("script_args", nargs="*", help="arguments passed to the benchmark (after --)")


def run(args) -> int:
    return BENCHMARKS[args.which](list(args.script_args))
