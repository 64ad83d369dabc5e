"""Model-agnostic decoding: greedy search, sampling and beam search in one jitted `lax.while_loop`.

The model enters only through `tokens_to_logits(params, token_ids, cache) -> (logits, new_cache)`:

- `token_ids`: int32 `[N, 1]`, the token at the current position for each of the N rows.
- `cache`: a dict pytree. `cache["index"]` is an int32 scalar, the number of tokens already in the
  cache (the current position). `cache["cross"]` holds per-row leaves that are never reordered
  (the beams of one batch item share them). Every other top-level key (`"self"`, ...) holds
  per-row leaves that are reordered along dim 0 when beam search re-selects beams.
- `logits`: `[N, V]`, any float dtype (cast to float32 here, as transformers does), the scores of
  the next token; `new_cache` has the same structure with the index advanced by one.

The loop feeds one token per step, prompt included: at step `t` it feeds `sequences[:, t]`; while
`t + 1 < prompt_len` the next token is forced from the prompt, afterwards it is chosen by
greedy/sampling/beam search. The semantics follow transformers 4.56.2 `GenerationMixin._sample`
and `_beam_search` (vectorised beam search, `_check_early_stop_heuristic`,
`_beam_search_has_unfinished_sequences`) and its logits processors, so that `generate` returns the
same tokens for the same logits. One deliberate difference: beam-search outputs are padded with
`pad_token_id` (transformers pads them with `eos_token_id[0]` when `pad_token_id == 0`).

Names: `cur_index` is the cache index (tokens fed so far); `cur_len` is transformers' `cur_len`, the
number of tokens in the sequence when the next token is chosen (`cur_index + 1`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .processors import (
    _exact_div,
    _top_p_filter,
    apply_min_length,
    apply_min_new_tokens,
    apply_no_repeat_ngram,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
)

__all__ = ["GenerateOutput", "generate", "plan_decoding", "decode", "compile_count"]

# transformers' beam search marks impossible candidates by adding this (float32) value, not -inf:
# the same constant keeps ties and sums identical (e.g. `-1e9 + logprob` rounds to -1e9).
BEAM_NEG = -1.0e9

TokensToLogits = Callable[[Any, jax.Array, dict], "tuple[jax.Array, dict]"]

# Incremented each time the decoding function is traced (== compiled for a new shape/option set).
_TRACE_COUNT = 0


def compile_count() -> int:
    """How many times the decoding loop has been traced (compiled) in this process."""
    return _TRACE_COUNT


@dataclasses.dataclass
class GenerateOutput:
    """Output of `generate`.

    Attributes:
      sequences: int32 `[B * num_return_sequences, L]`, prompt first, `pad_token_id` after EOS.
      sequences_scores: float32 `[B * num_return_sequences]` (beam search only, else None): the
        length-penalised sum of log-probabilities, as transformers' `sequences_scores`.
    """

    sequences: jax.Array
    sequences_scores: Optional[jax.Array] = None


# --------------------------------------------------------------------------------------------
# Static options and dynamic knobs.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Options:
    """Everything that changes the traced program (a jit static argument)."""

    method: str  # "greedy" | "sample" | "beam"
    num_beams: int  # beams per batch item (beam search) else 1
    expand: int  # rows per batch item: num_beams (beam) or num_return_sequences (sampling)
    max_length: int
    beam_sample: bool
    use_repetition_penalty: bool
    no_repeat_ngram_size: int
    use_min_length: bool
    use_min_new_tokens: bool
    use_temperature: bool
    top_k: int  # 0: off
    use_top_p: bool
    min_tokens_to_keep: int
    early_stopping: Union[bool, str]
    heuristic_uses_max_length: bool  # early_stopping == "never" and length_penalty > 0


@flax.struct.dataclass
class SamplingState:
    """Loop state of greedy search and sampling (N = batch * num_return_sequences rows)."""

    cur_index: jax.Array  # int32 []: tokens fed to the model so far (== cache index)
    sequences: jax.Array  # int32 [N, max_length]: prompt, then chosen tokens, pad after EOS
    unfinished: jax.Array  # bool [N]
    done: jax.Array  # bool []: every row finished
    cache: Any  # model cache, leaves [N, ...] (+ scalar "index")
    rng: jax.Array  # PRNG key


@flax.struct.dataclass
class BeamState:
    """Loop state of beam search (N = batch * num_beams rows in the cache)."""

    cur_index: jax.Array  # int32 []
    running_sequences: jax.Array  # int32 [B, num_beams, max_length]
    running_scores: jax.Array  # float32 [B, num_beams]: summed log-probs of live beams
    finished_sequences: jax.Array  # int32 [B, num_beams, max_length]
    finished_scores: jax.Array  # float32 [B, num_beams]: length-penalised, best first
    is_finished: jax.Array  # bool [B, num_beams]: slot holds a finalised hypothesis
    finished_lengths: jax.Array  # int32 [B, num_beams]: total length of each finished hypothesis
    improvable: jax.Array  # bool [B]: transformers' is_early_stop_heuristic_unsatisfied
    done: jax.Array  # bool []
    cache: Any
    rng: jax.Array


def _check_cache(cache) -> None:
    if not isinstance(cache, dict) or "index" not in cache:
        raise ValueError("`cache` must be a dict with an int32 scalar 'index' (and 'self'/'cross' pytrees).")


def _cache_map(fn, cache, *, skip_cross: bool):
    """Apply `fn` to every per-row leaf; the scalar "index" (and "cross" if asked) pass through."""
    out = {}
    for key, value in cache.items():
        if key == "index" or (skip_cross and key == "cross"):
            out[key] = value
        else:
            out[key] = jax.tree_util.tree_map(fn, value)
    return out


def _call_model(tokens_to_logits, params, token_ids, cache, num_rows: int):
    logits, new_cache = tokens_to_logits(params, token_ids, cache)
    if logits.ndim != 2 or logits.shape[0] != num_rows:
        raise ValueError(f"tokens_to_logits must return logits of shape [N={num_rows}, V], got {logits.shape}")
    try:
        # Keep the loop carry's dtypes fixed (e.g. a weakly-typed or int64 index coming back).
        new_cache = jax.tree_util.tree_map(lambda new, old: jnp.asarray(new).astype(old.dtype), new_cache, cache)
    except ValueError as err:
        raise ValueError(f"tokens_to_logits returned a cache with a different structure: {err}") from err
    return logits.astype(jnp.float32), new_cache


def _process(scores, sequences, cur_len, prompt_len: int, knobs, opts: _Options):
    """Logits processors in transformers' order; warpers only when sampling."""
    if opts.use_repetition_penalty:
        scores = apply_repetition_penalty(scores, sequences, cur_len, knobs["repetition_penalty"])
    if opts.no_repeat_ngram_size > 0:
        scores = apply_no_repeat_ngram(scores, sequences, cur_len, opts.no_repeat_ngram_size)
    if opts.use_min_length:
        scores = apply_min_length(scores, cur_len, knobs["min_length"], knobs["eos_ids"])
    if opts.use_min_new_tokens:
        scores = apply_min_new_tokens(scores, cur_len, prompt_len, knobs["min_new_tokens"], knobs["eos_ids"])
    if opts.method == "sample" or opts.beam_sample:
        if opts.use_temperature:
            scores = apply_temperature(scores, knobs["temperature"])
        if opts.top_k > 0:
            scores = apply_top_k(scores, opts.top_k, opts.min_tokens_to_keep)
        if opts.use_top_p:
            scores = _top_p_filter(scores, knobs["top_p_threshold"], opts.min_tokens_to_keep)
    return scores


def _argmax(scores):
    """`jnp.argmax(scores, axis=-1)` (the first maximum; a NaN counts as the maximum) as two plain
    reductions, max then the smallest index holding it: XLA CPU vectorises those, where argmax's
    (value, index) pair reduction runs ~10x slower (~85 us per row of a 30k vocabulary)."""
    best = jnp.max(scores, axis=-1, keepdims=True)
    hit = (scores == best) | jnp.isnan(scores)
    index = lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
    return jnp.min(jnp.where(hit, index, scores.shape[-1]), axis=-1)


def _is_eos(tokens, eos_ids):
    if eos_ids.shape[0] == 0:
        return jnp.zeros(tokens.shape, bool)
    return jnp.any(tokens[..., None] == eos_ids, axis=-1)


# --------------------------------------------------------------------------------------------
# The traced decoding function.
# --------------------------------------------------------------------------------------------


def _feed_token(state, token_ids, choose, tokens_to_logits, params, num_rows: int, prompt_len: int):
    """One loop step: run the model on `token_ids`, then either force the next prompt token (no
    choice, no score change; every beam of an item holds the same prefix, so nothing is reordered)
    or let `choose(state, logits, new_cache)` pick it."""
    logits, new_cache = _call_model(tokens_to_logits, params, token_ids, state.cache, num_rows)
    if prompt_len == 1:
        return choose(state, logits, new_cache)
    forced = lambda s, logits, c: s.replace(cur_index=s.cur_index + 1, cache=c)  # noqa: E731
    return lax.cond(state.cur_index + 1 < prompt_len, forced, choose, state, logits, new_cache)


def _decode(params, cache, prompt_ids, knobs, rng, *, tokens_to_logits, options: _Options):
    global _TRACE_COUNT
    _TRACE_COUNT += 1  # runs only while tracing
    opts = options
    batch, prompt_len = prompt_ids.shape
    num_rows = batch * opts.expand
    max_length = opts.max_length

    for leaf in jax.tree_util.tree_leaves({k: v for k, v in cache.items() if k != "index"}):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != batch:
            raise ValueError(
                f"every cache leaf except 'index' needs the leading batch dim {batch}; got shape {jnp.shape(leaf)}"
            )
    # [B, ...] -> [B * expand, ...], row b * expand + k (transformers' repeat_interleave).
    cache = _cache_map(lambda x: jnp.repeat(jnp.asarray(x), opts.expand, axis=0), cache, skip_cross=False)
    cache["index"] = jnp.asarray(cache["index"], jnp.int32)

    prompt = jnp.repeat(prompt_ids.astype(jnp.int32), opts.expand, axis=0)  # [N, P]
    pad_id = knobs["pad_id"]
    eos_ids = knobs["eos_ids"]
    has_eos = eos_ids.shape[0] > 0

    if opts.method == "beam":
        return _beam_search(params, cache, prompt, knobs, rng, tokens_to_logits, opts, batch, prompt_len)

    sequences = jnp.full((num_rows, max_length), pad_id, jnp.int32)
    sequences = lax.dynamic_update_slice(sequences, prompt, (0, 0))
    state = SamplingState(
        cur_index=jnp.int32(0),
        sequences=sequences,
        unfinished=jnp.ones((num_rows,), bool),
        done=jnp.bool_(False),
        cache=cache,
        rng=rng,
    )

    def cond(s: SamplingState):
        return (~s.done) & (s.cur_index + 1 < max_length)

    def choose(s: SamplingState, logits, new_cache):
        cur_len = s.cur_index + 1
        scores = _process(logits, s.sequences, cur_len, prompt_len, knobs, opts)
        rng, step_rng = jax.random.split(s.rng)
        if opts.method == "sample":
            next_tokens = jax.random.categorical(step_rng, scores, axis=-1).astype(jnp.int32)
        else:
            next_tokens = _argmax(scores)
        if has_eos:
            next_tokens = jnp.where(s.unfinished, next_tokens, pad_id)
        sequences = lax.dynamic_update_slice(s.sequences, next_tokens[:, None], (jnp.int32(0), cur_len))
        # Stopping criteria on the new sequence of length cur_len + 1: EOS, max_length.
        stop = _is_eos(next_tokens, eos_ids) | (cur_len + 1 >= max_length)
        unfinished = s.unfinished & ~stop
        return s.replace(
            cur_index=s.cur_index + 1,
            sequences=sequences,
            unfinished=unfinished,
            done=~jnp.any(unfinished),
            cache=new_cache,
            rng=rng,
        )

    def body(s: SamplingState):
        token_ids = lax.dynamic_slice_in_dim(s.sequences, s.cur_index, 1, axis=1)
        return _feed_token(s, token_ids, choose, tokens_to_logits, params, num_rows, prompt_len)

    state = lax.while_loop(cond, body, state)
    return state.sequences, state.cur_index + 1


def _beam_search(params, cache, prompt, knobs, rng, tokens_to_logits, opts: _Options, batch, prompt_len):
    num_beams = opts.num_beams
    num_rows = batch * num_beams
    max_length = opts.max_length
    pad_id = knobs["pad_id"]
    eos_ids = knobs["eos_ids"]
    n_eos = eos_ids.shape[0]
    # Keep enough candidates that num_beams of them are not EOS.
    beams_to_keep = max(2, 1 + n_eos) * num_beams
    top_num_beam_mask = jnp.arange(beams_to_keep) < num_beams  # [K]
    # penalty_denominators[n] = float32(n ** length_penalty), computed on the host in double as
    # transformers does with Python scalars.
    denominators = knobs["length_penalty_denominators"]
    early_stopping_true = opts.early_stopping is True

    running = jnp.full((num_rows, max_length), pad_id, jnp.int32)
    running = lax.dynamic_update_slice(running, prompt, (0, 0)).reshape(batch, num_beams, max_length)
    state = BeamState(
        cur_index=jnp.int32(0),
        running_sequences=running,
        running_scores=jnp.where(jnp.arange(num_beams) == 0, 0.0, BEAM_NEG)
        .astype(jnp.float32)[None, :]
        .repeat(batch, axis=0),
        finished_sequences=running,
        finished_scores=jnp.full((batch, num_beams), BEAM_NEG, jnp.float32),
        is_finished=jnp.zeros((batch, num_beams), bool),
        finished_lengths=jnp.full((batch, num_beams), prompt_len, jnp.int32),
        improvable=jnp.ones((batch,), bool),
        done=jnp.bool_(False),
        cache=cache,
        rng=rng,
    )

    def gather_beams(x, idx):
        # x [B, M, ...], idx [B, K] -> [B, K, ...]
        idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, idx, axis=1)

    def cond(s: BeamState):
        return (~s.done) & (s.cur_index + 1 < max_length)

    def choose(s: BeamState, logits, new_cache):
        cur_len = s.cur_index + 1
        vocab = logits.shape[-1]
        flat_running = s.running_sequences.reshape(num_rows, max_length)

        # b. log-probs -> processors -> + running beam scores, flattened over beams.
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        log_probs = _process(log_probs, flat_running, cur_len, prompt_len, knobs, opts)
        log_probs = log_probs.reshape(batch, num_beams, vocab) + s.running_scores[:, :, None]
        log_probs = log_probs.reshape(batch, num_beams * vocab)

        # c. top-K continuations (beam sample: K draws without replacement, Gumbel-top-k).
        rng, step_rng = jax.random.split(s.rng)
        if opts.beam_sample:
            perturbed = log_probs + jax.random.gumbel(step_rng, log_probs.shape, jnp.float32)
            topk_indices = lax.top_k(perturbed, beams_to_keep)[1]
            topk_log_probs = jnp.take_along_axis(log_probs, topk_indices, axis=1)
        else:
            topk_log_probs, topk_indices = lax.top_k(log_probs, beams_to_keep)
        topk_source = topk_indices // vocab  # [B, K]
        topk_tokens = (topk_indices % vocab).astype(jnp.int32)
        topk_sequences = gather_beams(s.running_sequences, topk_source)  # [B, K, L]
        topk_sequences = lax.dynamic_update_slice(topk_sequences, topk_tokens[:, :, None], (jnp.int32(0), jnp.int32(0), cur_len))

        # d. stopping criteria on the candidates (length cur_len + 1).
        hits = _is_eos(topk_tokens, eos_ids) | (cur_len + 1 >= max_length)  # [B, K]

        # e. the best num_beams unfinished candidates keep running.
        topk_running_log_probs = topk_log_probs + hits.astype(jnp.float32) * BEAM_NEG
        next_idx = lax.top_k(topk_running_log_probs, num_beams)[1]  # [B, num_beams]
        running_sequences = gather_beams(topk_sequences, next_idx)
        running_scores = gather_beams(topk_running_log_probs, next_idx)
        running_source = gather_beams(topk_source, next_idx)

        # f. finalise candidates in the top num_beams that hit a stopping criterion.
        just_finished = hits & top_num_beam_mask[None, :]
        scores = _exact_div(topk_log_probs, denominators[cur_len + 1 - prompt_len])
        full = jnp.all(s.is_finished, axis=-1, keepdims=True) & early_stopping_true
        scores = scores + full.astype(jnp.float32) * BEAM_NEG
        scores = scores + (~s.improvable)[:, None].astype(jnp.float32) * BEAM_NEG
        scores = scores + (~just_finished).astype(jnp.float32) * BEAM_NEG
        merged_sequences = jnp.concatenate([s.finished_sequences, topk_sequences], axis=1)
        merged_scores = jnp.concatenate([s.finished_scores, scores], axis=1)
        merged_finished = jnp.concatenate([s.is_finished, just_finished], axis=1)
        merged_lengths = jnp.concatenate(
            [s.finished_lengths, jnp.broadcast_to(cur_len + 1, (batch, beams_to_keep)).astype(jnp.int32)], axis=1
        )
        keep = lax.top_k(merged_scores, num_beams)[1]
        finished_sequences = gather_beams(merged_sequences, keep)
        finished_scores = gather_beams(merged_scores, keep)
        is_finished = gather_beams(merged_finished, keep)
        finished_lengths = gather_beams(merged_lengths, keep)

        # g. reorder the per-row cache like the surviving beams ("cross" is shared per item).
        flat_source = (jnp.arange(batch)[:, None] * num_beams + running_source).reshape(num_rows)
        new_cache = _cache_map(lambda x: jnp.take(x, flat_source, axis=0), new_cache, skip_cross=True)

        # Early-stop heuristic at the new length cur_len + 1 (transformers increments first).
        if opts.heuristic_uses_max_length:
            denominator = denominators[max_length - prompt_len]
        else:
            denominator = denominators[cur_len + 1 - prompt_len]
        best_possible = _exact_div(running_scores[:, :1], denominator)
        worst_finished = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), BEAM_NEG)
        improvable = s.improvable & jnp.any(best_possible > worst_finished, axis=-1)

        improvement_possible = jnp.any(improvable)
        exists_open_beam = ~(jnp.all(is_finished) & early_stopping_true)
        valid_continuations = ~jnp.all(hits)
        done = ~(improvement_possible & exists_open_beam & valid_continuations)

        return s.replace(
            cur_index=s.cur_index + 1,
            running_sequences=running_sequences,
            running_scores=running_scores,
            finished_sequences=finished_sequences,
            finished_scores=finished_scores,
            is_finished=is_finished,
            finished_lengths=finished_lengths,
            improvable=improvable,
            done=done,
            cache=new_cache,
            rng=rng,
        )

    def body(s: BeamState):
        flat_running = s.running_sequences.reshape(num_rows, max_length)
        token_ids = lax.dynamic_slice_in_dim(flat_running, s.cur_index, 1, axis=1)
        return _feed_token(s, token_ids, choose, tokens_to_logits, params, num_rows, prompt_len)

    state = lax.while_loop(cond, body, state)
    return state.finished_sequences, state.finished_scores, state.finished_lengths


# The loop body for one option set, traced by jit here and by exporters (see plan_decoding).
decode = _decode
_decode_jit = jax.jit(_decode, static_argnames=("tokens_to_logits", "options"))


# --------------------------------------------------------------------------------------------
# Host-side entry point.
# --------------------------------------------------------------------------------------------


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _as_eos_tuple(eos_token_id) -> tuple:
    if eos_token_id is None:
        return ()
    if _is_int(eos_token_id):
        return (int(eos_token_id),)
    eos = tuple(eos_token_id)
    if not all(_is_int(e) for e in eos):
        raise ValueError(f"`eos_token_id` must be an int or a sequence of ints, got {eos_token_id!r}")
    return tuple(int(e) for e in eos)


def plan_decoding(
    prompt_len: int,
    *,
    max_length: int,
    min_length: int = 0,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: Union[bool, str] = False,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    num_return_sequences: int = 1,
    eos_token_id: Union[int, Sequence[int], None] = (),
    pad_token_id: int = 0,
):
    """Check the decoding options and split them into what the compiled loop takes: `(knobs, options)`,
    the traced values and the static `_Options` of `decode`. `generate` runs it; an exporter calls it
    once and then traces `decode` itself.

    Args:
      prompt_len: P, the prompt's length.
      max_length: total length including the prompt (transformers' `max_length`).
      min_length: EOS is banned while the sequence (prompt included) is shorter than this.
      min_new_tokens: EOS is banned until this many tokens follow the prompt.
      do_sample, temperature, top_k, top_p: sampling and its warpers (`top_k=0`: off).
      num_beams, length_penalty, early_stopping: beam search (`early_stopping`: True, False or
        "never", as in transformers).
      no_repeat_ngram_size, repetition_penalty: logits processors.
      num_return_sequences: sequences returned per batch item (<= num_beams for beam search).
      eos_token_id: int or sequence of ints (may be empty: no EOS stopping).
      pad_token_id: written after EOS.
    """

    if not _is_int(max_length) or max_length <= prompt_len:
        raise ValueError(
            f"`max_length` (={max_length}) must be an int larger than the prompt length ({prompt_len}); "
            "it counts the whole sequence, prompt included."
        )
    for name, value in (("min_length", min_length), ("min_new_tokens", min_new_tokens),
                        ("no_repeat_ngram_size", no_repeat_ngram_size)):
        if not _is_int(value) or value < 0:
            raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")
    if not _is_int(num_beams) or num_beams < 1:
        raise ValueError(f"`num_beams` must be a positive int, got {num_beams!r}")
    if not _is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"`num_return_sequences` must be a positive int, got {num_return_sequences!r}")
    beam = num_beams > 1
    if beam and num_return_sequences > num_beams:
        raise ValueError(
            f"`num_return_sequences` (={num_return_sequences}) has to be smaller or equal to "
            f"`num_beams` (={num_beams})."
        )
    if not beam and not do_sample and num_return_sequences > 1:
        raise ValueError(
            f"Greedy search returns one sequence per input: `num_return_sequences` (={num_return_sequences}) "
            "must be 1 unless `do_sample=True` or `num_beams > 1`."
        )
    if isinstance(early_stopping, (bool, np.bool_)):
        early_stopping = bool(early_stopping)
    elif early_stopping != "never":
        raise ValueError(f"`early_stopping` must be True, False or 'never', got {early_stopping!r}")
    if not isinstance(repetition_penalty, (int, float, np.floating)) or not repetition_penalty > 0:
        raise ValueError(f"`repetition_penalty` must be a strictly positive float, got {repetition_penalty!r}")
    if not isinstance(length_penalty, (int, float, np.floating)) or not np.isfinite(length_penalty):
        raise ValueError(f"`length_penalty` must be a finite float, got {length_penalty!r}")
    if do_sample:
        if not isinstance(temperature, (int, float, np.floating)) or not temperature > 0:
            raise ValueError(
                f"`temperature` (={temperature!r}) has to be a strictly positive float when sampling; "
                "for greedy decoding set `do_sample=False`."
            )
        if not _is_int(top_k) or top_k < 0:
            raise ValueError(f"`top_k` must be a non-negative int (0 disables it), got {top_k!r}")
        if not isinstance(top_p, (int, float, np.floating)) or not 0.0 < top_p <= 1.0:
            raise ValueError(f"`top_p` must be a float in (0, 1], got {top_p!r}")
    eos = _as_eos_tuple(eos_token_id)
    if not _is_int(pad_token_id):
        raise ValueError(f"`pad_token_id` must be an int, got {pad_token_id!r}")

    if beam:
        # transformers keeps at least one non-EOS token per beam when sampling with beams.
        min_keep = (len(eos) + 1) if eos else 2
    else:
        min_keep = 1
    options = _Options(
        method="beam" if beam else ("sample" if do_sample else "greedy"),
        num_beams=num_beams if beam else 1,
        expand=num_beams if beam else num_return_sequences,
        max_length=int(max_length),
        beam_sample=bool(beam and do_sample),
        use_repetition_penalty=float(repetition_penalty) != 1.0,
        no_repeat_ngram_size=int(no_repeat_ngram_size),
        use_min_length=bool(eos) and min_length > 0,
        use_min_new_tokens=bool(eos) and min_new_tokens > 0,
        use_temperature=bool(do_sample) and float(temperature) != 1.0,
        top_k=int(top_k) if do_sample else 0,
        use_top_p=bool(do_sample) and float(top_p) < 1.0,
        min_tokens_to_keep=min_keep,
        early_stopping=early_stopping if beam else False,
        heuristic_uses_max_length=bool(beam and early_stopping == "never" and length_penalty > 0.0),
    )
    denominators = np.ones((max_length + 1,), np.float32)
    if beam:
        lp = float(length_penalty)
        for n in range(1, max_length + 1):
            try:
                denominators[n] = np.float32(n**lp)
            except OverflowError:  # Python raises where float32 would be inf
                denominators[n] = np.inf
    knobs = {
        "eos_ids": jnp.asarray(np.asarray(eos, np.int32).reshape(-1)),
        "pad_id": jnp.int32(pad_token_id),
        "min_length": jnp.int32(min_length),
        "min_new_tokens": jnp.int32(min_new_tokens),
        "temperature": jnp.float32(temperature if do_sample else 1.0),
        "top_p_threshold": jnp.float32(1.0 - float(top_p) if do_sample else 0.0),
        "repetition_penalty": jnp.float32(repetition_penalty),
        "length_penalty_denominators": jnp.asarray(denominators),
    }
    return knobs, options


def generate(
    tokens_to_logits: TokensToLogits,
    params: Any,
    cache: dict,
    prompt_ids,
    *,
    prng_key: Optional[jax.Array] = None,
    **decoding,
) -> GenerateOutput:
    """Decode with greedy search, sampling or beam search, as transformers 4.56.2 `generate`.

    Args:
      tokens_to_logits: `(params, token_ids [N, 1], cache) -> (logits [N, V], new_cache)`; see the
        module docstring for the cache contract. Must be a stable hashable object (a module-level
        function or a method of a long-lived object): the compiled loop is cached per
        `tokens_to_logits` and option set, so a new lambda per call recompiles.
      params: pytree passed through to `tokens_to_logits`.
      cache: dict pytree with batch dim B and `cache["index"] == 0`; expanded here to
        B * num_beams (beam search) or B * num_return_sequences (sampling) rows.
      prompt_ids: int `[B, P]`, P >= 1 (`[[decoder_start_token_id]] * B` for encoder-decoders).
      prng_key: PRNG key for sampling (default `jax.random.PRNGKey(0)`).
      **decoding: the options of `plan_decoding` (`max_length` is required).

    Returns:
      GenerateOutput with `sequences` int32 `[B * num_return_sequences, L]` and, for beam search,
      `sequences_scores` float32 `[B * num_return_sequences]`.
    """
    _check_cache(cache)
    prompt_ids = np.asarray(prompt_ids) if not isinstance(prompt_ids, jax.Array) else prompt_ids
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1 or prompt_ids.shape[0] < 1:
        raise ValueError(f"`prompt_ids` must be [batch, prompt_len] with prompt_len >= 1, got {prompt_ids.shape}")
    if not jnp.issubdtype(prompt_ids.dtype, jnp.integer):
        raise ValueError(f"`prompt_ids` must hold integer token ids, got dtype {prompt_ids.dtype}")
    batch, prompt_len = prompt_ids.shape
    knobs, options = plan_decoding(prompt_len, **decoding)
    beam = options.method == "beam"
    rng = prng_key if prng_key is not None else jax.random.PRNGKey(0)

    outputs = _decode_jit(
        params, cache, jnp.asarray(prompt_ids, jnp.int32), knobs, rng,
        tokens_to_logits=tokens_to_logits, options=options,
    )
    if not beam:
        sequences, length = outputs
        length = int(length)
        return GenerateOutput(sequences=jnp.asarray(np.asarray(sequences)[:, :length]))

    finished_sequences, finished_scores, finished_lengths = jax.device_get(outputs)
    nrs = int(decoding.get("num_return_sequences", 1))
    # Cut to the longest returned hypothesis (transformers counts its generated tokens).
    length = int(np.max(finished_lengths[:, :nrs]))
    sequences = finished_sequences[:, :nrs, :length].reshape(batch * nrs, length)
    scores = finished_scores[:, :nrs].reshape(batch * nrs)
    return GenerateOutput(sequences=jnp.asarray(sequences), sequences_scores=jnp.asarray(scores))
