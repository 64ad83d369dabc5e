"""`pipeline("text2text-generation", model=...)`: text in, text out, as transformers' pipeline."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

SUPPORTED_TASKS = ("text2text-generation",)

# transformers' Text2TextGenerationPipeline generates with its own defaults (its
# `_default_generation_config`) wherever the call does not say otherwise; they win over the model's
# generation config, except that a max_length the model's config sets (other than the global 20)
# takes the place of the pipeline's max_new_tokens.
PIPELINE_GENERATION_DEFAULTS = {"max_new_tokens": 256, "num_beams": 4}


def pipeline_generate_kwargs(model, generate_kwargs: dict) -> dict:
    """`generate` arguments for a pipeline call, as transformers' text2text pipeline resolves them."""
    from .generation.options import defaults_from_model_config

    stored = model.generation_config or defaults_from_model_config(model.config)
    kwargs = dict(PIPELINE_GENERATION_DEFAULTS)
    if stored.get("max_length") not in (None, 20):
        kwargs["max_new_tokens"] = None
    else:
        # Where 256 new tokens do not fit the decoder's positions, transformers fails once it gets there;
        # here the default stops at the last position instead.
        decoder = getattr(model.config, "decoder", model.config)
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], int(decoder.max_input_length) - 1)
    kwargs.update(generate_kwargs)
    return kwargs


class Text2TextGenerationPipeline:
    """Tokenize, generate, decode (skip_special_tokens=True), batched.

    `pipe(text_or_texts, **generate_kwargs)` returns `[{"generated_text": ...}, ...]`: one dict per
    input (a list of dicts per input when num_return_sequences > 1), as transformers does, with
    transformers' pipeline defaults (`num_beams=4`, `max_new_tokens=256`) where the call does not set them
    (`PIPELINE_GENERATION_DEFAULTS`). Unlike transformers, inputs longer than the encoder allows are
    truncated (`truncation=True`) instead of failing inside the model.
    """

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")

    def __call__(self, inputs: Union[str, Sequence[str]], *, batch_size: Optional[int] = None,
                 truncation: bool = True, **generate_kwargs: Any):
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("pipeline input must be a string or a non-empty list of strings")
        generate_kwargs = pipeline_generate_kwargs(self.model, generate_kwargs)
        num_return = int(generate_kwargs.get("num_return_sequences") or 1)
        size = int(batch_size or self.batch_size)
        limit = self.model.config.encoder.max_input_length  # RoBERTa: max_position_embeddings - pad - 1
        results = []
        for start in range(0, len(texts), size):
            chunk = texts[start:start + size]
            encoded = self.tokenizer(chunk, padding=True, truncation=truncation, max_length=limit, return_tensors="np")
            ids = np.asarray(encoded["input_ids"])
            if ids.shape[1] == 0:
                raise ValueError("every input tokenized to nothing; nothing to generate from")
            out = self.model.generate(ids, np.asarray(encoded["attention_mask"]), **generate_kwargs)
            decoded = self.tokenizer.batch_decode(np.asarray(out.sequences), skip_special_tokens=True)
            for row in range(len(chunk)):
                texts_for_row = decoded[row * num_return:(row + 1) * num_return]
                results.append([{"generated_text": text} for text in texts_for_row])
        if num_return == 1:
            results = [r[0] for r in results]
        return results


def pipeline(task: str, model=None, tokenizer=None, *, dtype=jnp.float32, batch_size: int = 8, **model_kwargs):
    """Build a pipeline from a checkpoint path / hub id (or a loaded EncoderDecoderModel + tokenizer)."""
    from .models import EncoderDecoderModel
    from .tokenization import AutoTokenizer

    if task not in SUPPORTED_TASKS:
        raise ValueError(f"task {task!r} is not supported; available: {', '.join(SUPPORTED_TASKS)}")
    if model is None:
        raise ValueError("pipeline needs model= (a checkpoint path, hub repo id, or EncoderDecoderModel)")
    if isinstance(model, str):
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model, **{k: v for k, v in model_kwargs.items()
                                                                if k in ("revision", "local_files_only")})
        model = EncoderDecoderModel.from_pretrained(model, dtype=dtype, **model_kwargs)
    elif tokenizer is None:
        raise ValueError("pass tokenizer= with a loaded model")
    elif isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return Text2TextGenerationPipeline(model, tokenizer, batch_size=batch_size)
