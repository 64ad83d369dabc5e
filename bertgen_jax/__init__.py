"""bertgen_jax: BertGeneration (bert2bert, roberta2roberta) in JAX/Flax, with transformers parity."""

import importlib as _importlib

from .compile_cache import enable_from_environment as _enable_cache_from_env
from .compile_cache import enable_persistent_compilation_cache

# Public names load their module on first use (PEP 562), so that `bertgen_jax.serving` and the
# tokenizers can be imported without flax or the model code.
_LAZY = {
    "BertGenerationConfig": "config", "EncoderDecoderConfig": "config", "load_config": "config",
    "BertGenerationDecoder": "models", "BertGenerationEncoder": "models", "CausalLMOutput": "models",
    "EncoderDecoderModel": "models", "EncoderOutput": "models", "Seq2SeqLMOutput": "models",
    "shift_tokens_right": "models", "pipeline": "pipeline", "QuantizationConfig": "quantization",
    "quantize_model": "models", "AutoTokenizer": "tokenization", "BertGenerationTokenizer": "tokenization",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"
_enable_cache_from_env()

__all__ = [
    "BertGenerationConfig",
    "EncoderDecoderConfig",
    "load_config",
    "BertGenerationEncoder",
    "BertGenerationDecoder",
    "EncoderDecoderModel",
    "EncoderOutput",
    "CausalLMOutput",
    "Seq2SeqLMOutput",
    "shift_tokens_right",
    "AutoTokenizer",
    "BertGenerationTokenizer",
    "pipeline",
    "enable_persistent_compilation_cache",
    "QuantizationConfig",
    "quantize_model",
]
