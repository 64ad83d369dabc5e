"""Multi-process fine-tuning with real OS processes on localhost (2 processes x 4 virtual CPU devices):
launch by flags and SLURM-style, the same weights as one device, a coordinated stop on SIGINT to one
process, resume, a lost peer, settings that differ between processes; and resume's own rules
(no checkpoint, damaged checkpoints) on one process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from test_training import write_copy_task, write_tiny_model, write_tokenizer

DEVICES_PER_PROCESS = 4
STEPS = 12
XLA_CACHE: dict = {}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    # The runs share JAX's persistent compilation cache: the 2-process step compiles once, not per test.
    XLA_CACHE["dir"] = str(root / "xla-cache")
    return {"tokenizer": write_tokenizer(root / "tokenizer"), "model": write_tiny_model(root / "model"),
            "train": write_copy_task(root / "train.jsonl", 200, seed=0), "root": root}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_args(task, output_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "bertgen_jax.training.cli", "--model", task["model"], "--tokenizer",
            task["tokenizer"], "--train-file", task["train"], "--output-dir", str(output_dir), "--batch-size", "8",
            "--max-steps", str(STEPS), "--learning-rate", "2e-3", "--warmup-steps", "2", "--weight-decay", "0.01",
            "--log-every", "1", "--pad-to-multiple-of", "16", "--seed", "3", "--no-progress", "--streaming",
            *extra]


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               BERTGEN_HEARTBEAT_TIMEOUT="10", BERTGEN_INIT_TIMEOUT="60", PYTHONUNBUFFERED="1")
    if XLA_CACHE.get("dir"):
        env["BERTGEN_COMPILATION_CACHE"] = XLA_CACHE["dir"]
    for name in list(env):
        if name.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS", "BERTGEN_COORD",
                            "BERTGEN_NUM_PROC", "BERTGEN_PROCESS")):
            del env[name]
    env.update(extra)
    return env


class Run:
    """N processes of one command; output in files (no pipe can fill up and block them)."""

    def __init__(self, commands_and_envs, log_dir):
        os.makedirs(log_dir, exist_ok=True)
        self.logs = [os.path.join(log_dir, f"process{i}.log") for i in range(len(commands_and_envs))]
        self.procs = []
        for (command, env), log in zip(commands_and_envs, self.logs):
            with open(log, "w") as handle:
                self.procs.append(subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL))
        self.started = time.monotonic()

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"process hung past {timeout} s; logs:\n" + self.output()[-4000:])
        return codes

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def output(self, index=None) -> str:
        chosen = self.logs if index is None else [self.logs[index]]
        return "\n".join(f"--- {os.path.basename(p)}\n" + open(p, errors="replace").read() for p in chosen)


ERROR_PREFIX = "bertgen train: error:"


def _error_lines(text: str) -> list:
    """The CLI's error lines in a log, each from its prefix on. A log holds a process's stdout and stderr
    together, and a library's unterminated write from another thread (Gloo's "connected to 1 peer ranks"
    notice, whose count comes in a second write) can stand in front of our line on the same line."""
    return [line[line.index(ERROR_PREFIX):] for line in text.splitlines() if ERROR_PREFIX in line]


def launch_with_flags(task, output_dir, *extra, processes=2, log_name="logs", mesh="data=4,fsdp=2") -> Run:
    port = _free_port()
    commands = [(_train_args(task, output_dir, "--mesh", mesh, "--distributed", "--coordinator", f"localhost:{port}",
                             "--num-processes", str(processes), "--process-id", str(i), *extra),
                 _env(DEVICES_PER_PROCESS)) for i in range(processes)]
    return Run(commands, output_dir.parent / f"{output_dir.name}-{log_name}")


SLURM_PORTS = 65535 - 2**12 + 1  # JAX derives the coordinator port from the job id: this + id % 4096


def _free_slurm_job_id() -> str:
    for offset in np.random.default_rng().permutation(2**12):
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", SLURM_PORTS + int(offset)))
            except OSError:
                continue
        return str(2**12 * 1000 + int(offset))
    raise AssertionError("no free port in the range SLURM runs use")


def launch_slurm_style(task, output_dir, *extra, log_name="logs") -> Run:
    """As `srun --ntasks 2` starts them: only SLURM's variables say who is who."""
    job_id = _free_slurm_job_id()
    commands = []
    for i in range(2):
        env = _env(DEVICES_PER_PROCESS, SLURM_JOB_ID=job_id, SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                   SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_STEP_NUM_NODES="1")
        commands.append((_train_args(task, output_dir, "--mesh", "data=4,fsdp=2", "--distributed", *extra), env))
    return Run(commands, output_dir.parent / f"{output_dir.name}-{log_name}")


def exported_weights(output_dir) -> dict:
    return load_file(os.path.join(output_dir, "model", "model.safetensors"))


def max_weight_diff(a: dict, b: dict) -> float:
    """Max abs difference over all tensors but attention key biases (their true gradient is 0: both
    sides hold float noise there, which Adam scales up to steps of about lr)."""
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a if not k.endswith("self.key.bias"))


@pytest.fixture(scope="module")
def straight(task):
    """The reference: one process, one device, no interruption."""
    out = task["root"] / "straight"
    run = Run([(_train_args(task, out, "--mesh", "data=1"), _env(1))], task["root"] / "straight-logs")
    assert run.wait(240) == [0], run.output()
    return exported_weights(out)


# ----------------------------------------------------------------------------- launch
@pytest.mark.slow
def test_two_processes_by_flags_end_at_the_single_device_weights(task, straight):
    out = task["root"] / "flags"
    run = launch_with_flags(task, out)
    codes = run.wait(300)
    assert codes == [0, 0], run.output()
    diff = max_weight_diff(exported_weights(out), straight)
    print(f"2 processes x 4 devices (data=4,fsdp=2) vs 1 device: max |diff| {diff:.2e}")
    assert diff < 2e-5, diff


@pytest.mark.slow
def test_sigint_to_one_process_stops_both_with_one_checkpoint_and_resume_matches(task, straight):
    out = task["root"] / "stopped"
    run = launch_with_flags(task, out)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("train/loss") >= 2):
        assert all(p.poll() is None for p in run.procs), run.output()
        time.sleep(0.02)
    signalled = time.monotonic()
    os.kill(run.procs[1].pid, signal.SIGINT)  # the non-coordinator: process 0 learns it from the all-gather
    codes = run.wait(30)
    took = time.monotonic() - signalled
    assert codes == [130, 130], run.output()
    assert took < 30
    steps = sorted(os.listdir(out / "checkpoints"))
    assert len(steps) == 1 and 2 <= int(steps[0]) < STEPS, steps
    assert "stop requested on process 1" in run.output(0)
    print(f"SIGINT to process 1: both exited 130 in {took:.1f} s, checkpoint at step {steps[0]}")

    resumed = launch_slurm_style(task, out, "--resume", log_name="resume-logs")  # and SLURM-style this time
    assert resumed.wait(300) == [0, 0], resumed.output()
    assert f"resumed from step {steps[0]}" in resumed.output(0)
    diff = max_weight_diff(exported_weights(out), straight)
    print(f"resumed on 2 processes (SLURM-style launch) vs straight single device: max |diff| {diff:.2e}")
    assert diff < 2e-5, diff


@pytest.mark.slow
def test_sigkill_of_one_process_makes_the_other_exit_naming_it_and_resume_recovers(task, straight):
    out = task["root"] / "killed"
    run = launch_with_flags(task, out, "--save-every", "4")
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    # Killed after the step-4 checkpoint is on disk and a step or more past it.
    while time.monotonic() < deadline and not ((out / "checkpoints" / "4").is_dir() and metrics.exists()
                                               and metrics.read_text().count("train/loss") >= 5):
        assert all(p.poll() is None for p in run.procs), run.output()
        time.sleep(0.02)
    killed = time.monotonic()
    run.procs[1].kill()
    codes = run.wait(60)
    took = time.monotonic() - killed
    assert codes[0] not in (0, 130) and codes[1] == -signal.SIGKILL, run.output()
    errors = _error_lines(run.output(0))
    assert errors, run.output(0)[-3000:]
    last = errors[-1]
    assert last.startswith("bertgen train: error: lost peer process 1 of 2"), run.output(0)[-3000:]
    print(f"SIGKILL of process 1: process 0 exited {codes[0]} after {took:.1f} s: {last[:120]}")

    # The lost run resumes on 2 processes from its newest intact checkpoint to the straight run's weights.
    resumed = launch_with_flags(task, out, "--save-every", "4", "--resume", log_name="resume-logs")
    assert resumed.wait(300) == [0, 0], resumed.output()
    assert "resumed from step" in resumed.output(0), resumed.output(0)[-3000:]
    diff = max_weight_diff(exported_weights(out), straight)
    print(f"resumed after SIGKILL vs straight single device: max |diff| {diff:.2e}")
    assert diff < 2e-5, diff


@pytest.mark.slow
def test_settings_that_differ_between_processes_are_an_error_on_each(task, tmp_path):
    out = tmp_path / "differ"
    port = _free_port()
    commands = []
    for i, batch in enumerate(("8", "16")):
        args = _train_args(task, out, "--mesh", "data=4,fsdp=2", "--distributed", "--coordinator", f"localhost:{port}",
                           "--num-processes", "2", "--process-id", str(i))
        args[args.index("--batch-size") + 1] = batch
        commands.append((args, _env(DEVICES_PER_PROCESS)))
    run = Run(commands, tmp_path / "differ-logs")
    assert run.wait(120) == [1, 1], run.output()
    for i in range(2):
        errors = _error_lines(run.output(i))
        assert len(errors) == 1 and "different settings: batch_size" in errors[0], run.output(i)


@pytest.mark.slow
def test_port_in_use_and_a_missing_process_are_errors_not_hangs(task, tmp_path):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = _train_args(task, tmp_path / "busy", "--distributed", "--coordinator", f"localhost:{port}",
                              "--num-processes", "2", "--process-id", "0")
        run = Run([(command, _env(DEVICES_PER_PROCESS))], tmp_path / "busy-logs")
        assert run.wait(60) == [1], run.output()
        assert f"the coordinator port {port} is already in use" in run.output()
    # process 1 of 2 never starts: process 0 gives up after BERTGEN_INIT_TIMEOUT
    command = _train_args(task, tmp_path / "alone", "--distributed", "--coordinator", f"localhost:{_free_port()}",
                          "--num-processes", "2", "--process-id", "0")
    env = _env(DEVICES_PER_PROCESS, BERTGEN_INIT_TIMEOUT="5")
    run = Run([(command, env)], tmp_path / "alone-logs")
    assert run.wait(60) == [1], run.output()
    errors = _error_lines(run.output())
    assert len(errors) == 1 and "did not all meet" in errors[0] and "within 5 s" in errors[0], run.output()


# ----------------------------------------------------------------------------- resume rules (one process)
def _run_in_process(task, output_dir, *extra) -> int:
    import argparse

    from bertgen_jax.training.cli import add_train_arguments, run_train

    argv = _train_args(task, output_dir, "--max-steps", "4", "--save-every", "2", *extra)[3:]
    return run_train(add_train_arguments(argparse.ArgumentParser()).parse_args(argv))


def test_resume_without_a_checkpoint_says_so(task, tmp_path, capsys):
    assert _run_in_process(task, tmp_path / "none", "--resume") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "there is no checkpoint in" in err and "--resume auto" in err, err
    assert not os.path.isdir(tmp_path / "none" / "model")
    # --resume auto: resume if there is one, else start from step 0 (and say so)
    assert _run_in_process(task, tmp_path / "auto", "--resume", "auto") == 0
    out = capsys.readouterr().out
    assert "no checkpoint in" in out and "starting from step 0" in out, out
    assert sorted(os.listdir(tmp_path / "auto" / "checkpoints")) == ["2", "4"]


def _largest_file(directory) -> str:
    files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
    return max(files, key=os.path.getsize)


def _truncate(path) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


@pytest.mark.parametrize("damage", ["array file", "_METADATA"])
def test_a_damaged_newest_checkpoint_is_named_and_the_newest_intact_one_used(task, tmp_path, capsys, damage):
    import shutil

    base = task["root"] / "resume-base"
    if not (base / "model").is_dir():  # one straight run (checkpoints at 2 and 4) shared by both cases
        assert _run_in_process(task, base) == 0
    out = tmp_path / "run"
    shutil.copytree(base, out)
    shutil.rmtree(out / "model")
    newest = out / "checkpoints" / "4"
    victim = _largest_file(newest / "state" / "ocdbt.process_0") if damage == "array file" else newest / "state" / "_METADATA"
    _truncate(victim)
    capsys.readouterr()
    assert _run_in_process(task, out, "--resume") == 0
    printed = capsys.readouterr().out
    assert f"checkpoint step 4 ({newest}) is damaged and is skipped" in printed, printed
    assert f"falling back to the newest intact checkpoint: step 2 ({out / 'checkpoints' / '2'})" in printed, printed
    assert f"moved the damaged checkpoint step 4 to {out / 'checkpoints' / 'damaged-4'}" in printed
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "4", "damaged-4"]
    # steps 3-4 ran again from step 2 to the straight run's weights
    assert max_weight_diff(exported_weights(out), exported_weights(base)) == 0.0


# ----------------------------------------------------------------------------- launch settings
def test_launch_settings_come_from_flags_then_bertgen_then_jax_variables():
    from bertgen_jax.training.distributed import DistributedError, resolve_launch

    jax_env = {"JAX_COORDINATOR_ADDRESS": "h0:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    settings = resolve_launch(environ=jax_env)  # JAX itself reads only the address of these three
    assert (settings.coordinator, settings.num_processes, settings.process_id) == ("h0:1", 4, 3)
    assert settings.sources == {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
                                "process_id": "JAX_PROCESS_ID"}
    both = dict(jax_env, BERTGEN_COORDINATOR_ADDRESS="h1:2", BERTGEN_NUM_PROCESSES="2")
    settings = resolve_launch(process_id=1, environ=both)
    assert (settings.coordinator, settings.num_processes, settings.process_id) == ("h1:2", 2, 1)
    assert settings.sources["process_id"] == "--process-id"
    assert resolve_launch(environ={}).coordinator is None  # left to JAX's cluster auto-detection
    for kwargs, env, message in ((dict(coordinator="nohostport"), {}, "must be HOST:PORT"),
                                 ({}, {"BERTGEN_NUM_PROCESSES": "two"}, "BERTGEN_NUM_PROCESSES='two' is not an integer"),
                                 (dict(num_processes=2, process_id=2), {}, "must be in 0..1")):
        with pytest.raises(DistributedError, match=message):
            resolve_launch(environ=env, **kwargs)
