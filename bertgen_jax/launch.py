"""Process start-up for bertgen's programs: XLA CPU's memory-minimising schedule, huge pages for large
host buffers, then the command line.

XLA on CPU allocates each execution's temporary buffers with `malloc` (one block of hundreds of MB for a
training step) and frees them at the end. glibc serves blocks that large with a fresh `mmap` and returns
them with `munmap`, so every step faults in every page again: 15.7M page faults and 33 s of kernel time in
a 150-step MiniLM fine-tuning. With glibc's `glibc.malloc.hugetlb=1` tunable, malloc asks for transparent
huge pages for those blocks (`madvise`), 512 times fewer faults: the same run spends 12 s in the kernel and
its steps are ~30% faster, at the same peak memory. glibc reads tunables only when a process starts, so
the `bertgen` programs re-execute themselves once with it set; a Python program that uses the library
directly sets it in its own environment (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`).

Nothing happens off Linux, without glibc, where the kernel has transparent huge pages off, when the
variable already names the tunable, or with `BERTGEN_HUGE_PAGES=0`. Unknown tunables are ignored by
glibc, so an older glibc only loses the speed-up.

XLA CPU orders each program's operations either breadth-first, to expose work that can run concurrently
(its default), or depth-first, to keep fewer buffers live at once. For our training steps the depth-first
order runs as fast and needs a smaller block of temporaries: the bert-base bert2bert step of
`benchmarks/train.py` (batch 8, 128 + 32 tokens) 1878 -> 1643 MB of temporaries and 5.59 -> 5.36 GB peak
RSS at the same 5.1-5.2 s per step; at MiniLM size -30 MB. Generation gains nothing from it (bert-base
greedy batch 1 measured ~4% slower, batch 8 and beam search level), so only the fine-tuning programs
(`bertgen train`, `bertgen demo`) use it. XLA reads its flags once, when JAX first starts a backend, so
they put the flag into `XLA_FLAGS` before JAX loads (a schedule the user chose there is kept); a Python
program that fine-tunes with the library directly sets it in its own environment
(`XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`). Every jaxlib this project supports
(>= 0.4.30) knows the flag.

This module imports nothing heavy: it runs before JAX.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, MutableMapping, Optional

HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
XLA_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"
MEMORY_SCHEDULER_FLAG = f"--{XLA_SCHEDULER_FLAG}=false"
TRAINING_COMMANDS = ("train", "demo")  # the subcommands that fine-tune


def wants_memory_scheduler(argv) -> bool:
    """Whether this command line fine-tunes (`bertgen train ...`, `bertgen demo ...`)."""
    return len(argv) > 1 and argv[1] in TRAINING_COMMANDS


def xla_flags_with_memory_scheduler(environ: Mapping[str, str]) -> Optional[str]:
    """`XLA_FLAGS` with the depth-first (memory-minimising) CPU schedule added, or None when the
    variable already chooses a schedule."""
    flags = environ.get("XLA_FLAGS", "")
    if XLA_SCHEDULER_FLAG in flags:
        return None
    return f"{flags} {MEMORY_SCHEDULER_FLAG}" if flags.strip() else MEMORY_SCHEDULER_FLAG


def use_memory_scheduler(environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Put the depth-first schedule into `XLA_FLAGS` of `environ` (default: this process's, before JAX
    starts a backend; or a child's environment)."""
    environ = os.environ if environ is None else environ
    flags = xla_flags_with_memory_scheduler(environ)
    if flags is not None:
        environ["XLA_FLAGS"] = flags


def transparent_huge_pages_mode(path: str = THP_SETTING) -> Optional[str]:
    """The kernel's transparent huge page mode (`always`, `madvise` or `never`), None where unknown."""
    try:
        with open(path) as setting:
            text = setting.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_page_environment(environ: Mapping[str, str], *, thp_mode: Optional[str],
                          libc: Optional[str] = None) -> Optional[dict]:
    """The environment to re-execute with, or None when the process should run as it is."""
    libc = platform.libc_ver()[0] if libc is None else libc
    if environ.get("BERTGEN_HUGE_PAGES", "1") == "0" or libc != "glibc" or thp_mode not in ("always", "madvise"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:  # set by the user, or by our own earlier start
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGE_TUNABLE}" if tunables else HUGE_PAGE_TUNABLE
    return env


def reexec_with_huge_pages() -> None:
    """Re-execute this process's own command line once with the tunable set (returns only when not)."""
    if not sys.platform.startswith("linux"):
        return
    env = huge_page_environment(os.environ, thp_mode=transparent_huge_pages_mode())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), env)
    except (OSError, ValueError):  # cannot exec here (a sandbox, an embedded interpreter): run without them
        return


def main() -> int:
    """The `bertgen` console script."""
    if wants_memory_scheduler(sys.argv):
        use_memory_scheduler()  # before the exec too: the new process inherits it
    reexec_with_huge_pages()
    from .cli import main as cli_main

    return cli_main()
