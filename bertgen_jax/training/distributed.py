"""Multi-process runs: launch, agreement checks, coordinated stop and lost peers.

Launch (`bertgen train --distributed`): every process runs the same command. Where the coordinator,
the process count and this process's id come from, first found wins:

1. flags: `--coordinator HOST:PORT --num-processes N --process-id I`;
2. environment: `BERTGEN_COORDINATOR_ADDRESS`, `BERTGEN_NUM_PROCESSES`, `BERTGEN_PROCESS_ID`, else the
   names JAX documents, `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (JAX itself
   reads only the first of these three);
3. JAX's cluster auto-detection for whatever is still unset: SLURM (`srun`), Open MPI (`mpirun`),
   Kubernetes (JobSet / indexed Jobs), Cloud TPU pod slices.

Timeouts (seconds, environment): `BERTGEN_INIT_TIMEOUT` (default 120: how long processes wait for each
other at start-up), `BERTGEN_HEARTBEAT_TIMEOUT` (default 20: a process that sends no heartbeat for this
long counts as lost, and the others stop with an error naming it).

Agreement: right after start-up every process hashes the settings that must match (mesh, batch size,
data file, seed, ...) and the processes all-gather the hashes; a difference is a one-line error on
every process naming the setting. During training a tiny all-gather per step carries each process's
stop request (SIGINT / SIGTERM) and, for streamed data, the lengths of its rows, so all processes stop
at the same step and pad each global batch to the same length.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

logger = logging.getLogger(__name__)

ENV_PREFIXES = ("BERTGEN_", "JAX_")
DEFAULT_INIT_TIMEOUT = 120
DEFAULT_HEARTBEAT_TIMEOUT = 20


class DistributedError(RuntimeError):
    """A multi-process run cannot start or cannot go on; the message is one line for the user."""


@dataclasses.dataclass
class LaunchSettings:
    coordinator: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    init_timeout: int = DEFAULT_INIT_TIMEOUT
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
    sources: dict = dataclasses.field(default_factory=dict)  # setting -> where it came from


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer") from None
    if number <= 0:
        raise DistributedError(f"{name}={value!r} must be positive")
    return number


def resolve_launch(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                   process_id: Optional[int] = None, environ=None) -> LaunchSettings:
    """Flags, then BERTGEN_* / JAX_* environment variables; what stays None is left to JAX's
    cluster auto-detection."""
    environ = os.environ if environ is None else environ
    settings = LaunchSettings(init_timeout=_env_int("BERTGEN_INIT_TIMEOUT", DEFAULT_INIT_TIMEOUT),
                              heartbeat_timeout=_env_int("BERTGEN_HEARTBEAT_TIMEOUT", DEFAULT_HEARTBEAT_TIMEOUT))
    values = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    env_names = {"coordinator": "COORDINATOR_ADDRESS", "num_processes": "NUM_PROCESSES", "process_id": "PROCESS_ID"}
    flags = {"coordinator": "--coordinator", "num_processes": "--num-processes", "process_id": "--process-id"}
    for key, value in values.items():
        if value is not None:
            settings.sources[key] = flags[key]
            continue
        for prefix in ENV_PREFIXES:
            name = prefix + env_names[key]
            text = environ.get(name)
            if text not in (None, ""):
                if key == "coordinator":
                    value = text
                else:
                    try:
                        value = int(text)
                    except ValueError:
                        raise DistributedError(f"{name}={text!r} is not an integer") from None
                settings.sources[key] = name
                break
        values[key] = value
    settings.coordinator, settings.num_processes, settings.process_id = (
        values["coordinator"], values["num_processes"], values["process_id"])
    if settings.coordinator is not None:
        host, sep, port = settings.coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise DistributedError(f"coordinator address {settings.coordinator!r} (from "
                                   f"{settings.sources['coordinator']}) must be HOST:PORT")
    if settings.num_processes is not None and settings.num_processes <= 0:
        raise DistributedError(f"the process count must be positive, got {settings.num_processes} "
                               f"(from {settings.sources['num_processes']})")
    if settings.process_id is not None and settings.num_processes is not None and not (
            0 <= settings.process_id < settings.num_processes):
        raise DistributedError(f"process id {settings.process_id} (from {settings.sources['process_id']}) must be "
                               f"in 0..{settings.num_processes - 1} for {settings.num_processes} processes")
    return settings


def _check_port_free(address: str) -> None:
    """Process 0 serves the coordinator on this port: a port in use is a clear error, not a hang."""
    port = int(address.rpartition(":")[2])
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            # SO_REUSEADDR: a port left in TIME_WAIT by an earlier run is free (gRPC binds it too).
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise DistributedError(f"the coordinator port {port} is already in use on this host (another "
                                       "run?); pick another with --coordinator HOST:PORT") from None
        finally:
            probe.close()
        return


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> LaunchSettings:
    """`jax.distributed.initialize` with the settings of `resolve_launch`, bounded timeouts, and
    one-line errors. Must run before anything else touches JAX's devices."""
    settings = resolve_launch(coordinator, num_processes, process_id)
    if settings.process_id == 0 and settings.coordinator is not None:
        _check_port_free(settings.coordinator)
    # Recoverable: a lost process is not a fatal error that JAX broadcasts to every process (a C++ abort
    # with a screen of stack); the survivors see a failed collective and name the lost peer themselves.
    jax.config.update("jax_enable_recoverability", True)
    where = settings.coordinator or "the auto-detected coordinator"
    expected = settings.num_processes if settings.num_processes is not None else "all"
    waiting = f"the {expected} processes did not all meet at {where} within {settings.init_timeout} s"
    hint = ("is every process started, with the same --num-processes and the same coordinator, and is "
            "process 0 reachable?")

    def give_up():  # JAX would abort with a fatal log some seconds later: say it in one line first
        sys.stderr.write(f"bertgen train: error: process {settings.process_id}: {waiting} ({hint})\n")
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(settings.init_timeout, give_up)
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator, num_processes=settings.num_processes,
            process_id=settings.process_id, initialization_timeout=settings.init_timeout + 30,
            heartbeat_timeout_seconds=settings.heartbeat_timeout)
    except (ValueError, TypeError) as err:  # nothing set and no cluster detected, or bad values
        raise DistributedError(
            f"cannot start a multi-process run: {err} (pass --coordinator HOST:PORT --num-processes N "
            "--process-id I, or set BERTGEN_COORDINATOR_ADDRESS / BERTGEN_NUM_PROCESSES / BERTGEN_PROCESS_ID, "
            "or launch under SLURM, Open MPI, Kubernetes or a Cloud TPU pod)") from None
    except Exception as err:  # XlaRuntimeError: deadline exceeded, unavailable, ...
        text = " ".join(str(err).split())
        raise DistributedError(f"process {settings.process_id}: {waiting} ({hint}): {text[:300]}") from None
    finally:
        timer.cancel()
    if jax.process_count() > 1:
        _Watchdog().start()
    return settings


class _Watchdog(threading.Thread):
    """Names a lost peer whatever the main thread is blocked in (a collective, a compile, a new Gloo
    group's rendezvous that would wait for the dead process for many minutes). Each round, every
    process's watchdog asks the coordination service for the live processes; the call returns when
    all have asked, or, if one died, once it missed its heartbeats (the heartbeat timeout)."""

    def __init__(self, interval: float = 2.0):
        super().__init__(name="bertgen-peer-watchdog", daemon=True)
        self.interval = interval

    def run(self):
        from jax._src import distributed as jax_distributed

        client = jax_distributed.global_state.client
        everyone = list(range(jax.process_count()))
        while not _finishing.is_set():
            try:
                live = set(client.get_live_nodes(everyone))
            except Exception:  # the coordination service is gone: it ran in process 0
                live = set(everyone) - {0}
            if _finishing.is_set():
                return
            lost = [i for i in everyone if i not in live]
            if lost:
                report_lost_peers_and_exit(lost, "no heartbeat from it")
            time.sleep(self.interval)


_finishing = threading.Event()
_report_lock = threading.Lock()


def lost_peer_message(lost: Sequence[int], cause: str) -> str:
    everyone = jax.process_count()
    return (f"lost peer process {', '.join(map(str, lost))} of {everyone}"
            f"{' (the coordinator)' if list(lost) == [0] else ''}: it crashed, was killed or stopped answering "
            f"({cause[:160]}); process {jax.process_index()} stops too. Run the same command with --resume to "
            "continue from the last checkpoint")


def report_lost_peers_and_exit(lost: Sequence[int], cause: str, exit_code: int = 1) -> None:
    """One line on stderr, then exit at once (JAX's exit-time shutdown would wait for the dead process)."""
    with _report_lock:  # the watchdog and the main thread may both find out
        sys.stderr.write(f"bertgen train: error: {lost_peer_message(lost, cause)}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(exit_code)


def lost_peers() -> list[int]:
    """After a failed collective or barrier: the processes the coordination service no longer sees
    (the call returns once dead ones missed their heartbeat: at most the heartbeat timeout)."""
    if not is_multiprocess():
        return []
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    me, everyone = jax.process_index(), list(range(jax.process_count()))
    try:
        live = set(client.get_live_nodes(everyone))
    except Exception:  # the coordination service itself is gone: it ran in process 0
        live = set(everyone) - {0}
    return [i for i in everyone if i not in live and i != me]


def finish(exit_code: int) -> int:
    """Leave a multi-process run in order, whatever the outcome, and never hang doing it: meet the
    others at a barrier, then the other processes disconnect first and process 0, which hosts the
    coordination service, shuts it down last (the other way round they abort at exit, unable to reach
    it). Then the process ends at once with `exit_code` (`os._exit`: the interpreter's own exit would
    run JAX's exit-time shutdown a second time). Each part has a deadline: a peer that failed alone or
    died, or a shutdown stuck in the runtime, costs at most a few heartbeat timeouts, never a hang; if
    even the watchdog thread cannot run, faulthandler prints every thread's stack and exits 1."""
    import faulthandler

    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        return exit_code
    _finishing.set()
    timeout = DEFAULT_HEARTBEAT_TIMEOUT
    try:
        timeout = _env_int("BERTGEN_HEARTBEAT_TIMEOUT", DEFAULT_HEARTBEAT_TIMEOUT)
    except DistributedError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    # The last resort needs no Python thread to run (a C watchdog): stacks to stderr, then exit 1.
    faulthandler.dump_traceback_later(3 * timeout + 10, exit=True)

    def leave():
        try:
            client.wait_at_barrier("bertgen_exit", timeout * 1000)
            if jax.process_index() == 0:  # returns once every other process has disconnected (or died)
                client.get_live_nodes(list(range(jax.process_count())))
            jax.distributed.shutdown()
        except Exception:
            pass

    leaving = threading.Thread(target=leave, name="bertgen-finish", daemon=True)
    leaving.start()
    leaving.join(2 * timeout + 5)
    if leaving.is_alive():
        print(f"bertgen train: warning: leaving the multi-process run took over {2 * timeout + 5} s; "
              "exiting without waiting for the other processes", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (the coordination service, not a device collective, so
    a slow peer is waited for up to the start-up timeout rather than Gloo's fixed 30 s)."""
    if not is_multiprocess():
        return
    from jax._src import distributed as jax_distributed

    timeout = _env_int("BERTGEN_INIT_TIMEOUT", DEFAULT_INIT_TIMEOUT)
    jax_distributed.global_state.client.wait_at_barrier(name, timeout * 1000)


class CompiledTogether:
    """A jitted function whose programs every process compiles ahead of the first call and then
    meets the others at a barrier: the first collective of a program sets up its Gloo context, which
    gives up after 30 s, and a peer still compiling (a loaded machine, a new shape bucket) can take
    longer than that. One process: the jitted function itself, unless a program was compiled ahead
    (`compile_ahead`), which is then used for calls of its shapes."""

    def __init__(self, jitted, name: str):
        self.jitted, self.name, self.programs = jitted, name, {}

    @staticmethod
    def _signature(args):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        return treedef, tuple((tuple(x.shape), x.dtype) for x in leaves)  # dtype objects: str() costs ~5 us each

    def compile_ahead(self, *args, after_lowering: Callable[[bool], object] = lambda traced: None) -> None:
        """Compile the program for these arguments (arrays or `jax.ShapeDtypeStruct`s with shardings)
        now, e.g. before the arrays it will run on exist. `after_lowering(traced)` is called once, before
        XLA compiles (which runs without the GIL; tracing holds it): True once the program is traced and
        lowered or when it was compiled before, False when the tracing failed (its error is raised)."""
        try:
            signature = self._signature(args)
            lowered = None if signature in self.programs else self.jitted.lower(*args)
        except BaseException:
            after_lowering(False)
            raise
        after_lowering(True)
        if lowered is not None:
            self._store(signature, lowered.compile())

    def _compile(self, signature, args):
        return self._store(signature, self.jitted.lower(*args).compile())

    def _store(self, signature, program):
        if is_multiprocess():
            barrier(f"bertgen_{self.name}_compiled_{len(self.programs)}")
        self.programs[signature] = program
        return program

    def __call__(self, *args):
        if not is_multiprocess() and not self.programs:
            return self.jitted(*args)
        signature = self._signature(args)
        program = self.programs.get(signature)
        if program is None:
            if not is_multiprocess():
                return self.jitted(*args)
            program = self._compile(signature, args)
        return program(*args)


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def allgather_ints(values: Sequence[int]) -> np.ndarray:
    """[process_count, len(values)] int64: every process's values, in process order (a tiny jitted
    all-gather over all devices; identity on one process)."""
    local = np.asarray(values, np.int64).reshape(1, -1)
    if not is_multiprocess():
        return local
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(local.astype(np.int32) if not jax.config.jax_enable_x64
                                                 else local, tiled=True)
    return np.asarray(gathered, np.int64).reshape(jax.process_count(), -1)


def _digest(value) -> int:
    """A 31-bit hash of a JSON-able value (fits int32 collectives without x64)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def check_same_settings(settings: dict) -> None:
    """All-gather one hash per setting; any setting that differs between processes is an error on
    every process, naming the setting and which processes disagree."""
    names = sorted(settings)
    gathered = allgather_ints([_digest(settings[name]) for name in names])
    differing = [name for i, name in enumerate(names) if len(set(gathered[:, i].tolist())) > 1]
    if differing:
        first = differing[0]
        column = gathered[:, names.index(first)]
        groups = {}
        for process, value in enumerate(column.tolist()):
            groups.setdefault(value, []).append(process)
        mine = settings[first]
        raise DistributedError(
            f"the processes were started with different settings: {', '.join(differing)} "
            f"(process groups {sorted(groups.values())}; this process {jax.process_index()} has "
            f"{first}={mine!r}); start every process with the same command")
