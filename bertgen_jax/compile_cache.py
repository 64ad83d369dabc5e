"""JAX's persistent compilation cache, switched on by call or by the BERTGEN_COMPILATION_CACHE variable.

With it, a second process that generates with the same shapes and options loads the compiled loop
from disk instead of compiling it again.
"""

from __future__ import annotations

import os
from typing import Optional

import jax

ENV_VAR = "BERTGEN_COMPILATION_CACHE"


def enable_persistent_compilation_cache(directory: Optional[str] = None) -> str:
    """Cache compiled XLA programs in `directory` (default: ~/.cache/bertgen_jax/xla)."""
    directory = os.path.expanduser(directory or os.path.join("~", ".cache", "bertgen_jax", "xla"))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    # Cache every program, even quick ones: the decode loops of small models compile in ~1 s.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def enable_from_environment() -> Optional[str]:
    directory = os.environ.get(ENV_VAR)
    return enable_persistent_compilation_cache(directory) if directory else None
