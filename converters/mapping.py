"""PyTorch state-dict names <-> the Flax params tree of bertgen_jax.

The Flax tree copies the PyTorch attribute names, so the mapping is mechanical:
`encoder/layer_3/attention/self/query/kernel` <-> `encoder.layer.3.attention.self.query.weight`
(transposed), `.../embedding` and LayerNorm `.../scale` <-> `.../weight`.

Importing is strict: every key of the checkpoint is mapped, dropped with a stated reason, or
reported; every parameter the model needs is found (with the right shape) or, for the weights a
warm start creates on purpose (cross-attention, the LM-head bias, `enc_to_dec_proj`), initialised
as transformers initialises them and listed in the returned report.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Optional

import numpy as np

_LAYER = re.compile(r"^layer_(\d+)$")


class CheckpointKeyError(ValueError):
    """A missing, unexpected or misshapen checkpoint key."""


# ----------------------------------------------------------------------------- tree helpers
def flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def unflatten(flat: dict[tuple, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def torch_key(path: tuple[str, ...]) -> str:
    """Flax path -> PyTorch state-dict key."""
    parts = []
    for part in path[:-1]:
        match = _LAYER.match(part)
        parts.extend(["layer", match.group(1)] if match else [part])
    leaf = path[-1]
    parts.append("weight" if leaf in ("kernel", "embedding", "scale") else leaf)
    return ".".join(parts)


def is_transposed(path: tuple[str, ...]) -> bool:
    # torch Linear stores [out, in]; a Flax Dense kernel is [in, out].
    return path[-1] == "kernel"


def to_flax_array(path, array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.T) if is_transposed(path) else array


def to_torch_array(path, array) -> np.ndarray:
    array = np.asarray(array)
    return np.ascontiguousarray(array.T) if is_transposed(path) else np.ascontiguousarray(array)


# ----------------------------------------------------------------------------- key normalisation
def normalize_legacy_names(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta (transformers renames them)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        out[key] = value
    return out


# Keys of BERT / RoBERTa / BertGeneration checkpoints that have no counterpart here, with the reason.
DROP_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"(^|\.)embeddings\.position_ids$"), "position_ids buffer (positions are computed)"),
    (re.compile(r"(^|\.)embeddings\.token_type_ids$"), "token_type_ids buffer (BertGeneration has no token types)"),
    (re.compile(r"(^|\.)embeddings\.token_type_embeddings\.weight$"),
     "token_type_embeddings (BertGeneration has no token types, as in transformers)"),
    (re.compile(r"(^|\.)pooler\."), "pooler (BertGeneration has no pooler)"),
    (re.compile(r"^cls\."), "BERT pre-training heads (cls.*): BertGeneration's LM head is a plain tied projection"),
)


@dataclasses.dataclass
class ConversionReport:
    """What an import did with each key that was not a one-to-one copy."""

    dropped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, reason)
    initialized: list[str] = dataclasses.field(default_factory=list)  # Flax paths newly initialised
    tied: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, tied to)

    def summary(self) -> str:
        lines = []
        if self.initialized:
            lines.append(f"newly initialised ({len(self.initialized)}): " + ", ".join(self.initialized[:8])
                         + (" ..." if len(self.initialized) > 8 else ""))
        if self.dropped:
            reasons: dict[str, int] = {}
            for _, reason in self.dropped:
                reasons[reason] = reasons.get(reason, 0) + 1
            lines.append("dropped: " + "; ".join(f"{n} x {r}" for r, n in reasons.items()))
        return "\n".join(lines)


def init_like(path: tuple[str, ...], shape, dtype, rng: np.random.Generator, initializer_range: float):
    """transformers' `_init_weights`: Linear/Embedding normal(0, range), biases 0, LayerNorm 1."""
    leaf = path[-1]
    if leaf in ("kernel", "embedding"):
        return (rng.standard_normal(shape) * initializer_range).astype(dtype)
    if leaf == "scale":
        return np.ones(shape, dtype)
    return np.zeros(shape, dtype)


def load_into_tree(
    state_dict: dict[str, np.ndarray],
    expected: dict,
    *,
    source: str,
    may_initialize: Callable[[tuple[str, ...]], bool] = lambda path: False,
    initializer_range: float = 0.02,
    seed: int = 0,
    report: Optional[ConversionReport] = None,
    finalize: Callable = lambda array: array,
    leaf_hook: Optional[Callable] = None,
) -> tuple[dict, ConversionReport]:
    """Fill the Flax tree `expected` (leaves: anything with .shape and .dtype) from `state_dict`.

    `state_dict` must already use this model's key layout (prefixes fixed, drops removed).
    `finalize` converts each loaded leaf at once (e.g. `jnp.asarray`), so the transposed host copies
    are freed one by one instead of all living until the end.
    `leaf_hook(path, key, remaining, spec)` may claim a leaf first (popping what it reads from
    `remaining`) and return its value, e.g. the quantized leaves of `quantized.qweight_hook`.
    Raises CheckpointKeyError naming the key and `source` for missing/unexpected/misshapen keys.
    """
    report = report or ConversionReport()
    rng = np.random.default_rng(seed)
    remaining = dict(state_dict)
    flat_out = {}
    missing = []
    for path, spec in flatten(expected).items():
        key = torch_key(path)
        claimed = leaf_hook(path, key, remaining, spec) if leaf_hook is not None else None
        if claimed is not None:
            flat_out[path] = claimed
        elif key in remaining:
            array = to_flax_array(path, np.asarray(remaining.pop(key)))
            if tuple(array.shape) != tuple(spec.shape):
                torch_shape = tuple(np.asarray(state_dict[key]).shape)
                want = tuple(spec.shape)[::-1] if is_transposed(path) else tuple(spec.shape)
                raise CheckpointKeyError(f"checkpoint key {key!r} in {source} has shape {torch_shape}; the model "
                                         f"config expects {want}")
            flat_out[path] = finalize(array.astype(spec.dtype, copy=False))
        elif may_initialize(path):
            flat_out[path] = init_like(path, spec.shape, spec.dtype, rng, initializer_range)
            report.initialized.append("/".join(path))
        else:
            missing.append(key)
    if missing:
        raise CheckpointKeyError(
            f"checkpoint {source} is missing {len(missing)} key(s) the model needs: " + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    if remaining:
        keys = sorted(remaining)
        raise CheckpointKeyError(
            f"checkpoint {source} has {len(keys)} unexpected key(s) for this model: " + ", ".join(keys[:10])
            + (" ..." if len(keys) > 10 else "")
        )
    return unflatten(flat_out), report


def tree_to_state_dict(params: dict, prefix: str = "", skip: Iterable[tuple[str, ...]] = ()) -> dict[str, np.ndarray]:
    """Flax tree -> PyTorch-layout numpy state dict (keys prefixed with `prefix`)."""
    skip = set(skip)
    out = {}
    for path, value in flatten(params).items():
        if path in skip:
            continue
        out[prefix + torch_key(path)] = to_torch_array(path, value)
    return out


def split_drops(state_dict: dict[str, np.ndarray], rules, report: ConversionReport) -> dict[str, np.ndarray]:
    """Remove keys matched by `rules` [(pattern, reason)], recording them in the report."""
    kept = {}
    for key, value in state_dict.items():
        for pattern, reason in rules:
            if pattern.search(key):
                report.dropped.append((key, reason))
                break
        else:
            kept[key] = value
    return kept


def strip_prefix(state_dict: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def detect_base_prefix(keys: Iterable[str]) -> str:
    """'' for a bare BertGeneration/BertModel/RobertaModel stack, else 'bert.' or 'roberta.'."""
    keys = list(keys)
    for prefix in ("bert.", "roberta."):
        if any(k.startswith(prefix + "embeddings.") or k.startswith(prefix + "encoder.") for k in keys):
            return prefix
    return ""
