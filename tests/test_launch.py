"""`bertgen_jax.launch`: the programs re-execute once with glibc's huge-page malloc tunable."""

import os
import platform
import subprocess
import sys

import pytest

from bertgen_jax.launch import (HUGE_PAGE_TUNABLE, huge_page_environment, transparent_huge_pages_mode)


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
