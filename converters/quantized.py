"""This project's int8/int4 checkpoint format (see bertgen_jax/quantization.py for the scheme).

Each quantized weight `<module>.weight` of the transformers layout is stored as `<module>.qweight`
(torch orientation: int8 [out, in], or uint8 [out, in/2] with two int4 values per byte) and
`<module>.qweight_scale`; every other tensor keeps transformers' name. In the params tree such a
weight is a leaf dict {"qvalue", "scale"} in the Flax orientation (kernels [in, out]; embedding
tables [vocab, hidden] as they are). Reading is a per-leaf hook of `mapping.load_into_tree`, so a
quantized checkpoint goes through the same key walk, with the same missing / unexpected key checks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .mapping import CheckpointKeyError, flatten, torch_key

QVALUE, SCALE = "qvalue", "scale"  # the keys of a quantized leaf in the params tree


def quantized_state_dict(params: dict) -> dict[str, np.ndarray]:
    """A params tree holding quantized leaves -> the tensors save_pretrained writes."""
    out = {}
    for path, value in flatten(params).items():
        value = np.asarray(value)
        if len(path) > 1 and path[-2] in ("kernel", "embedding"):  # inside a quantized leaf
            module = torch_key(path[:-1])[: -len(".weight")]
            kernel = path[-2] == "kernel"  # Dense [in, out] -> torch [out, in]
            name = f"{module}.qweight" if path[-1] == QVALUE else f"{module}.qweight_scale"
            out[name] = np.ascontiguousarray(value.T if kernel else value)
        else:
            out[torch_key(path)] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
    return out


def _dequantized_shape(qvalue: np.ndarray) -> tuple:
    # uint8 packs two int4 values per byte along the input dim (rows of a kernel, columns of a table).
    rows, cols = qvalue.shape
    return (rows, cols * 2) if qvalue.dtype == np.uint8 else (rows, cols)


def qweight_hook(scale_dtype, source: str) -> Callable[[tuple, str, dict, Any], Optional[dict]]:
    """The `leaf_hook` of `load_into_tree` for this format: returns the quantized leaf of `path`
    (popping its two tensors from `remaining`), or None where the checkpoint holds a plain tensor."""
    def hook(path: tuple, key: str, remaining: dict, spec) -> Optional[dict]:
        if not key.endswith(".weight"):
            return None
        base = key[: -len(".weight")]
        if f"{base}.qweight" not in remaining:
            return None
        qvalue = np.asarray(remaining.pop(f"{base}.qweight"))
        scale = remaining.pop(f"{base}.qweight_scale", None)
        if scale is None:
            raise CheckpointKeyError(f"{source}: {base}.qweight has no {base}.qweight_scale")
        scale = np.asarray(scale)
        kernel = path[-1] == "kernel"
        got = _dequantized_shape(qvalue)[::-1] if kernel else _dequantized_shape(qvalue)
        if got != tuple(spec.shape):
            raise CheckpointKeyError(f"{source}: {base}.qweight dequantizes to shape {got}, "
                                     f"the model config expects {tuple(spec.shape)} for {key}")
        if kernel:
            qvalue, scale = qvalue.T, scale.T
        return {QVALUE: np.ascontiguousarray(qvalue), SCALE: np.ascontiguousarray(scale).astype(scale_dtype)}

    return hook
