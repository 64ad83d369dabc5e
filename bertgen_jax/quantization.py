"""Weight-only int8 / int4 quantization of the Dense kernels (and, if asked, the embedding tables).

    model = EncoderDecoderModel.from_pretrained(path, quantization="int8")      # or "int4"
    model = EncoderDecoderModel.from_pretrained(path, quantization=QuantizationConfig("int4", group_size=64))
    model = quantize_model(float_model, "int8")                                  # a new model; the float one is kept

Schemes (symmetric, no zero point):
  int8  per output channel: scale[out] = max|w[:, out]| / 127, q = round(w / scale) in [-127, 127].
  int4  grouped along the input dim (groups of `group_size` rows): scale[in/g, out] = max|w| / 7,
        q in [-7, 7] (-8 is representable, never produced), stored PACKED two per byte: uint8 [in/2, out],
        row 2i in the low nibble, row 2i+1 in the high nibble, each nibble = q + 8.
        A kernel whose input dim is odd (no even group divides it) falls back to int8.
Scales are stored in the compute dtype (`model.dtype`), rounded *up* to it so that no weight is clipped
and |w - dequant(q)| <= scale / 2 holds per element.

In the params tree a quantized leaf replaces the `kernel` (or `embedding`) array by a dict
`{"qvalue": int8 | uint8, "scale": ...}` under the same key. Kernels keep the Dense orientation
[in, out]; embedding tables keep [vocab, hidden] and are quantized per row (a row is an output
channel of the tied LM head). `dequantize_tree` (called by the models inside every jitted apply)
turns these back into float arrays: a convert, a multiply and, for int4, two shifts, fused by XLA into
one pass, so between calls only the integers are resident. Within a call the float kernels are
temporaries, and inside the generation `while_loop` they are loop-invariant: XLA hoists them, keeping
a float copy of every decoder kernel for the whole generate call. Modules whose Dense layers are
`QuantDense` (with `dequantize_tree(..., keep_kernels=True)`) dequantize each kernel at its use, tied
to the layer input, so one float kernel is live at a time (see `QuantDense`).

Saved format (this project's, transformers cannot load it): model.safetensors holds, for each
quantized weight `<module>.weight` of the transformers layout, `<module>.qweight` (torch orientation:
int8 [out, in] or uint8 [out, in/2] packed as above along `in`; embeddings [vocab, hidden(/2)]) and
`<module>.qweight_scale` ([out] for int8, [out, in/g] for int4); every other tensor is stored as
transformers names it. The params tree is stored as it is held (a tied encoder is not expanded).
config.json gets `quantization_config` ({"quant_method": "bertgen_jax", "mode": ..., ...}) and the
safetensors metadata says {"format": "bertgen_jax_quantized"}: transformers warns "Unknown quantization
type" and then refuses the file ("Incompatible safetensors file ... but bertgen_jax_quantized") rather
than loading it with newly initialised kernels.
`bertgen convert` of such a directory writes the dequantized float weights, which transformers loads.

Where the pieces live: this module is the array math and the params-tree walk (pure, imports nothing
of the project); `QuantDense` is with the linen modules (`modules.py`); quantizing, dequantizing and
loading a model are with the models (`models.py`); the `.qweight` file format is
`converters/quantized.py`, a per-leaf hook of the one checkpoint key walk.

Why not a library: qwix (the JAX quantization library, alpha at 0.1.x) quantizes by intercepting the
linen module's dot_generals and holds its own QArray leaves; that replaces `model.module` and the
params tree layout that the converters, generation and save/load here rely on, and it stores int4 as
`jnp.int4`, which safetensors cannot write. The scheme above is ~100 lines of numpy and jnp.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

QUANT_METHOD = "bertgen_jax"
MODES = ("int8", "int4")
QVALUE, SCALE = "qvalue", "scale"
_QMAX = {"int8": 127, "int4": 7}

Patterns = Union[None, str, Sequence[str]]


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """Which weights to quantize and how.

    Attributes:
      mode: "int8" (per output channel) or "int4" (grouped along the input dim, packed two per byte).
      group_size: int4 group length along the input dim (even; a smaller even divisor is used when the
        input dim is not a multiple of it).
      include: regex, or list of regexes, searched in the module path of a candidate weight
        ("decoder/bert/encoder/layer_0/attention/self/query"); None = every candidate. Candidates are
        all Dense kernels (attention q/k/v/output, feed-forward, enc_to_dec_proj, an untied
        lm_head/decoder) and, with quantize_embeddings, the embedding tables.
      exclude: regex or list of regexes; a matching candidate stays in float.
      quantize_embeddings: also quantize nn.Embed tables (word, position, relative distance), per row.
    """

    SAFETENSORS_FORMAT = "bertgen_jax_quantized"  # the "format" metadata of saved quantized weights

    mode: str = "int8"
    group_size: int = 128
    include: Patterns = None
    exclude: Patterns = None
    quantize_embeddings: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"quantization mode {self.mode!r} is not one of {', '.join(map(repr, MODES))}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0 \
                or self.group_size % 2:
            raise ValueError(f"group_size must be a positive even integer, got {self.group_size!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))  # hashable, frozen
            for pattern in _patterns(getattr(self, name)):
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{name} pattern {pattern!r} is not a valid regex: {err}") from None

    @classmethod
    def coerce(cls, value) -> "QuantizationConfig":
        """"int8" / "int4" / a dict (as in config.json) / a QuantizationConfig -> QuantizationConfig."""
        if isinstance(value, QuantizationConfig):
            return value
        if isinstance(value, str):
            if value not in MODES:
                raise ValueError(f"quantization={value!r} is not one of {', '.join(map(repr, MODES))} "
                                 "(or pass a QuantizationConfig)")
            return cls(mode=value)
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise TypeError(f"quantization must be None, 'int8', 'int4' or a QuantizationConfig, got {value!r}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for name in ("include", "exclude"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        return {"quant_method": QUANT_METHOD, **out}

    @classmethod
    def from_dict(cls, values: Mapping) -> "QuantizationConfig":
        values = dict(values)
        method = values.pop("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise ValueError(f"quantization_config has quant_method {method!r}; only {QUANT_METHOD!r} "
                             "(this project's int8/int4 format) can be loaded here")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in fields})

    def selects(self, module_path: str) -> bool:
        if self.include is not None and not any(re.search(p, module_path) for p in _patterns(self.include)):
            return False
        return not any(re.search(p, module_path) for p in _patterns(self.exclude))


def _patterns(value: Patterns) -> tuple:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


# ----------------------------------------------------------------------------- one array
def _scale_in(dtype, scale32: np.ndarray) -> np.ndarray:
    """float32 scales -> `dtype`, rounded up where the cast rounded down (so no weight gets clipped)."""
    dtype = jnp.dtype(dtype)
    stored = scale32.astype(dtype)
    low = stored.astype(np.float32) < scale32
    if low.any():  # one ulp up: x * (1 + eps) lands at or above the next representable value
        bumped = (scale32 * np.float32(1 + float(jnp.finfo(dtype).eps))).astype(dtype)
        stored = np.where(low, bumped, stored)
    return stored


def int4_group_size(in_features: int, group_size: int) -> Optional[int]:
    """The group length used for an input dim: the largest even divisor <= group_size (None if odd)."""
    if in_features % 2:
        return None
    group = min(group_size, in_features) // 2 * 2
    while in_features % group:
        group -= 2
    return group


def quantize_kernel(w, mode: str = "int8", group_size: int = 128, scale_dtype=np.float32) -> dict:
    """Quantize a Dense kernel w [in, out] on the host (numpy). Returns {"qvalue", "scale"}.

    int4 falls back to int8 when `in` is odd (the nibbles pair up rows).
    """
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"can only quantize 2-D weights, got shape {w.shape}")
    group = int4_group_size(w.shape[0], group_size) if mode == "int4" else None
    if group is None:  # int8, per output channel
        scale = _scale_in(scale_dtype, np.abs(w).max(axis=0) / _QMAX["int8"])
        full = scale.astype(np.float32)[None, :]
        q = np.rint(w / np.where(full == 0, 1, full))
        return {QVALUE: np.clip(q, -127, 127).astype(np.int8), SCALE: scale}
    in_features, out = w.shape
    grouped = w.reshape(in_features // group, group, out)
    scale = _scale_in(scale_dtype, np.abs(grouped).max(axis=1) / _QMAX["int4"])  # [in/g, out]
    full = scale.astype(np.float32)[:, None, :]
    q = np.clip(np.rint(grouped / np.where(full == 0, 1, full)), -8, 7).reshape(in_features, out)
    nibbles = (q + 8).astype(np.uint8)
    return {QVALUE: nibbles[0::2] | (nibbles[1::2] << 4), SCALE: scale}


def dequantize_kernel(leaf: Mapping, dtype=jnp.float32):
    """{"qvalue", "scale"} -> float kernel [in, out] in `dtype` (jnp; traceable)."""
    q, scale = leaf[QVALUE], leaf[SCALE]
    scale = jnp.asarray(scale).astype(jnp.float32)
    if q.dtype == jnp.int8:
        return (q.astype(jnp.float32) * scale[None, :]).astype(dtype)
    q = jnp.asarray(q)
    low = (q & 0xF).astype(jnp.int8) - 8
    high = (q >> 4).astype(jnp.int8) - 8
    rows = jnp.stack([low, high], axis=1).reshape(2 * q.shape[0], q.shape[1])  # re-interleave rows
    groups = scale.shape[0]
    w = rows.astype(jnp.float32).reshape(groups, -1, q.shape[1]) * scale[:, None, :]
    return w.reshape(rows.shape).astype(dtype)


def is_quantized_leaf(node) -> bool:
    return isinstance(node, Mapping) and set(node) == {QVALUE, SCALE}


def _quantize_leaf(name: str, array, config: QuantizationConfig, scale_dtype) -> dict:
    if name == "embedding":  # [vocab, hidden]: quantize per row = per output channel of the tied head
        leaf = quantize_kernel(np.asarray(array).T, config.mode, config.group_size, scale_dtype)
        return {QVALUE: leaf[QVALUE].T, SCALE: leaf[SCALE].T}
    return quantize_kernel(array, config.mode, config.group_size, scale_dtype)


def _dequantize_leaf(name: str, leaf: Mapping, dtype):
    if name == "embedding":
        return dequantize_kernel({QVALUE: leaf[QVALUE].T, SCALE: leaf[SCALE].T}, dtype).T
    return dequantize_kernel(leaf, dtype)


# ----------------------------------------------------------------------------- trees
def _candidate(path: tuple, value, config: QuantizationConfig) -> bool:
    if np.ndim(value) != 2:
        return False
    if path[-1] == "kernel" or (path[-1] == "embedding" and config.quantize_embeddings):
        return config.selects("/".join(path[:-1]))
    return False


def quantize_params(params: dict, config, scale_dtype=jnp.float32) -> dict:
    """Quantize the selected leaves of a params tree on the host; returns a tree of numpy arrays."""
    config = QuantizationConfig.coerce(config)
    out = {}
    for path, value in flatten_dict(params).items():
        out[path] = (_quantize_leaf(path[-1], value, config, scale_dtype) if _candidate(path, value, config)
                     else np.asarray(value))
    return unflatten_dict(_flatten_leaves(out))


def _flatten_leaves(flat: dict) -> dict:
    """Expand quantized-leaf dicts into their two arrays so `unflatten` rebuilds them as sub-dicts."""
    out = {}
    for path, value in flat.items():
        if isinstance(value, dict):
            for key, array in value.items():
                out[path + (key,)] = array
        else:
            out[path] = value
    return out


def dequantize_tree(params, dtype=jnp.float32, *, keep_kernels: bool = False):
    """Replace every quantized leaf by its float array in `dtype`; other leaves are returned as they are.

    Pure jnp on the tree structure, so it runs inside `jax.jit` (the models call it in every apply).
    keep_kernels: leave quantized Dense kernels as they are, for modules built with `QuantDense`.
    """
    def walk(node, name):
        if is_quantized_leaf(node):
            return node if keep_kernels and name == "kernel" else _dequantize_leaf(name, node, dtype)
        if isinstance(node, Mapping):
            return {key: walk(value, key) for key, value in node.items()}
        return node

    return walk(params, None)


def tree_nbytes(tree) -> int:
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)))
