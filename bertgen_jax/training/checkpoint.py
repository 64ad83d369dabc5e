"""Train-state checkpoints with orbax-checkpoint.

Each step directory holds two items: `state` (the `TrainState` pytree: params, optimizer state,
step, rng; sharded arrays are written and read shard by shard) and `meta` (JSON: the data loader's
position and anything else the trainer wants back). orbax writes a step into a temporary directory
and renames it into place only once everything is on disk, so a crash mid-save leaves the previous
checkpoint as the latest one; leftover temporary directories are removed when a manager is opened.

Saves are asynchronous by default: `save` returns once the arrays are copied off the devices (so the
next training step may reuse their buffers) and the files are written by a background thread;
`wait_until_finished` (also called by the next save, `restore` and `close`) waits for them.

orbax is imported and its manager opened at the first use that needs them: a run that writes no
checkpoint into a directory that holds none (`bertgen train --save-every 0`, the exported model being
the product) never loads orbax (~0.25 s and ~15-30 MB of resident memory at start-up).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` for (TrainState, JSON metadata) pairs."""

    def __init__(self, directory: str, *, max_to_keep: Optional[int] = 3, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
        self.max_to_keep, self.asynchronous = max_to_keep, asynchronous
        self._manager = None

    @property
    def manager(self):
        """The orbax `CheckpointManager`, opened (and the directory created) at first use."""
        if self._manager is None:
            import orbax.checkpoint as ocp

            options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True,
                                                   cleanup_tmp_directories=True,
                                                   enable_async_checkpointing=self.asynchronous)
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        return self._manager

    def _unopened_and_empty(self) -> bool:
        """Nothing to read: the manager is not open and the directory is absent or empty."""
        return self._manager is None and not (os.path.isdir(self.directory) and os.listdir(self.directory))

    def latest_step(self) -> Optional[int]:
        return None if self._unopened_and_empty() else self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return [] if self._unopened_and_empty() else list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict, *, wait: bool = False) -> None:
        """Write (and commit) checkpoint `step`: in the background when asynchronous (`wait`: block
        until it is on disk)."""
        import orbax.checkpoint as ocp

        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)), force=True)
        if wait:
            self.manager.wait_until_finished()

    def wait_until_finished(self) -> None:
        """Block until every save in flight is committed on disk."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def restore(self, abstract_state, step: Optional[int] = None) -> tuple[Any, dict]:
        """Read checkpoint `step` (default: the latest) into the structure, dtypes and shardings of
        `abstract_state` (a TrainState of arrays or jax.ShapeDtypeStruct with `.sharding`)."""
        import orbax.checkpoint as ocp

        self.wait_until_finished()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), abstract_state)
        restored = self.manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                           meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def reload(self) -> None:
        """Re-read the list of steps from disk (after checkpoints were moved aside)."""
        if self._manager is not None:
            self._manager.reload()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
