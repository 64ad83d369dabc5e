"""bertgen_jax: BertGeneration (bert2bert, roberta2roberta) in JAX/Flax, with transformers parity."""

from .config import BertGenerationConfig, EncoderDecoderConfig, load_config
from .models import (
    BertGenerationDecoder,
    BertGenerationEncoder,
    CausalLMOutput,
    EncoderDecoderModel,
    EncoderOutput,
    Seq2SeqLMOutput,
    shift_tokens_right,
)
from .pipeline import pipeline
from .tokenization import AutoTokenizer, BertGenerationTokenizer

__version__ = "0.1.0"

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
]
