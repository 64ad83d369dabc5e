"""bertgen_jax: BertGeneration (bert2bert, roberta2roberta) in JAX/Flax, with transformers parity.

The tokenizers load here at once; the names that need jax (config, models, pipeline, quantization) load on
first use, so `from bertgen_jax.tokenization import AutoTokenizer` (a tokenizing server) needs no jax or flax.
"""

import os as _os

from .tokenization import AutoTokenizer, BertGenerationTokenizer

__version__ = "0.1.0"

_CONFIG_NAMES = ("BertGenerationConfig", "EncoderDecoderConfig", "load_config", "BertConfig", "RobertaConfig")
_FAMILY_NAMES = ("BertModel", "BertLMHeadModel", "RobertaModel", "RobertaForCausalLM")
_MODEL_NAMES = ("BertGenerationDecoder", "BertGenerationEncoder", "CausalLMOutput", "EncoderDecoderModel",
                "EncoderOutput", "Seq2SeqLMOutput", "shift_tokens_right", "quantize_model")

__all__ = [
    *_CONFIG_NAMES,
    *_MODEL_NAMES,
    *_FAMILY_NAMES,
    "AutoTokenizer",
    "BertGenerationTokenizer",
    "pipeline",
    "enable_persistent_compilation_cache",
    "QuantizationConfig",
]

if _os.environ.get("BERTGEN_COMPILATION_CACHE"):  # set before anything compiles (compile_cache.ENV_VAR)
    from .compile_cache import enable_from_environment as _enable_cache_from_env

    _enable_cache_from_env()


def __getattr__(name: str):
    if name in _CONFIG_NAMES:
        from . import config as module
    elif name in _MODEL_NAMES:
        from . import models as module
    elif name in _FAMILY_NAMES:
        from . import models as module
    elif name == "pipeline":
        # The function, not the submodule of the same name: `from .pipeline import` loads the submodule
        # without asking this package for the attribute; keeping the function in globals() settles the name.
        from .pipeline import pipeline as function

        globals()["pipeline"] = function
        return function
    elif name == "enable_persistent_compilation_cache":
        from . import compile_cache as module
    elif name == "QuantizationConfig":
        from . import quantization as module
    else:
        raise AttributeError(f"module 'bertgen_jax' has no attribute {name!r}")
    return getattr(module, name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
