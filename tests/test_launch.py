"""`bertgen_jax.launch`: the programs re-execute once with glibc's huge-page malloc tunable, and the
fine-tuning ones start XLA with its memory-minimising (depth-first) CPU schedule."""

import os
import platform
import subprocess
import sys

import pytest

from bertgen_jax.bench.common import jax_env
from bertgen_jax.launch import (HUGE_PAGE_TUNABLE, MEMORY_SCHEDULER_FLAG, huge_page_environment,
                                transparent_huge_pages_mode, wants_memory_scheduler, xla_flags_with_memory_scheduler)


def test_the_tunable_is_added_once_beside_the_users_own():
    env = huge_page_environment({"PATH": "/bin"}, thp_mode="madvise", libc="glibc")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": HUGE_PAGE_TUNABLE}
    env = huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp_mode="always", libc="glibc")
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE_PAGE_TUNABLE}"
    # Already there (the user's choice, or our own first start): no second exec.
    assert huge_page_environment(env, thp_mode="madvise", libc="glibc") is None
    assert huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, thp_mode="madvise",
                                 libc="glibc") is None


@pytest.mark.parametrize("environ, thp_mode, libc", [
    ({"BERTGEN_HUGE_PAGES": "0"}, "madvise", "glibc"),  # switched off
    ({}, "never", "glibc"),  # the kernel has transparent huge pages off
    ({}, None, "glibc"),  # no such kernel setting (not Linux, a container without /sys)
    ({}, "madvise", ""),  # not glibc (musl): the tunable means nothing there
])
def test_no_reexec_where_it_cannot_help(environ, thp_mode, libc):
    assert huge_page_environment(environ, thp_mode=thp_mode, libc=libc) is None


def test_reads_the_kernels_mode_from_its_bracket(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert transparent_huge_pages_mode(str(setting)) == "madvise"
    setting.write_text("[always] madvise never\n")
    assert transparent_huge_pages_mode(str(setting)) == "always"
    assert transparent_huge_pages_mode(str(tmp_path / "missing")) is None


PROGRAM = ("import os; from bertgen_jax.launch import reexec_with_huge_pages; print('start', os.getpid(), flush=True); "
           "reexec_with_huge_pages(); print('run', os.getpid(), os.environ.get('GLIBC_TUNABLES'))")


def test_a_program_reexecutes_itself_once_in_the_same_process():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BERTGEN_HUGE_PAGES")}
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    expected = huge_page_environment(env, thp_mode=transparent_huge_pages_mode(), libc=platform.libc_ver()[0])
    if expected is None or not sys.platform.startswith("linux"):
        assert [line.split()[0] for line in lines if line] == ["start", "run"]
        return
    starts = [line for line in lines if line.startswith("start")]
    runs = [line for line in lines if line.startswith("run")]
    # Started twice (the exec), ran once, in the same process, with the tunable set.
    assert len(starts) == 2 and len(runs) == 1
    assert {line.split()[1] for line in starts + runs} == {starts[0].split()[1]}
    assert runs[0].split()[2] == HUGE_PAGE_TUNABLE

    off = subprocess.run([sys.executable, "-c", PROGRAM], env=dict(env, BERTGEN_HUGE_PAGES="0"),
                         capture_output=True, text=True, timeout=60)
    assert [line.split()[0] for line in off.stdout.split("\n") if line] == ["start", "run"]
    assert off.stdout.split("\n")[1].split()[2] == "None"


def test_the_command_line_module_imports_no_jax_before_it_can_reexec():
    probe = "import sys, bertgen_jax.cli, bertgen_jax.launch; print('jax' in sys.modules, 'flax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_the_memory_schedule_is_added_beside_the_users_flags_unless_they_chose_one():
    assert xla_flags_with_memory_scheduler({}) == MEMORY_SCHEDULER_FLAG
    assert xla_flags_with_memory_scheduler({"XLA_FLAGS": " "}) == MEMORY_SCHEDULER_FLAG
    assert (xla_flags_with_memory_scheduler({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
            == f"--xla_force_host_platform_device_count=4 {MEMORY_SCHEDULER_FLAG}")
    for chosen in ("--xla_cpu_enable_concurrency_optimized_scheduler=true", MEMORY_SCHEDULER_FLAG):
        assert xla_flags_with_memory_scheduler({"XLA_FLAGS": f"--xla_dump_to=/tmp/x {chosen}"}) is None
    # Fine-tuning programs only: generation keeps XLA's default schedule.
    assert wants_memory_scheduler(["bertgen", "train", "--model", "m"])
    assert wants_memory_scheduler(["python -m bertgen_jax.cli", "demo"])
    assert not any(wants_memory_scheduler(["bertgen", *rest]) for rest in (["generate", "train"], ["serve"], []))
    # The benchmarks' JAX children start as the programs they time do.
    env = jax_env("cpu", base={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, training=True)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", MEMORY_SCHEDULER_FLAG]
    chosen = jax_env("cpu", base={"XLA_FLAGS": MEMORY_SCHEDULER_FLAG}, training=True)
    assert chosen["XLA_FLAGS"] == MEMORY_SCHEDULER_FLAG
    assert "XLA_FLAGS" not in jax_env("cpu", base={})


# A small bert2bert's joined training step (gradients and AdamW in one program), compiled for shapes only:
# its block of temporaries, in MiB, as XLA CPU plans it.
TRAIN_STEP_TEMPORARIES = """
import os, sys, numpy as np, jax
from bertgen_jax.launch import use_memory_scheduler
use_memory_scheduler()
from bertgen_jax import BertGenerationConfig, EncoderDecoderConfig, EncoderDecoderModel
from bertgen_jax.training.optim import OptimizerConfig, make_optimizer
from bertgen_jax.training.step import create_train_state, make_train_step
sizes = dict(vocab_size=2000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
             max_position_embeddings=128)
config = EncoderDecoderConfig.from_encoder_decoder_configs(
    BertGenerationConfig(**sizes), BertGenerationConfig(is_decoder=True, add_cross_attention=True, **sizes))
config.decoder_start_token_id, config.pad_token_id = 1, 0
model = EncoderDecoderModel.from_config(config)
optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-4), model.params)
step = make_train_step(model, optimizer, separate_update=False)
state = jax.eval_shape(lambda params: create_train_state(params, optimizer), model.params)
batch = {key: jax.ShapeDtypeStruct((1, 8, length), np.int32)
         for key, length in (("input_ids", 64), ("attention_mask", 64), ("labels", 32))}
program = step.step.jitted.lower(state, batch).compile()
print(os.environ["XLA_FLAGS"], program.memory_analysis().temp_size_in_bytes / 2**20)
"""


def test_the_depth_first_schedule_reaches_xla_and_a_train_step_needs_fewer_temporaries():
    def temporaries(xla_flags):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env["JAX_PLATFORMS"] = "cpu"
        if xla_flags is not None:
            env["XLA_FLAGS"] = xla_flags
        done = subprocess.run([sys.executable, "-c", TRAIN_STEP_TEMPORARIES], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        *flags, mib = done.stdout.split()
        return flags, float(mib)

    ours_flags, ours = temporaries(None)
    assert ours_flags == [MEMORY_SCHEDULER_FLAG]
    # A schedule the user chose is kept: here XLA's own breadth-first one.
    breadth_first = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    theirs_flags, theirs = temporaries(breadth_first)
    assert theirs_flags == [breadth_first]
    assert ours < 0.95 * theirs, (ours, theirs)
