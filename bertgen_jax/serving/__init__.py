"""Serving: `jax.export` of the compiled generate, a loader that runs it without the model code, and an
HTTP server that batches requests. Importing this package loads neither flax nor the model code."""

from .loader import ExportedModel, ExportedOutput, ExportError, load_exported
from .options import OptionError

__all__ = ["ExportError", "ExportedModel", "ExportedOutput", "OptionError", "load_exported"]
