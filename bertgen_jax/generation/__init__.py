"""Generation: the model-agnostic decoding loop (`loop`), transformers' logits processors
(`processors`) and the glue from user options to the loop (`options`: defaults, checks, shape
buckets, generation_config.json)."""

from .loop import GenerateOutput, compile_count, generate
from .options import (GENERATION_CONFIG_NAME, GENERATION_DEFAULTS, decoder_generate, encoder_decoder_generate,
                      read_generation_config, resolve_options, sampling_key, write_generation_config)
from .processors import (apply_min_length, apply_min_new_tokens, apply_no_repeat_ngram, apply_repetition_penalty,
                         apply_temperature, apply_top_k, apply_top_p)

__all__ = [
    "GenerateOutput", "generate", "compile_count",
    "GENERATION_CONFIG_NAME", "GENERATION_DEFAULTS", "decoder_generate", "encoder_decoder_generate",
    "read_generation_config", "resolve_options", "sampling_key", "write_generation_config",
    "apply_repetition_penalty", "apply_no_repeat_ngram", "apply_min_length", "apply_min_new_tokens",
    "apply_temperature", "apply_top_k", "apply_top_p",
]
