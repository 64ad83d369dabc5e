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


def generate_program(model, user_options: dict) -> GenerateProgram:
    """The pure generate function of an EncoderDecoderModel for `user_options` (transformers' names)."""
    from ..generation import loop
    from ..generation import options as gen_options
    from ..models import EncoderDecoderModel

    if not isinstance(model, EncoderDecoderModel):
        raise ValueError(f"export needs an encoder-decoder checkpoint (bert2bert, roberta2roberta), "
                         f"got {type(model).__name__}")
    options = gen_options.resolve_options(model.config, model.generation_config, user_options)
    merged = _merged_options(gen_options, model, user_options)
    start, max_length = gen_options.decoder_start_and_max_length(model.config, options, user_options)
    kwargs = gen_options.loop_kwargs(options, max_length, None)
    kwargs.pop("prng_key")
    # generate's own checks and its split into traced knobs and static options, for a 1-token prompt.
    knobs, static = loop.plan_decoding(1, **kwargs)
    num_return = int(options["num_return_sequences"])
    beam = static.method == "beam"
    step = model.tokens_to_logits

    def fn(named_params, input_ids, attention_mask, rng):
        params = nest_params(named_params)
        cache = model._generation_cache(params, input_ids, attention_mask, max_length=max_length)
        prompt = jnp.full((input_ids.shape[0], 1), start, jnp.int32)
        out = loop.decode(params, cache, prompt, knobs, rng, tokens_to_logits=step, options=static)
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


def _merged_options(gen_options, model, user_options: dict) -> dict:
    """Defaults < generation_config.json (or the model config) < given options, before `generate`
    normalises them: the values a caller names, as JSON."""
    stored = getattr(model, "generation_config", None) or {}
    merged = dict(gen_options.GENERATION_DEFAULTS)
    merged.update(stored if stored else gen_options.defaults_from_model_config(model.config))
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
