"""Resolve a local directory or a Hugging Face Hub repo id to a local directory of files.

Repo ids go through `huggingface_hub.snapshot_download`, so its cache (`HF_HOME`, `HF_HUB_CACHE`,
`cache_dir=`), revisions and offline mode (`HF_HUB_OFFLINE=1` or `local_files_only=True`) behave
as they do for transformers users.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

# Files any model, config or tokenizer may need; weights are filtered again by the loader.
DEFAULT_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.bin",
    "*.msgpack",
    "*.model",
    "*.txt",
)


def _offline_from_env() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it again so a late switch counts.
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def resolve_model_dir(
    path_or_repo_id: str | os.PathLike,
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    local_files_only: bool = False,
    allow_patterns: Optional[Iterable[str]] = None,
) -> str:
    """Return a local directory holding the files of `path_or_repo_id`.

    A path that exists locally is used as it is. Anything else is treated as a hub repo id.
    Raises FileNotFoundError / OSError with the id and the reason when it cannot be resolved.
    """
    path = os.fspath(path_or_repo_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path!r} is a file; expected a model directory or a hub repo id")
    looks_like_path = path.startswith((".", "/", "~")) or os.sep in path.strip("/").split("/", 1)[-1]
    if looks_like_path or path.count("/") > 1:
        raise FileNotFoundError(f"model directory {path!r} does not exist (and it is not a hub repo id)")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    offline = local_files_only or _offline_from_env()
    try:
        return snapshot_download(
            repo_id=path,
            revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=offline,
            allow_patterns=list(allow_patterns or DEFAULT_PATTERNS),
        )
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{path!r} (revision {revision or 'main'}) is not in the local hub cache and offline mode is on"
            if offline
            else f"could not download {path!r}: {err}"
        ) from err
    except HFValidationError as err:
        raise FileNotFoundError(f"{path!r} is neither a local directory nor a valid hub repo id: {err}") from err
    except Exception as err:  # network errors, 404s, gated repos: one message naming the id
        raise OSError(f"could not resolve {path!r} (revision {revision or 'main'}): {err}") from err
