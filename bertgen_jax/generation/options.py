"""`generate` glue: defaults as transformers resolves them, host-side checks, shape buckets, and
`generation_config.json` (read and written here).

It receives arrays, a `tokens_to_logits` step and a cache builder, never a model object; the loop
itself is `loop.py`. The cache builder runs the encoder once and fills the decoder cache
(cross-attention keys/values included). Inputs are padded to shape buckets so that a stream of
different inputs reuses a few compiled programs: lengths to the next power of two (at least 16),
batch sizes to the next power of two (extra rows copy the first one, so they finish with it and do
not hold the loop open).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from converters.files import atomic_write_text

from ..inputs import check_mask, check_token_ids
from . import loop

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


def write_generation_config(directory: str, values: dict) -> None:
    """generation_config.json as transformers writes it (sorted keys), atomically; nothing for {}."""
    if values:
        atomic_write_text(os.path.join(directory, GENERATION_CONFIG_NAME),
                          json.dumps(values, indent=2, sort_keys=True) + "\n")


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


def resolve_options(model_config, stored: Optional[dict], user: dict) -> dict:
    """Merge defaults: generation_config.json (`stored`, or the model config) < explicit arguments."""
    options = dict(GENERATION_DEFAULTS)
    options.update(stored if stored else defaults_from_model_config(model_config))
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


def sampling_key(prng_key=None, seed=None):
    """The key sampling draws from: `prng_key`, else `jax.random.PRNGKey(seed)`, else a fresh random key
    (as transformers samples from torch's global generator: a new draw each call)."""
    if prng_key is not None and seed is not None:
        raise ValueError("pass prng_key or seed, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
        return jax.random.PRNGKey(int(seed))
    if prng_key is None:
        return jax.random.PRNGKey(secrets.randbits(32))
    return prng_key


def _loop_kwargs(options: dict, max_length: int, prng_key) -> dict:
    min_length, min_new = _min_length(options, 0)
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
    if attention_mask is None:
        pad, eos = options["pad_token_id"], options["eos_token_id"]
        if pad is not None and (ids == pad).any() and pad not in eos:
            attention_mask = (ids != pad).astype(np.int32)
        else:
            attention_mask = np.ones_like(ids, np.int32)
    return np.asarray(check_mask(attention_mask, "attention_mask", ids.shape))


def _unbucket(output: loop.GenerateOutput, batch: int, num_return: int) -> loop.GenerateOutput:
    rows = batch * num_return
    scores = None if output.sequences_scores is None else output.sequences_scores[:rows]
    return loop.GenerateOutput(sequences=output.sequences[:rows], sequences_scores=scores)


# ----------------------------------------------------------------------------- encoder-decoder
def _encoder_states(encoder_outputs):
    """`last_hidden_state` of what `encode()` (or transformers' encoder) returned: an object with that
    attribute, a mapping with that key, a tuple whose first item it is, or the array itself."""
    if hasattr(encoder_outputs, "last_hidden_state"):
        states = encoder_outputs.last_hidden_state
    elif isinstance(encoder_outputs, dict):
        if "last_hidden_state" not in encoder_outputs:
            raise ValueError("encoder_outputs is a mapping without 'last_hidden_state'")
        states = encoder_outputs["last_hidden_state"]
    elif isinstance(encoder_outputs, (tuple, list)):
        states = encoder_outputs[0]
    else:
        states = encoder_outputs
    if getattr(states, "ndim", None) != 3:
        raise ValueError(f"encoder_outputs.last_hidden_state must be [batch, length, hidden], got shape "
                         f"{getattr(states, 'shape', None)}")
    return states


def decoder_start_and_max_length(config, options: dict, user: dict) -> tuple[int, int]:
    """The encoder-decoder's first decoder token and the total decoded length, as transformers
    resolves them from the merged `options` (`resolve_options`) and the caller's `user` options."""
    dec_config = config.decoder
    start = options["decoder_start_token_id"]
    if start is None:
        start = options["bos_token_id"]
    if start is None:
        raise ValueError("generate needs decoder_start_token_id (or bos_token_id) in the arguments or the config")
    if not 0 <= int(start) < dec_config.vocab_size:
        raise ValueError(f"decoder_start_token_id={start} is outside [0, {dec_config.vocab_size})")
    return int(start), _max_length(options, user, 1, dec_config.max_input_length, None)


def loop_kwargs(options: dict, max_length: int, prng_key) -> dict:
    """The keyword arguments of `loop.generate` / `loop.plan_decoding` (plus `prng_key`) for `options`."""
    return _loop_kwargs(options, max_length, prng_key)


def encoder_decoder_generate(tokens_to_logits, build_cache, params, config, input_ids=None, attention_mask=None, *,
                             encoder_outputs=None, build_cache_from_states=None, generation_config=None,
                             prng_key=None, seed=None, **user):
    """Generate for an encoder-decoder of `config` (an EncoderDecoderConfig).

    `build_cache(params, input_ids, attention_mask, max_length)` runs the encoder and returns the
    decoder cache; `tokens_to_logits` is the loop's step (see `loop.py`); `generation_config` the
    stored generation_config.json values. With `encoder_outputs` (and no `input_ids`), the encoder does
    not run: `build_cache_from_states(params, states, attention_mask, max_length)` builds the cache from
    the given states, as transformers' `generate(encoder_outputs=...)` does.
    """
    options = resolve_options(config, generation_config, user)
    enc_config = config.encoder
    if encoder_outputs is not None:
        if input_ids is not None:
            raise ValueError("pass input_ids or encoder_outputs, not both")
        if build_cache_from_states is None:
            raise ValueError("this model cannot generate from encoder_outputs")
        states = _encoder_states(encoder_outputs)
        if states.shape[-1] != enc_config.hidden_size:
            raise ValueError(f"encoder_outputs hidden size {states.shape[-1]} differs from the encoder's "
                             f"hidden_size={enc_config.hidden_size}")
        batch, length = states.shape[:2]
        mask = np.ones((batch, length), np.int32) if attention_mask is None else attention_mask
        mask = np.asarray(check_mask(mask, "attention_mask", (batch, length)))
    elif input_ids is None:
        raise ValueError("generate needs input_ids or encoder_outputs")
    else:
        ids = np.asarray(check_token_ids(input_ids, "input_ids", enc_config.vocab_size,
                                         enc_config.max_input_length))
        mask = _attention_mask(ids, attention_mask, options)
        batch, length = ids.shape
    start, max_length = decoder_start_and_max_length(config, options, user)

    rows = _bucket(batch)
    padded_len = _bucket(length, MIN_LENGTH_BUCKET, enc_config.max_input_length)
    mask_b = np.zeros((rows, padded_len), np.int32)
    mask_b[:batch, :length] = mask
    mask_b = _pad_batch(mask_b[:batch], rows)
    if encoder_outputs is not None:
        # Padded positions are masked out of cross-attention, so their (zero) states never count.
        states = jnp.pad(jnp.asarray(states), ((0, 0), (0, padded_len - length), (0, 0)))
        if rows > batch:
            states = jnp.concatenate([states, jnp.repeat(states[:1], rows - batch, axis=0)], axis=0)
        cache = build_cache_from_states(params, states, jnp.asarray(mask_b), max_length)
    else:
        ids_b = np.zeros((rows, padded_len), np.int32)
        ids_b[:batch, :length] = ids
        ids_b = _pad_batch(ids_b[:batch], rows)
        cache = build_cache(params, jnp.asarray(ids_b), jnp.asarray(mask_b), max_length)
    prompt = jnp.full((rows, 1), int(start), jnp.int32)
    output = loop.generate(tokens_to_logits, params, cache, prompt,
                           **_loop_kwargs(options, max_length, sampling_key(prng_key, seed)))
    return _unbucket(output, batch, int(options["num_return_sequences"]))


# ----------------------------------------------------------------------------- decoder only
def decoder_generate(tokens_to_logits, build_cache, params, config, input_ids, attention_mask=None, *,
                     generation_config=None, prng_key=None, seed=None, **user):
    """Continue prompts with a decoder of `config`; `build_cache(params, attention_mask, max_length)`."""
    options = resolve_options(config, generation_config, user)
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
    cache = build_cache(params, jnp.asarray(mask_b, jnp.int32), max_length)
    output = loop.generate(tokens_to_logits, params, cache, jnp.asarray(ids_b, jnp.int32),
                           **_loop_kwargs(options, max_length, sampling_key(prng_key, seed)))
    return _unbucket(output, batch, int(options["num_return_sequences"]))
