"""bertgen_jax: BertGeneration (bert2bert, roberta2roberta) in JAX/Flax, with transformers parity."""

from .compile_cache import enable_from_environment as _enable_cache_from_env
from .compile_cache import enable_persistent_compilation_cache
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
from .bert_family import BertLMHeadModel, BertModel, RobertaForCausalLM, RobertaModel
from .config import BertConfig, RobertaConfig
from .pipeline import pipeline
from .quantization import QuantizationConfig, quantize_model
from .tokenization import AutoTokenizer, BertGenerationTokenizer

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
    "BertConfig",
    "RobertaConfig",
    "BertModel",
    "BertLMHeadModel",
    "RobertaModel",
    "RobertaForCausalLM",
]
