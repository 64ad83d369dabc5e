"""JAX's persistent compilation cache, switched on by call or by the BERTGEN_COMPILATION_CACHE variable,
and by default for training (`enable_for_training`).

With it, a second process that generates with the same shapes and options loads the compiled loop
from disk instead of compiling it again.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

ENV_VAR = "BERTGEN_COMPILATION_CACHE"
# Cache every program, even quick ones: the decode loops of small models compile in ~1 s.
CACHE_EVERY_PROGRAM = {"jax_persistent_cache_min_compile_time_secs": 0.0,
                       "jax_persistent_cache_min_entry_size_bytes": 0}


def default_cache_dir() -> str:
    """The per-user cache: $XDG_CACHE_HOME/bertgen_jax/xla, else ~/.cache/bertgen_jax/xla."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bertgen_jax", "xla")


def _make_cache_dir(directory: str) -> str:
    directory = os.path.expanduser(directory)
    os.makedirs(directory, exist_ok=True)
    return directory


def enable_persistent_compilation_cache(directory: Optional[str] = None) -> str:
    """Cache compiled XLA programs in `directory` (default: `default_cache_dir()`)."""
    import jax

    directory = _make_cache_dir(directory or default_cache_dir())
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        try:  # JAX decides once, at the first compile, whether a cache is used: let it decide again
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except (ImportError, AttributeError):
            pass
    for name, value in CACHE_EVERY_PROGRAM.items():
        jax.config.update(name, value)
    return directory


def enable_from_environment() -> Optional[str]:
    """$BERTGEN_COMPILATION_CACHE's cache. Before JAX is imported, through JAX's own variables (each
    option's name in capitals, read when JAX is imported): the package need not import JAX (~1 s) for
    it, e.g. in the `bertgen` process that re-executes itself with huge pages before doing anything
    (`launch.py`)."""
    directory = os.environ.get(ENV_VAR)
    if not directory:
        return None
    if "jax" in sys.modules:
        return enable_persistent_compilation_cache(directory)
    directory = _make_cache_dir(directory)
    for name, value in {"jax_compilation_cache_dir": directory, **CACHE_EVERY_PROGRAM}.items():
        os.environ[name.upper()] = str(value)
    return directory


def enable_for_training(setting: Optional[str] = "auto") -> Optional[str]:
    """Training's cache (on by default: compiling the step costs seconds to tens of seconds per
    padded shape): "auto" -> $BERTGEN_COMPILATION_CACHE if set, else `default_cache_dir()`; a path ->
    that directory; None, "" or "off" -> leave JAX's setting as it is. Returns the directory used."""
    if setting is None or str(setting).lower() in ("", "off", "none", "false", "0"):
        return None
    if setting == "auto":
        setting = os.environ.get(ENV_VAR) or default_cache_dir()
    try:
        return enable_persistent_compilation_cache(setting)
    except OSError as err:  # a read-only home: train without the cache rather than fail
        import logging

        logging.getLogger(__name__).warning("compilation cache %s not usable (%s); compiling without it", setting, err)
        return None
