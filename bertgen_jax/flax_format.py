"""Native Flax checkpoints: config.json + flax_model.msgpack (the params tree, this project's names).

transformers' Flax models used the same file name; the tree here follows this project's module
names, so `bertgen convert --to pytorch` turns it back into a transformers checkpoint.
"""

from __future__ import annotations

import os

import flax.serialization
import jax
import numpy as np

from converters.checkpoint_io import atomic_write_bytes
from converters.mapping import CheckpointKeyError, flatten

FLAX_WEIGHTS_NAME = "flax_model.msgpack"


def save_flax_params(model, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    host = jax.tree_util.tree_map(np.asarray, model.params)
    path = os.path.join(directory, FLAX_WEIGHTS_NAME)
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(host))
    model._config_for_save().save_pretrained(directory)
    return path


def load_flax_params(path: str, expected: dict) -> dict:
    """Read a msgpack params tree and check it against the expected shapes, naming any bad entry."""
    try:
        with open(path, "rb") as handle:
            tree = flax.serialization.msgpack_restore(handle.read())
    except Exception as err:
        raise ValueError(f"{path} is corrupt or truncated: {err}") from err
    got, want = flatten(tree), flatten(expected)
    missing = sorted("/".join(p) for p in set(want) - set(got))
    unexpected = sorted("/".join(p) for p in set(got) - set(want))
    if missing or unexpected:
        raise CheckpointKeyError(f"{path}: missing params {missing[:5]} / unexpected params {unexpected[:5]}")
    for leaf_path, spec in want.items():
        if tuple(np.shape(got[leaf_path])) != tuple(spec.shape):
            raise CheckpointKeyError(f"{path}: param {'/'.join(leaf_path)} has shape {np.shape(got[leaf_path])}, "
                                     f"expected {tuple(spec.shape)}")
    return jax.tree_util.tree_map(lambda x, s: np.asarray(x).astype(s.dtype), tree, expected)
