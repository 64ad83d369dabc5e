"""Checkpoint tensor files <-> ``{name: numpy array}``, with no model knowledge.

Reads what transformers' ``save_pretrained`` writes (``model.safetensors``, a sharded
``model.safetensors.index.json``, ``pytorch_model.bin`` and its sharded index) and writes
safetensors checkpoints transformers loads back, atomically.

Dtypes are kept as stored. bfloat16 (and float8) tensors come back as ``ml_dtypes`` numpy
arrays (``ml_dtypes.bfloat16``; jax ships ml_dtypes and ``jnp.asarray`` takes them as they are),
never silently upcast; callers wanting float32 call ``.astype(np.float32)``. Saving such
arrays writes BF16/F8 safetensors again.

Safetensors files are read through ``safetensors.safe_open(framework="np")``: torch is never
imported on that path. ``pytorch_model.bin`` needs the optional ``torch`` extra.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from typing import Dict, List, Mapping, Optional, Tuple, Union

import ml_dtypes
import numpy as np

from .files import (_fsync_dir, _fsync_file, _remove_quietly, _temp_path, atomic_write_bytes,  # noqa: F401
                    atomic_write_text)

PathLike = Union[str, "os.PathLike[str]"]
StateDict = Dict[str, np.ndarray]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

# Kinds returned by find_weights_files, in transformers' order of preference.
SAFETENSORS = "safetensors"
SAFETENSORS_SHARDED = "safetensors-sharded"
PYTORCH = "pytorch"
PYTORCH_SHARDED = "pytorch-sharded"
_PREFERENCE = (
    (SAFETENSORS, SAFE_WEIGHTS_NAME),
    (SAFETENSORS_SHARDED, SAFE_WEIGHTS_INDEX_NAME),
    (PYTORCH, WEIGHTS_NAME),
    (PYTORCH_SHARDED, WEIGHTS_INDEX_NAME),
)

# Shard names as transformers / huggingface_hub write them: model-00001-of-00003.safetensors
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# Backup links made while a sharded save overwrites shards of the previous one (see _save_sharded).
_BACKUP_RE = re.compile(r"\.model-\d{5}-of-\d{5}\.[0-9a-f]{12}\.bak\.safetensors")

# numpy dtype names the safetensors numpy writer understands.
_SAVABLE_DTYPES = {
    "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
    "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool", "complex64",
}


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated or inconsistent; the message names the file."""


class MissingShardError(CheckpointError, FileNotFoundError):
    """An index names a shard file that does not exist (both a ValueError and a FileNotFoundError)."""


# ----------------------------------------------------------------------------- finding files


def find_weights_files(model_dir: PathLike) -> Tuple[str, List[str]]:
    """Return ``(kind, files)`` for the weights in ``model_dir``, preferring what transformers prefers.

    kind is one of "safetensors", "safetensors-sharded", "pytorch", "pytorch-sharded".
    files[0] is the file to hand to :func:`load_state_dict` (the weights file, or the index
    for sharded kinds); for sharded kinds the shard paths follow, in index order.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    for kind, name in _PREFERENCE:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            if kind in (SAFETENSORS, PYTORCH):
                return kind, [path]
            return kind, [path, *_shard_paths(path, _read_index(path))]
    looked_for = ", ".join(name for _, name in _PREFERENCE)
    raise FileNotFoundError(f"no model weights found in {model_dir!r} (looked for {looked_for})")


# ----------------------------------------------------------------------------- loading


def load_state_dict(model_dir_or_file: PathLike) -> StateDict:
    """Load every tensor of a checkpoint directory or weights file as ``{name: np.ndarray}``.

    Accepts a directory (see :func:`find_weights_files`), a ``.safetensors`` file, a ``.bin``
    file or a ``*.index.json``. Corrupt or truncated files raise :class:`CheckpointError`
    (a ValueError) naming the file.
    """
    path = os.fspath(model_dir_or_file)
    if os.path.isdir(path):
        kind, files = find_weights_files(path)
        path = files[0]
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
    else:
        kind = _kind_of_file(path)
    if kind == SAFETENSORS:
        return _read_safetensors(path)
    if kind == PYTORCH:
        return _read_torch_bin(path)
    return _read_sharded(path)


def _kind_of_file(path: str) -> str:
    name = os.path.basename(path)
    if name.endswith(".bin.index.json"):
        return PYTORCH_SHARDED
    if name.endswith(".index.json"):
        # Other index names: decided by the shards they list.
        shards = _shard_paths(path, _read_index(path))
        return PYTORCH_SHARDED if shards and shards[0].endswith(".bin") else SAFETENSORS_SHARDED
    if name.endswith((".bin", ".pt", ".pth")):
        return PYTORCH
    return SAFETENSORS


def _corrupt(path: str, reason: object) -> CheckpointError:
    return CheckpointError(f"checkpoint file {path!r} is corrupt or truncated: {reason}")


def _read_safetensors(path: str) -> StateDict:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            return {key: _get_np_tensor(f, key, path) for key in f.keys()}
    except (CheckpointError, OSError):  # OSError: missing file or no permission, not corruption
        raise
    except Exception as err:  # SafetensorError: bad header, short data, ...
        raise _corrupt(path, err) from err


def _get_np_tensor(handle, key: str, path: str) -> np.ndarray:
    try:
        return handle.get_tensor(key)
    except Exception as np_err:
        # Older safetensors releases cannot hand bf16/f8 to numpy; jax can, as ml_dtypes arrays.
        try:
            return _get_tensor_via_jax(path, key)
        except Exception:
            raise _corrupt(path, f"tensor {key!r}: {np_err}") from np_err


def _get_tensor_via_jax(path: str, key: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(path, framework="flax") as f:
        return np.asarray(f.get_tensor(key))


def _read_index(index_path: str) -> dict:
    """Parse a sharded-checkpoint index and check its shape."""
    try:
        with open(index_path, "r", encoding="utf-8") as f:
            index = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(index_path, f"invalid JSON ({err})") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise _corrupt(index_path, 'expected an object with a "weight_map" of tensor name -> shard file')
    return index


def _shard_paths(index_path: str, index: dict) -> List[str]:
    folder = os.path.dirname(index_path)
    shards = dict.fromkeys(index["weight_map"].values())  # unique, in order
    return [os.path.join(folder, name) for name in shards]


def _read_sharded(index_path: str) -> StateDict:
    index = _read_index(index_path)
    is_bin = _kind_of_file(index_path) == PYTORCH_SHARDED
    shards = _shard_paths(index_path, index)
    for shard in shards:  # check them all before reading gigabytes
        if not os.path.isfile(shard):
            raise MissingShardError(
                f"shard {os.path.basename(shard)!r} listed in {index_path!r} does not exist ({shard!r})"
            )
    state: StateDict = {}
    origin: Dict[str, str] = {}
    for shard in shards:
        tensors = _read_torch_bin(shard) if is_bin else _read_safetensors(shard)
        for key, value in tensors.items():
            if key in origin:
                raise CheckpointError(
                    f"tensor {key!r} appears in both {origin[key]!r} and {shard!r} (index {index_path!r})"
                )
            origin[key] = shard
            state[key] = value
    folder = os.path.dirname(index_path)
    for key, shard_name in index["weight_map"].items():
        if origin.get(key) != os.path.join(folder, shard_name):
            raise CheckpointError(
                f"tensor {key!r} is listed in {index_path!r} under shard {shard_name!r} but that shard does not hold it"
            )
    return state


def _import_torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "loading pytorch_model.bin checkpoints needs PyTorch; install the torch extra: "
            "pip install bertgen-jax[torch]  (or convert the checkpoint to safetensors)"
        ) from err
    return torch


def _read_torch_bin(path: str) -> StateDict:
    torch = _import_torch()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # weights_only refusing an object and a garbled pickle look alike from here.
        raise CheckpointError(
            f"checkpoint file {path!r} is corrupt or truncated, or holds objects that "
            f"torch.load(weights_only=True) refuses: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint file {path!r} does not hold a state dict (got {type(loaded).__name__})")
    state: StateDict = {}
    seen_storage = set()
    for key, tensor in loaded.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"checkpoint file {path!r}: entry {key!r} is a {type(tensor).__name__}, not a tensor")
        array = _torch_to_numpy(torch, tensor)
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storage and tensor.numel():
            array = array.copy()  # tied weights: give each name its own buffer
        seen_storage.add(storage)
        state[key] = array
    return state


def _torch_to_numpy(torch, tensor) -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    # numpy lacks these dtypes; reinterpret the bits as the matching ml_dtypes type.
    special = {
        torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
        getattr(torch, "float8_e4m3fn", None): (torch.uint8, ml_dtypes.float8_e4m3fn),
        getattr(torch, "float8_e5m2", None): (torch.uint8, ml_dtypes.float8_e5m2),
    }
    if tensor.dtype in special:
        bits, np_dtype = special[tensor.dtype]
        return tensor.view(bits).numpy().view(np_dtype)
    return tensor.numpy()


# ----------------------------------------------------------------------------- backups of shards being replaced


def _backup_path(shard_path: str) -> str:
    # Must still end in ".safetensors": transformers picks its reader by the shard's suffix.
    folder, name = os.path.split(os.path.abspath(shard_path))
    return os.path.join(folder, f".{name[: -len('.safetensors')]}.{secrets.token_hex(6)}.bak.safetensors")


# ----------------------------------------------------------------------------- saving

_SIZE_UNITS = {
    "TIB": 2**40, "GIB": 2**30, "MIB": 2**20, "KIB": 2**10,
    "TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1,
}


def parse_size(size: Union[int, str]) -> int:
    """Bytes from an int or a string such as "200MB" (10**6) or "2GiB" (2**30), as transformers reads them."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        value = int(size)
    elif isinstance(size, str):
        text = size.strip().upper()
        unit = next((u for u in _SIZE_UNITS if text.endswith(u)), None)
        try:
            value = int(float(text[: -len(unit)] if unit else text) * _SIZE_UNITS[unit or "B"])
        except ValueError:
            raise ValueError(f"cannot parse size {size!r}; use bytes or e.g. '200MB', '5GB', '2GiB'") from None
    else:
        raise TypeError(f"max_shard_size must be an int or a string like '200MB', got {type(size).__name__}")
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _prepare_tensors(state_dict: Mapping[str, object]) -> StateDict:
    """Numpy, C-contiguous copies where needed, savable dtypes only."""
    tensors: StateDict = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be strings, got {key!r}")
        # The safetensors numpy writer copies nbytes from each array's data pointer, so a
        # strided view would be written wrongly: make every array C-contiguous. Aliased
        # arrays (tied weights, views of one buffer) are fine once contiguous: each is
        # written out as its own bytes.
        array = np.ascontiguousarray(np.asarray(value))
        if array.dtype.name not in _SAVABLE_DTYPES:
            raise TypeError(f"tensor {key!r} has dtype {array.dtype}, which safetensors cannot store")
        tensors[key] = array
    return tensors


def _plan_shards(tensors: StateDict, max_shard_size: Optional[int]) -> List[List[str]]:
    """Split keys in order like huggingface_hub: a new shard when the next tensor would overflow."""
    if max_shard_size is None:
        return [list(tensors)]
    shards: List[List[str]] = []
    current: List[str] = []
    current_size = 0
    for key, array in tensors.items():
        size = array.nbytes
        if size > max_shard_size:  # too big for any shard: alone in its own
            shards.append([key])
            continue
        if current and current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(key)
        current_size += size
    if current or not shards:
        shards.append(current)
    return shards


def _shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _write_safetensors(tensors: StateDict, path: str, metadata: Dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, path, metadata=metadata)


def save_state_dict(
    state_dict: Mapping[str, object],
    directory: PathLike,
    *,
    metadata: Optional[Mapping[str, str]] = None,
    max_shard_size: Union[int, str, None] = None,
) -> List[str]:
    """Write ``state_dict`` as ``model.safetensors`` (or transformers-style shards + index) in ``directory``.

    ``metadata`` defaults to ``{"format": "pt"}``; "format": "pt" is added when missing because
    transformers refuses safetensors files without it. With ``max_shard_size`` (bytes, or a string
    like "200MB") the tensors are split in order into ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json``; one shard's worth is written as a plain ``model.safetensors``.

    Atomic: every file goes to a hidden temp name, is fsynced, then renamed into place, the
    index last; files of a previous save are removed only once the new checkpoint is complete.
    If the save is interrupted at any point the directory still loads as the previous
    checkpoint or as the new one. Returns the written file paths (index first when sharded).
    """
    directory = os.fspath(directory)
    tensors = _prepare_tensors(state_dict)
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    shards = _plan_shards(tensors, None if max_shard_size is None else parse_size(max_shard_size))
    os.makedirs(directory, exist_ok=True)
    if len(shards) == 1:
        return [_save_single(tensors, directory, meta)]
    return _save_sharded(tensors, shards, directory, meta)


def _save_single(tensors: StateDict, directory: str, meta: Dict[str, str]) -> str:
    final = os.path.join(directory, SAFE_WEIGHTS_NAME)
    tmp = _temp_path(final)
    try:
        _write_safetensors(tensors, tmp, meta)
        _fsync_file(tmp)
        os.replace(tmp, final)  # the new checkpoint is live from here (preferred over an index)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(directory)
    # Stale shards of an earlier sharded save: index first, so no index points at missing shards.
    _remove_quietly(os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME))
    _remove_stale_shards(directory, keep=())
    return final


def _save_sharded(tensors: StateDict, shards: List[List[str]], directory: str, meta: Dict[str, str]) -> List[str]:
    names = [_shard_name(i, len(shards)) for i in range(len(shards))]
    weight_map = {key: name for name, keys in zip(names, shards) for key in keys}
    index = {
        "metadata": {
            "total_parameters": int(sum(a.size for a in tensors.values())),
            "total_size": int(sum(a.nbytes for a in tensors.values())),
        },
        "weight_map": weight_map,
    }
    index_path = os.path.join(directory, SAFE_WEIGHTS_INDEX_NAME)
    temps: Dict[str, str] = {}  # final path -> temp path, until renamed
    try:
        for name, keys in zip(names, shards):
            final = os.path.join(directory, name)
            temps[final] = _temp_path(final)
            _write_safetensors({k: tensors[k] for k in keys}, temps[final], meta)
            _fsync_file(temps[final])
        temps[index_path] = _temp_path(index_path)
        index_text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        with open(temps[index_path], "w", encoding="utf-8") as f:
            f.write(index_text)
            f.flush()
            os.fsync(f.fileno())
        # Shard names of a previous sharded save may be reused; keep it loadable meanwhile.
        _protect_previous_shards(directory, index_path, set(names))
        for final, tmp in list(temps.items()):
            if final != index_path:
                os.replace(tmp, final)
                del temps[final]
        _fsync_dir(directory)
        os.replace(temps.pop(index_path), index_path)  # the new checkpoint is live from here
        _fsync_dir(directory)
    except BaseException:
        for tmp in temps.values():
            _remove_quietly(tmp)
        raise
    # A stale single file would shadow the new index; stale shards and backups are garbage now.
    _remove_quietly(os.path.join(directory, SAFE_WEIGHTS_NAME))
    _remove_stale_shards(directory, keep=names)
    return [index_path] + [os.path.join(directory, n) for n in names]


def _remove_stale_shards(directory: str, keep) -> None:
    """Delete shards (and backup links) of earlier saves; only once the new checkpoint is live."""
    for name in os.listdir(directory):
        if (_SHARD_RE.fullmatch(name) and name not in keep) or _BACKUP_RE.fullmatch(name):
            _remove_quietly(os.path.join(directory, name))


def _protect_previous_shards(directory: str, index_path: str, new_names: set) -> None:
    """Point the previous index at backup links of the shards about to be overwritten.

    Without this, a crash between renaming new shards over old ones and renaming the new
    index would leave the old index reading a mix of old and new tensors. The backups stay
    referenced by the old index until the new index replaces it, then are deleted.
    """
    if not os.path.isfile(index_path):
        return
    try:
        old_index = _read_index(index_path)
    except CheckpointError:
        return  # the previous checkpoint was unreadable anyway
    colliding = {n for n in old_index["weight_map"].values() if n in new_names}
    colliding = {n for n in colliding if os.path.isfile(os.path.join(directory, n))}
    if not colliding:
        return
    renamed: Dict[str, str] = {}
    try:
        for name in sorted(colliding):
            src = os.path.join(directory, name)
            backup = _backup_path(src)
            _link_or_copy(src, backup)
            renamed[name] = backup
        old_index["weight_map"] = {
            k: os.path.basename(renamed.get(v, v)) for k, v in old_index["weight_map"].items()
        }
        atomic_write_text(index_path, json.dumps(old_index, indent=2, sort_keys=True) + "\n")
    except BaseException:
        for backup in renamed.values():
            _remove_quietly(backup)
        raise


def _link_or_copy(src: str, dst: str) -> None:
    # A hard link costs nothing; fall back to a copy where the filesystem has none.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        _fsync_file(dst)


def release_freed_host_memory() -> None:
    """Hand memory freed by a load (the numpy state dict, transposed copies) back to the OS.

    glibc keeps freed chunks below its dynamic mmap threshold in the heap, so after converting a
    checkpoint the process would otherwise hold about twice the parameter bytes. Best effort: a no-op
    where there is no glibc.
    """
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: glibc's, when it is glibc
    except (OSError, AttributeError):
        return
    trim(0)
