"""Atomic file writes, the one helper for every file the project writes (config, tokenizer files,
checkpoints, generation_config.json, trainer and demo reports): readers see the old file or the new
one, never a mix. A leaf: only the standard library.
"""

from __future__ import annotations

import os
import secrets
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def _fsync_dir(directory: str) -> None:
    # Makes the renames themselves durable; not possible on every platform (Windows), so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path(final_path: str) -> str:
    # Hidden and with a foreign suffix, so no loader (ours or transformers') takes it for weights.
    folder, name = os.path.split(os.path.abspath(final_path))
    return os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = os.fspath(path)
    tmp = _temp_path(path)
    try:
        # 0o666 & ~umask, like open(); mkstemp would leave a private 0600 file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Text version of :func:`atomic_write_bytes` (config.json and friends)."""
    atomic_write_bytes(path, text.encode(encoding))
