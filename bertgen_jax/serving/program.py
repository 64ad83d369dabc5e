"""The one place where serving touches the model's internals: a pure generate program to export.

`generate_program(model, ...)` returns `fn(params, input_ids, attention_mask, rng) -> outputs`, the
whole `model.generate` computation for one shape bucket and one option set (encoder, cross-attention
cache, `lax.while_loop` decode) with nothing left on the host but slicing. Everything else in
`bertgen_jax.serving` sees only that function and the plain-data description returned with it, so a
change in the generation internals is mended here alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Merged user options whose values are plain JSON (what the manifest records, what the loader compares).
RECORDED_OPTIONS = ("max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "temperature",
                    "top_k", "top_p", "num_beams", "length_penalty", "early_stopping", "no_repeat_ngram_size",
                    "repetition_penalty", "num_return_sequences", "decoder_start_token_id", "bos_token_id",
                    "eos_token_id", "pad_token_id")


@dataclasses.dataclass
class GenerateProgram:
    """`fn(named_params, input_ids int32 [B, S], attention_mask int32 [B, S], rng uint32 [2])` returns
    `{"sequences": int32 [B * num_return_sequences, max_length], "length": int32 []}` (+ `"scores"`
    float32 [B * num_return_sequences] for beam search): `sequences[:, :length]` is `model.generate`'s
    `.sequences` for that bucket. `named_params` is `flat_params(model)`."""

    fn: Callable
    options: dict  # the merged options (defaults < generation config < given), JSON values
    max_length: int
    num_return_sequences: int
    beam: bool


class _Captured(Exception):
    """Carries the decoding plan out of `generation.generate` before anything runs."""


def _decoding_plan(generation, tokens_to_logits, loop_kwargs: dict):
    """`generation.generate`'s own checks and static/dynamic option split, without running it: the
    jitted loop it would call is swapped for one that hands back its arguments (export time only)."""

    def capture(params, cache, prompt, knobs, rng, *, tokens_to_logits, options):
        raise _Captured(knobs, options)

    saved = generation._decode_jit
    generation._decode_jit = capture
    try:
        generation.generate(tokens_to_logits, None, {"index": 0}, np.zeros((1, 1), np.int32), **loop_kwargs)
    except _Captured as plan:
        return plan.args
    finally:
        generation._decode_jit = saved
    raise RuntimeError("generation.generate did not reach its decoding loop")


def generate_program(model, user_options: dict) -> GenerateProgram:
    """The pure generate function of an EncoderDecoderModel for `user_options` (transformers' names)."""
    from .. import generation, generation_api
    from ..models import EncoderDecoderModel

    if not isinstance(model, EncoderDecoderModel):
        raise ValueError(f"export needs an encoder-decoder checkpoint (bert2bert, roberta2roberta), "
                         f"got {type(model).__name__}")
    options = generation_api.resolve_options(model, user_options)
    merged = _merged_options(generation_api, model, user_options)
    start = options["decoder_start_token_id"]
    if start is None:
        start = options["bos_token_id"]
    if start is None:
        raise ValueError("generate needs decoder_start_token_id (or bos_token_id) in the options or the config")
    dec_config = model.config.decoder
    if not 0 <= int(start) < dec_config.vocab_size:
        raise ValueError(f"decoder_start_token_id={start} is outside [0, {dec_config.vocab_size})")
    max_length = generation_api._max_length(options, user_options, 1, dec_config.max_position_embeddings, None)
    placeholder_key = jax.random.PRNGKey(0) if options["do_sample"] else None
    knobs, static = _decoding_plan(generation, model.tokens_to_logits,
                                   generation_api._loop_kwargs(options, max_length, placeholder_key))
    num_return = int(options["num_return_sequences"])
    beam = static.method == "beam"
    step = model.tokens_to_logits
    start = int(start)

    def fn(named_params, input_ids, attention_mask, rng):
        params = nest_params(named_params)
        cache = model._generation_cache(params, input_ids, attention_mask, max_length=max_length)
        prompt = jnp.full((input_ids.shape[0], 1), start, jnp.int32)
        out = generation._decode(params, cache, prompt, knobs, rng, tokens_to_logits=step, options=static)
        if not beam:
            sequences, length = out
            return {"sequences": sequences, "length": jnp.asarray(length, jnp.int32)}
        finished, scores, lengths = out
        batch = finished.shape[0]
        return {"sequences": finished[:, :num_return].reshape(batch * num_return, max_length),
                "length": jnp.max(lengths[:, :num_return]).astype(jnp.int32),
                "scores": scores[:, :num_return].reshape(batch * num_return)}

    return GenerateProgram(fn=fn, options=merged, max_length=int(max_length), num_return_sequences=num_return,
                           beam=beam)


def _merged_options(generation_api, model, user_options: dict) -> dict:
    """Defaults < generation_config.json (or the model config) < given options, before `generate`
    normalises them: the values a caller names, as JSON."""
    stored = getattr(model, "generation_config", None) or {}
    merged = dict(generation_api.GENERATION_DEFAULTS)
    merged.update(stored if stored else generation_api.defaults_from_model_config(model.config))
    merged.update({k: v for k, v in user_options.items() if v is not None})
    return {name: _json_value(merged.get(name)) for name in RECORDED_OPTIONS}


def _json_value(value: Any):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def flat_params(model) -> dict:
    """`model.params` as {"a/b/c": array}: the names the exported program takes its weights by."""
    flat = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}/{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    walk("", jax.device_get(model.params))
    return flat


def nest_params(flat: dict) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
