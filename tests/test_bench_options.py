"""The benchmarks' shared options and process helpers (bertgen_jax/bench/common.py, torch_side.py): parsing,
a clear one-line error where --device gpu finds no GPU, a child's own peak RSS, and Seq2SeqTrainer settings
the installed transformers accepts. No timings here (those live in benchmarks/)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from bertgen_jax.bench import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


def test_run_arguments_defaults_and_choices():
    parser = argparse.ArgumentParser()
    common.add_run_arguments(parser)
    args = parser.parse_args([])
    assert (args.device, args.dtype, args.torch_python) == ("cpu", "float32", sys.executable)
    args = parser.parse_args(["--device", "gpu", "--dtype", "bfloat16", "--torch-python", "/env/bin/python"])
    assert (args.device, args.dtype, args.torch_python) == ("gpu", "bfloat16", "/env/bin/python")
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float16"])
    bare = argparse.ArgumentParser()
    common.add_run_arguments(bare, torch_side=False, dtype=False)
    assert vars(bare.parse_args([])) == {"device": "cpu"}


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "bertgen_jax.cli", "bench", "generate", "--", "--device", "gpu"],
    [sys.executable, os.path.join(ROOT, "benchmarks", "finetune_e2e.py"), "--device", "gpu"],
    [sys.executable, common.TORCH_SIDE, "build", "--device", "gpu"],
])
def test_no_gpu_is_one_line_not_a_traceback(command):
    # CUDA_VISIBLE_DEVICES="": no GPU for JAX or torch, also on a machine that has one
    done = subprocess.run(command, capture_output=True, text=True, env=dict(ENV, CUDA_VISIBLE_DEVICES=""),
                          timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --device gpu") and "finds no" in last, done.stderr


def test_a_missing_torch_python_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "bench", "train", "--", "--sizes", "minilm",
                           "--torch-python", str(tmp_path / "no-python")], capture_output=True, text=True, env=ENV,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: cannot run {tmp_path / 'no-python'}: No such file or directory"


def test_run_process_reports_the_childs_own_peak_rss(tmp_path):
    # 300 MiB touched in the child; this (pytest) parent may be larger, so compare with a small launcher
    launcher = ("import sys; from bertgen_jax.bench.common import run_process; "
                "f = run_process([sys.executable, '-c', 'import numpy as np; a = np.ones(300 * 2**18, np.float32)']); "
                "print(f.returncode, f.peak_rss_mib, f.wall_s)")
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, env=ENV, timeout=120,
                         check=True).stdout.split()
    assert out[0] == "0"
    assert 300 < float(out[1]) < 600
    assert float(out[2]) > 0


def test_worker_failure_names_the_workers_error_line():
    finished = common.run_process([sys.executable, "-c", "import sys; print('error: no such thing', file=sys.stderr);"
                                   " sys.exit(2)"])
    err = common.worker_failed("the worker", finished)
    assert str(err) == "the worker failed (exit status 2): no such thing"


def test_trainer_settings_are_accepted_by_the_installed_transformers(tmp_path):
    # in a subprocess: torch_side.py is a script beside common.py, not a module of this package
    script = f"""
import argparse, sys, torch, transformers
sys.path.insert(0, {os.path.dirname(common.TORCH_SIDE)!r})
import torch_side
args = argparse.Namespace(output_dir={str(tmp_path)!r}, batch_size=16, steps=150, learning_rate=2e-4,
                          weight_decay=0.01, warmup_steps=15, log_every=25, seed=0, dtype="float32",
                          sampler="group_by_length")
parsed = transformers.Seq2SeqTrainingArguments(**torch_side.trainer_arguments(args, torch.device("cpu")))
grouped = getattr(parsed, "group_by_length", None) or getattr(parsed, "train_sampling_strategy", None)
args.sampler = "random"
shuffled = transformers.Seq2SeqTrainingArguments(**torch_side.trainer_arguments(args, torch.device("cpu")))
print(getattr(shuffled, "group_by_length", False) or getattr(shuffled, "train_sampling_strategy", "random"),
      str(parsed.eval_strategy).split(".")[-1].lower(), str(parsed.save_strategy).split(".")[-1].lower(), grouped,
      parsed.per_device_train_batch_size, parsed.max_steps, parsed.warmup_steps, "bertgen_jax" in sys.modules,
      "jax" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["random", "no", "no", "True", "16", "150", "15", "False", "False"], out.stderr


@pytest.mark.parametrize("bandwidth", [40.0, None])
def test_generate_table_rows_match_the_header(bandwidth):
    """Every row of the generate table has the header's columns, with the floor cells filled on CPU
    (a measured bandwidth) and dashes on a GPU (none)."""
    from bertgen_jax.bench import generate

    rows = [dict(size="minilm", scenario="greedy b1", torch_ms=20.0, ours_ms=8.0, ratio=2.5, compile_s=2.0,
                 step_ms=6.0, floor_ms=2.0 if bandwidth else None)]
    info = {"transformers": "5.24.0", "torch": "2.13.0", "threads": 2, "device": "cpu"}
    lines = [line for line in generate.markdown(rows, bandwidth, info, "float32").splitlines() if line.startswith("|")]
    header, separator, row = lines
    assert header.count("|") == separator.count("|") == row.count("|") == 11
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[6] == "6.00"
    assert cells[7:] == (["2.00", "4.00", "3.00"] if bandwidth else ["-", "-", "-"])

