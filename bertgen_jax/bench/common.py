"""What every benchmark shares: the --device / --dtype / --torch-python options, running a side in its own
process (wall clock and peak RSS of that process), and clear one-line errors instead of tracebacks.

Also the workloads both sides must see identically (generation inputs, the train-step batch). Imports only the
standard library and numpy: the transformers side (`torch_side.py`, run by file path with another interpreter
that may have neither JAX nor this package installed) loads this file too.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np

DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "bfloat16")
TORCH_SIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_side.py")

SIZES = {
    # random-weight bert2bert sizes (besides "minilm", the shipped real weights): (layers, hidden, heads,
    # intermediate, vocab)
    "base": (12, 768, 12, 3072, 30522),
    "large": (24, 1024, 16, 4096, 50358),
}
# generation: 64 input tokens, exactly 32 new ones (min = max)
INPUT_TOKENS, NEW_TOKENS = 64, 32
GENERATION_SCENARIOS = (
    ("greedy b1", dict(batch=1)),
    ("greedy b8", dict(batch=8)),
    ("beam4 b1", dict(batch=1, num_beams=4)),
    ("sample b1", dict(batch=1, do_sample=True, top_k=50)),
)
# one training step: batch 8, 128 source + 32 target tokens of random ids, AdamW(lr 5e-5), 2 warm-up steps
STEP_BATCH, SOURCE_TOKENS, TARGET_TOKENS = 8, 128, 32
LEARNING_RATE = 5e-5
STEP_WARMUP = 2


def generation_inputs(vocab: int):
    """(name, generate options, input ids [batch, 64]) per scenario, the same ids on both sides."""
    rng = np.random.RandomState(0)
    for name, scenario in GENERATION_SCENARIOS:
        ids = rng.randint(1000 if vocab > 2000 else 3, vocab, size=(scenario["batch"], INPUT_TOKENS)).astype(np.int64)
        yield name, {k: v for k, v in scenario.items() if k != "batch"}, ids


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_batch(vocab: int):
    """(input_ids, attention_mask, labels) of the timed training step."""
    rng = np.random.RandomState(0)
    ids = rng.randint(1000, vocab, size=(STEP_BATCH, SOURCE_TOKENS))
    labels = rng.randint(1000, vocab, size=(STEP_BATCH, TARGET_TOKENS))
    return ids, np.ones_like(ids), labels


class BenchError(RuntimeError):
    """A benchmark cannot run as asked; `main` prints the one-line message instead of a traceback."""


def add_run_arguments(parser, *, torch_side: bool = True, dtype: bool = True) -> None:
    """--device, --dtype and (where transformers runs) --torch-python."""
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="gpu: JAX on CUDA and torch on cuda (an error if either sees no GPU)")
    if dtype:
        parser.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype, the same on both sides")
    if torch_side:
        parser.add_argument("--torch-python", default=sys.executable, metavar="PATH",
                            help="interpreter of the transformers side (its own process), e.g. an environment with "
                                 "the newest transformers (default: this one)")


def exits_cleanly(main):
    """Wrap a benchmark's `main`: a BenchError becomes `error: ...` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except BenchError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 2

    return wrapper


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries the parent's peak over
    fork + exec into the child's, VmHWM starts afresh with the new program."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def jax_env(device: str, base: Optional[dict] = None, *, training: bool = False) -> dict:
    """Environment for a process running JAX on `device` (JAX_PLATFORMS pins the backend), with the
    huge-page malloc tunable that the `bertgen` programs set for themselves and, for a `training` process,
    XLA CPU's memory-minimising schedule that `bertgen train` sets (`bertgen_jax.launch`); the
    transformers side runs in the environment it was given."""
    from ..launch import huge_page_environment, transparent_huge_pages_mode, use_memory_scheduler

    env = dict(os.environ if base is None else base)
    env = huge_page_environment(env, thp_mode=transparent_huge_pages_mode()) or env
    if training:
        use_memory_scheduler(env)
    env["JAX_PLATFORMS"] = "cuda" if device == "gpu" else "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def use_jax_device(device: str):
    """Pin this process's JAX to `device` (call before JAX is first used); returns jax.devices()[0].
    No GPU for --device gpu is a BenchError, not a traceback."""
    os.environ["JAX_PLATFORMS"] = "cuda" if device == "gpu" else "cpu"
    import jax

    try:
        return jax.devices("gpu" if device == "gpu" else "cpu")[0]
    except Exception as err:  # RuntimeError, or an AssertionError inside JAX with JAX_PLATFORMS=cuda and no plugin
        if device == "gpu":
            said = (str(err).splitlines() or [type(err).__name__])[0]
            raise BenchError("--device gpu: JAX finds no GPU here (needs an NVIDIA GPU and jax[cuda12]); "
                             f"JAX said: {said}") from None
        raise


@exits_cleanly
def check_jax_device(device: str) -> int:
    """0 where JAX has `device`, else `error: ...` and 2 (`python -c` probe of a small launcher)."""
    use_jax_device(device)
    return 0


def require_jax_device_in_child(device: str) -> None:
    """Probe `device` in a child process, so that this (launcher) process never imports JAX."""
    probe = run_process([sys.executable, "-c", "import sys; from bertgen_jax.bench.common import check_jax_device; "
                         f"sys.exit(check_jax_device({device!r}))"], env=jax_env(device))
    if probe.returncode != 0:
        error = worker_failed("probing the device", probe)
        raise BenchError(str(error).split(": ", 1)[1])


def jax_dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


class Finished:
    """A finished process: exit status, wall seconds from start to exit, its peak RSS, its output."""

    def __init__(self, returncode: int, wall_s: float, peak_rss_mib: float, stdout: str, stderr: str):
        self.returncode, self.wall_s, self.peak_rss_mib = returncode, wall_s, peak_rss_mib
        self.stdout, self.stderr = stdout, stderr

    def last_json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_process(command: list, *, env: Optional[dict] = None, echo: bool = False, timeout: Optional[float] = None
                ) -> Finished:
    """Run `command` to its end: wall clock from start to exit, peak RSS from wait4 (that child's
    ru_maxrss; it includes this process's peak at the time of the fork, so call it from a small parent
    where the child's own figure matters). Output goes to files (no pipe to drain); `echo` prints it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        try:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        except OSError as error:  # e.g. a --torch-python that does not exist
            raise BenchError(f"cannot run {command[0]}: {error.strerror or error}") from None
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                raise BenchError(f"{' '.join(map(str, command[:3]))} ... ran past {timeout:.0f} s")
            time.sleep(0.05)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        finished = Finished(process.returncode, wall, usage.ru_maxrss / 1024, out.read(), err.read())
    if echo:
        sys.stdout.write(finished.stdout)
        sys.stdout.flush()
    return finished


def worker_failed(what: str, finished: Finished) -> BenchError:
    """The worker's own `error: ...` line if it printed one, else the tail of its stderr."""
    lines = [line for line in finished.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    detail = errors[-1][len("error: "):] if errors else "\n".join(lines[-15:])
    return BenchError(f"{what} failed (exit status {finished.returncode}): {detail}")


def run_json(what: str, command: list, *, env: Optional[dict] = None, timeout: Optional[float] = None) -> dict:
    """Run a worker that prints one JSON object last; its dict, plus wall_s and peak_rss_mib (wait4)."""
    finished = run_process(command, env=env, timeout=timeout)
    if finished.returncode != 0:
        raise worker_failed(what, finished)
    result = finished.last_json()
    result.setdefault("wall_s", finished.wall_s)
    result.setdefault("peak_rss_mib", finished.peak_rss_mib)
    return result


def torch_command(torch_python: str, task: str, *args) -> list:
    """The transformers side: torch_side.py run by path with `torch_python` (never imports bertgen_jax)."""
    return [torch_python, TORCH_SIDE, task, *map(str, args)]


def versions_line(torch_info: dict) -> str:
    """'transformers 5.24.0, torch 2.13.0 (2 threads) on cpu' from what the transformers side reported."""
    return (f"transformers {torch_info['transformers']}, torch {torch_info['torch']} "
            f"({torch_info['threads']} threads) on {torch_info['device']}")
