"""`bertgen bench`: run the side-by-side benchmarks in benchmarks/ (this project vs PyTorch transformers)."""

from __future__ import annotations

import os
import runpy
import sys

NAME = "bench"
HELP = "benchmark against PyTorch transformers"
DESCRIPTION = ("Run a benchmark script from the project's benchmarks/ folder (generate, train, quantization) "
               "against PyTorch transformers in the same process; extra arguments go to the script.")
SCRIPTS = ("generate", "train", "quantization")


def add_arguments(parser) -> None:
    parser.add_argument("which", choices=SCRIPTS, help="which benchmark")
    parser.add_argument("script_args", nargs="*", help="arguments passed to the benchmark script (after --)")


def run(args) -> int:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "benchmarks", f"{args.which}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark script {path} is not there (benchmarks/ ships with the source checkout)")
    sys.argv = [path] + list(args.script_args)
    sys.path.insert(0, os.path.dirname(path))  # as `python benchmarks/X.py` would: shared helpers import
    runpy.run_path(path, run_name="__main__")
    return 0
