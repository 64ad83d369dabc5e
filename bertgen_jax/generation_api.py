"""`generate` for the models: defaults as transformers resolves them, host-side checks, shape buckets.

The decoding loop itself is model-agnostic (`generation.py`). Here the encoder runs once, the
decoder cache is built once (cross-attention keys/values included), and the inputs are padded to
shape buckets so that a stream of different inputs reuses a few compiled programs:
lengths to the next power of two (at least 16), batch sizes to the next power of two (extra rows
copy the first one, so they finish with it and do not hold the loop open).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import generation

GENERATION_CONFIG_NAME = "generation_config.json"

# transformers 4.56.2 GenerationConfig defaults for the options this project implements.
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "num_beams": 1,
    "length_penalty": 1.0,
    "early_stopping": False,
    "no_repeat_ngram_size": 0,
    "repetition_penalty": 1.0,
    "num_return_sequences": 1,
    "decoder_start_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}
MIN_LENGTH_BUCKET = 16


def read_generation_config(directory: str) -> dict:
    path = os.path.join(directory, GENERATION_CONFIG_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return {k: v for k, v in values.items() if k in GENERATION_DEFAULTS}


def defaults_from_model_config(config) -> dict:
    """transformers' GenerationConfig.from_model_config: top-level values, then unset ones from the
    decoder sub-config."""
    values = dict(GENERATION_DEFAULTS)
    top = config.to_dict()
    for key in values:
        if top.get(key) is not None:
            values[key] = top[key]
    decoder = top.get("decoder")
    if isinstance(decoder, dict):
        for key, default in GENERATION_DEFAULTS.items():
            if values[key] == default and decoder.get(key) is not None:
                values[key] = decoder[key]
    return values


def resolve_options(model, user: dict) -> dict:
    """Merge defaults: generation_config.json (or the model config) < explicit arguments."""
    stored = getattr(model, "generation_config", None) or {}
    options = dict(GENERATION_DEFAULTS)
    options.update(stored if stored else defaults_from_model_config(model.config))
    options.update({k: v for k, v in user.items() if v is not None})
    if options["eos_token_id"] is None:
        eos = ()
    elif isinstance(options["eos_token_id"], (list, tuple)):
        eos = tuple(int(e) for e in options["eos_token_id"])
    else:
        eos = (int(options["eos_token_id"]),)
    options["eos_token_id"] = eos
    if options["pad_token_id"] is None:
        if not eos:
            raise ValueError("generate needs pad_token_id or eos_token_id (neither is set in the config)")
        options["pad_token_id"] = eos[0]  # as transformers does, with a warning there
    if not options["do_sample"]:
        options["top_k"], options["top_p"], options["temperature"] = 0, 1.0, 1.0
    elif options["top_k"] is None:
        options["top_k"] = 0
    return options


def _bucket(n: int, floor: int = 1, cap: Optional[int] = None) -> int:
    size = max(floor, 1 << max(0, (n - 1)).bit_length())
    if cap is not None:
        size = min(size, cap)
    return max(size, n)


def _pad_batch(array: np.ndarray, rows: int) -> np.ndarray:
    if array.shape[0] == rows:
        return array
    extra = np.repeat(array[:1], rows - array.shape[0], axis=0)
    return np.concatenate([array, extra], axis=0)


def _max_length(options: dict, user: dict, prompt_len: int, limit: int, cap: Optional[int]) -> int:
    if options.get("max_new_tokens") is not None:
        max_length = prompt_len + int(options["max_new_tokens"])
    else:
        max_length = int(options["max_length"])
        if user.get("max_length") is None and max_length == GENERATION_DEFAULTS["max_length"]:
            # transformers: an unset max_length means 20 *new* tokens, capped by the config's
            # max_position_embeddings when the (top-level) config has one.
            max_length += prompt_len
            if cap is not None:
                max_length = min(max_length, cap)
    if max_length <= prompt_len:
        raise ValueError(f"max_length={max_length} leaves no room to generate after a prompt of {prompt_len} "
                         f"token(s); raise max_length or set max_new_tokens")
    if max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the decoder's max_position_embeddings={limit}")
    return max_length


def _min_length(options: dict, prompt_len: int) -> tuple[int, int]:
    return int(options.get("min_length") or 0), int(options.get("min_new_tokens") or 0)


def _loop_kwargs(options: dict, max_length: int, prng_key) -> dict:
    min_length, min_new = _min_length(options, 0)
    if options["do_sample"] and prng_key is None:
        raise ValueError("do_sample=True needs prng_key (a jax.random key), so results are reproducible")
    return dict(
        max_length=max_length, min_length=min_length, min_new_tokens=min_new, do_sample=bool(options["do_sample"]),
        temperature=float(options["temperature"]), top_k=int(options["top_k"] or 0), top_p=float(options["top_p"]),
        num_beams=int(options["num_beams"]), length_penalty=float(options["length_penalty"]),
        early_stopping=options["early_stopping"], no_repeat_ngram_size=int(options["no_repeat_ngram_size"] or 0),
        repetition_penalty=float(options["repetition_penalty"]),
        num_return_sequences=int(options["num_return_sequences"]), eos_token_id=options["eos_token_id"],
        pad_token_id=int(options["pad_token_id"]), prng_key=prng_key)


def _attention_mask(ids: np.ndarray, attention_mask, options: dict) -> np.ndarray:
    """The given mask (checked), or transformers' default: mask padding only if the pad id occurs in
    the inputs and differs from every EOS id."""
    from .models import check_mask

    if attention_mask is None:
        pad, eos = options["pad_token_id"], options["eos_token_id"]
        if pad is not None and (ids == pad).any() and pad not in eos:
            attention_mask = (ids != pad).astype(np.int32)
        else:
            attention_mask = np.ones_like(ids, np.int32)
    return np.asarray(check_mask(attention_mask, "attention_mask", ids.shape))


def _unbucket(output: generation.GenerateOutput, batch: int, num_return: int) -> generation.GenerateOutput:
    rows = batch * num_return
    scores = None if output.sequences_scores is None else output.sequences_scores[:rows]
    return generation.GenerateOutput(sequences=output.sequences[:rows], sequences_scores=scores)


# ----------------------------------------------------------------------------- encoder-decoder
def encoder_decoder_generate(model, input_ids, attention_mask=None, *, params=None, prng_key=None, **user):
    from .models import check_token_ids

    options = resolve_options(model, user)
    enc_config, dec_config = model.config.encoder, model.config.decoder
    ids = np.asarray(check_token_ids(input_ids, "input_ids", enc_config.vocab_size, enc_config.max_input_length))
    mask = _attention_mask(ids, attention_mask, options)
    start = options["decoder_start_token_id"]
    if start is None:
        start = options["bos_token_id"]
    if start is None:
        raise ValueError("generate needs decoder_start_token_id (or bos_token_id) in the arguments or the config")
    if not 0 <= int(start) < dec_config.vocab_size:
        raise ValueError(f"decoder_start_token_id={start} is outside [0, {dec_config.vocab_size})")
    max_length = _max_length(options, user, 1, dec_config.max_input_length, None)

    batch, length = ids.shape
    rows = _bucket(batch)
    padded_len = _bucket(length, MIN_LENGTH_BUCKET, enc_config.max_input_length)
    ids_b = np.zeros((rows, padded_len), np.int32)
    mask_b = np.zeros((rows, padded_len), np.int32)
    ids_b[:batch, :length], mask_b[:batch, :length] = ids, mask
    ids_b, mask_b = _pad_batch(ids_b[:batch], rows), _pad_batch(mask_b[:batch], rows)
    params = model.params if params is None else params

    cache = model._compiled_fn("_generation_cache", max_length=max_length)(params, jnp.asarray(ids_b),
                                                                          jnp.asarray(mask_b))
    prompt = jnp.full((rows, 1), int(start), jnp.int32)
    output = generation.generate(model.tokens_to_logits, params, cache, prompt,
                                 **_loop_kwargs(options, max_length, prng_key))
    return _unbucket(output, batch, int(options["num_return_sequences"]))


# ----------------------------------------------------------------------------- decoder only
def decoder_generate(model, input_ids, attention_mask=None, *, params=None, prng_key=None, **user):
    from .models import check_token_ids

    options = resolve_options(model, user)
    config = model.config
    if config.add_cross_attention:
        raise ValueError("this decoder has cross-attention: generate with the EncoderDecoderModel that feeds it")
    ids = np.asarray(check_token_ids(input_ids, "input_ids", config.vocab_size, config.max_input_length))
    mask = _attention_mask(ids, attention_mask, options)
    prompt_len = ids.shape[1]
    max_length = _max_length(options, user, prompt_len, config.max_position_embeddings,
                             config.max_position_embeddings)
    batch = ids.shape[0]
    rows = _bucket(batch)
    ids_b, mask_b = _pad_batch(ids, rows), _pad_batch(mask, rows)
    params = model.params if params is None else params
    cache = model._compiled_fn("_generation_cache", max_length=max_length)(params, jnp.asarray(mask_b, jnp.int32))
    options = dict(options)
    output = generation.generate(model.tokens_to_logits, params, cache, jnp.asarray(ids_b, jnp.int32),
                                 **_loop_kwargs(options, max_length, prng_key))
    return _unbucket(output, batch, int(options["num_return_sequences"]))
