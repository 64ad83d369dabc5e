"""`bertgen export`: the compiled generate serialized with jax.export, to run without the model code."""

from __future__ import annotations

from ..serving import export as _export

NAME = "export"
HELP = "serialize the compiled generate with jax.export, to run without the model code"
DESCRIPTION = ("Export generate (encoder + compiled decoding loop) with jax.export for the given batch sizes, input "
               "lengths and decoding options; parameters (safetensors) and tokenizer files go beside it. "
               "bertgen_jax.serving.load_exported(DIR) runs it with JAX alone.")
add_arguments = _export.add_arguments
run = _export.run
