"""Inputs and the loss, shared by the models, generation and training: host-side checks of token ids
and masks (a JAX gather clamps out-of-range ids silently), `IGNORE_INDEX`, `shift_tokens_right`
and the cross-entropy. A leaf: it imports nothing of the project.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- host-side checks
def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_token_ids(ids, name: str, vocab_size: int, max_positions: Optional[int] = None,
                    allow_ignore_index: bool = False):
    """Validate an id matrix [B, T] on the host; returns it as an int32 array."""
    if ids is None:
        return None
    if is_traced(ids):
        if ids.ndim != 2:
            raise ValueError(f"{name} must be 2-D [batch, length], got shape {tuple(ids.shape)}")
        return ids
    array = np.asarray(ids)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, length], got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {array.dtype}")
    if array.shape[1] == 0:
        raise ValueError(f"{name} is empty (length 0)")
    if max_positions is not None and array.shape[1] > max_positions:
        raise ValueError(f"{name} has length {array.shape[1]}, longer than max_position_embeddings={max_positions}")
    valid = (array >= 0) & (array < vocab_size)
    if allow_ignore_index:
        valid |= array == IGNORE_INDEX
    if not valid.all():
        bad = array[~valid]
        raise ValueError(
            f"{name} holds token id {int(bad.flat[0])} outside [0, {vocab_size}) (vocab_size={vocab_size})"
            + (f"; only {IGNORE_INDEX} may be used to ignore positions" if allow_ignore_index else "")
        )
    return jnp.asarray(array, jnp.int32)


def check_mask(mask, name: str, like_shape, *, allow_3d: bool = False):
    if mask is None:
        return None
    shape = tuple(mask.shape)
    if len(shape) == 3 and allow_3d:
        if shape[0] != like_shape[0] or shape[1] != like_shape[1]:
            raise ValueError(f"{name} has shape {shape}; expected [{like_shape[0]}, {like_shape[1]}, keys]")
    elif shape != tuple(like_shape):
        raise ValueError(f"{name} has shape {shape}, which does not match the ids' shape {tuple(like_shape)}")
    return mask if is_traced(mask) else jnp.asarray(np.asarray(mask), jnp.int32)


def check_positions(position_ids, input_shape, max_positions: int, name: str = "position_ids"):
    if position_ids is None:
        return None
    if is_traced(position_ids):
        return position_ids
    array = np.asarray(position_ids)
    if array.ndim == 1:
        array = array[None, :]
    if array.shape[-1] != input_shape[1] or array.shape[0] not in (1, input_shape[0]):
        raise ValueError(f"{name} has shape {array.shape}; expected [1 or {input_shape[0]}, {input_shape[1]}]")
    if array.size and (array.min() < 0 or array.max() >= max_positions):
        raise ValueError(f"{name} holds position {int(array.max() if array.max() >= max_positions else array.min())}"
                         f" outside [0, {max_positions}) (max_position_embeddings)")
    return jnp.asarray(array, jnp.int32)


# ----------------------------------------------------------------------------- losses
def token_losses(logits, labels, label_smoothing: float = 0.0):
    """Per-token cross-entropy [B, T] in float32 (0 where labels == -100) and the valid mask.

    With label smoothing eps: (1 - eps) * nll + eps * mean_v(-log p_v), which is transformers'
    `LabelSmoother` (and torch's CrossEntropyLoss(label_smoothing=eps)).
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    valid = labels != IGNORE_INDEX
    safe = jnp.where(valid, labels, 0)
    loss = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * jnp.mean(log_probs, axis=-1)
    return jnp.where(valid, loss, 0.0), valid


def cross_entropy(logits, labels):
    """Mean token cross-entropy over labels != -100 (torch CrossEntropyLoss(ignore_index=-100)).

    Computed in float32; with every label ignored the result is NaN, as in torch.
    """
    losses, valid = token_losses(logits, labels)
    return jnp.sum(losses) / jnp.sum(valid)


def causal_lm_loss(logits, labels):
    """transformers' ForCausalLMLoss: position t predicts label t+1."""
    return cross_entropy(logits[:, :-1], labels[:, 1:])


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
    """transformers' shift_tokens_right: prepend the start token, replace -100 by pad."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id must be set to build decoder_input_ids from labels")
    if pad_token_id is None:
        raise ValueError("config.pad_token_id must be set to build decoder_input_ids from labels")
    shifted = jnp.concatenate([jnp.full((labels.shape[0], 1), decoder_start_token_id, labels.dtype), labels[:, :-1]],
                              axis=1)
    return jnp.where(shifted == IGNORE_INDEX, pad_token_id, shifted)


# ----------------------------------------------------------------------------- packed rows
# A packed batch holds several (source, target) pairs per row, side by side (`training.packing` builds it):
# `source_segment_ids` / `target_segment_ids` [B, L] number the pairs of a row 1, 2, ... (0: padding), and
# `source_positions` / `target_positions` count each pair's tokens from 0. Attention stays inside a pair, so
# every pair gets exactly the numbers it gets alone in an unpacked row (relative position scores depend on
# token distances only, which packing keeps); padding is shared, not repeated per pair.
PACKED_KEYS = ("source_segment_ids", "source_positions", "target_segment_ids", "target_positions")


def is_packed(batch) -> bool:
    return "source_segment_ids" in batch


def packed_decoder_input_ids(labels, target_positions, target_segment_ids, pad_token_id, decoder_start_token_id):
    """`shift_tokens_right` within each pair of a packed row: a pair's first position gets the start token,
    the others the pair's previous label; padding gets pad_token_id."""
    shifted = shift_tokens_right(labels, pad_token_id, decoder_start_token_id)
    shifted = jnp.where(target_positions == 0, jnp.asarray(decoder_start_token_id, labels.dtype), shifted)
    return jnp.where(target_segment_ids == 0, jnp.asarray(pad_token_id, labels.dtype), shifted)


def packed_attention_masks(source_segment_ids, target_segment_ids, decoder_input_ids, pad_token_id):
    """[B, Lq, Lk] masks of a packed batch: encoder self-attention, decoder self-attention (causal, keys
    `!= pad_token_id` as transformers' decoder mask from labels) and cross-attention, each within a pair."""
    source_keys = source_segment_ids[:, None, :]
    encoder_mask = (source_segment_ids[:, :, None] == source_keys) & (source_keys != 0)
    length = target_segment_ids.shape[1]
    causal = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
    decoder_mask = ((target_segment_ids[:, :, None] == target_segment_ids[:, None, :]) & causal[None]
                    & (decoder_input_ids != pad_token_id)[:, None, :])
    cross_mask = (target_segment_ids[:, :, None] == source_keys) & (source_keys != 0)
    return tuple(m.astype(jnp.int32) for m in (encoder_mask, decoder_mask, cross_mask))


# ----------------------------------------------------------------------------- the loss on labelled rows only
def labelled_lm_loss(hidden, weight, bias, labels, *, label_smoothing: float = 0.0, groups: int = 1,
                     weight_is_vocab_major: bool = True, chunk_rows: Optional[int] = None):
    """(sum of token losses, number of label tokens) of the LM head `hidden @ W + bias` on [B, T] labels,
    computed only where labels != -100: the same values and gradients as `token_losses` on the full
    logits, without the [B, T, vocab] logits.

    The labelled rows of each of `groups` row groups (a group = a shard of the batch on a data-parallel
    mesh, so the work stays on its devices) are moved to the front, and the projection, softmax and
    their gradients run over chunks of `chunk_rows` rows in a loop that stops after the last chunk
    holding a label (the padding rows past it cost no projection, softmax or hidden gradient). The
    gradients are formed in the same pass (a custom VJP): only d loss / d logits is kept, and the
    weight's gradient is one matmul over it after the loop. `weight` is [vocab, H] (tied word embeddings) or,
    with `weight_is_vocab_major=False`, [H, vocab] (a Dense kernel)."""
    batch, length, width = hidden.shape
    if batch % groups:
        raise ValueError(f"batch {batch} is not divisible into {groups} row groups")
    rows = batch // groups * length
    valid = labels != IGNORE_INDEX
    flat_valid = valid.reshape(groups, rows)
    # Labelled rows first, in order (a stable sort of "is padding").
    order = jnp.argsort(jnp.logical_not(flat_valid), axis=1, stable=True)
    gathered = jnp.take_along_axis(hidden.reshape(groups, rows, width), order[..., None], axis=1)
    gathered_labels = jnp.take_along_axis(labels.reshape(groups, rows), order, axis=1)
    if chunk_rows is None:  # ~8 chunks per group of at least 16 rows, a divisor of the rows when one is near
        chunk_rows = _chunk_size(rows)
    chunk_rows = min(chunk_rows, rows)
    padded = -(-rows // chunk_rows) * chunk_rows
    if padded != rows:
        gathered = jnp.pad(gathered, ((0, 0), (0, padded - rows), (0, 0)))
        gathered_labels = jnp.pad(gathered_labels, ((0, 0), (0, padded - rows)), constant_values=IGNORE_INDEX)
    labelled = jnp.max(jnp.sum(flat_valid, axis=1)).astype(jnp.int32)
    loss = _chunked_lm_loss(gathered, weight, bias, gathered_labels, labelled, float(label_smoothing),
                            int(chunk_rows), bool(weight_is_vocab_major))
    return loss, jnp.sum(valid).astype(jnp.float32)


def _chunk_size(rows: int, chunks: int = 8, smallest: int = 16) -> int:
    target = max(smallest, -(-rows // chunks))
    for size in range(target, min(rows, 2 * target) + 1):  # no padding rows when a divisor is close
        if rows % size == 0:
            return size
    return target


def _chunk_loss_and_grads(hidden, weight, bias, labels, smoothing, vocab_major, with_grads):
    """Loss sum of one chunk [G, C, H] (and, with_grads, d loss / d logits [G, C, V] and d loss / d hidden)."""
    w = weight.astype(hidden.dtype)
    logits = jnp.einsum("gch,vh->gcv" if vocab_major else "gch,hv->gcv", hidden, w)
    logits = (logits + bias.astype(logits.dtype)).astype(jnp.float32)
    valid = labels != IGNORE_INDEX
    safe = jnp.where(valid, labels, 0)
    log_norm = jax.nn.logsumexp(logits, axis=-1)
    nll = log_norm - jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    if smoothing:
        nll = (1.0 - smoothing) * nll + smoothing * (log_norm - jnp.mean(logits, axis=-1))
    loss = jnp.sum(jnp.where(valid, nll, 0.0))
    if not with_grads:
        return loss, None
    vocab = logits.shape[-1]
    # d/dlogits of (1 - eps) * nll + eps * mean(-log p) = softmax - (1 - eps) * onehot - eps / V
    dlogits = jnp.exp(logits - log_norm[..., None]) - (1.0 - smoothing) * jax.nn.one_hot(safe, vocab)
    if smoothing:
        dlogits = dlogits - smoothing / vocab
    dlogits = jnp.where(valid[..., None], dlogits, 0.0).astype(hidden.dtype)
    dhidden = jnp.einsum("gcv,vh->gch" if vocab_major else "gcv,hv->gch", dlogits, w,
                         preferred_element_type=jnp.float32)
    return loss, (dlogits, dhidden)


def _chunk_loop(hidden, weight, bias, labels, labelled, smoothing, chunk, vocab_major, with_grads):
    """The loss over the chunks up to the last one holding a label; with_grads, also the gradients
    for hidden, weight and bias. The chunks' d loss / d logits go into one [G, rows, V] buffer (zero
    past the last labelled chunk) so that the weight's gradient is one matmul, not a sum per chunk."""
    groups, rows, width = hidden.shape
    vocab = bias.shape[0]

    def more(carry):
        return carry[0] * chunk < labelled

    def body(carry):
        i, loss, grads = carry
        start = i * chunk
        h = jax.lax.dynamic_slice_in_dim(hidden, start, chunk, axis=1)
        y = jax.lax.dynamic_slice_in_dim(labels, start, chunk, axis=1)
        chunk_loss, chunk_grads = _chunk_loss_and_grads(h, weight, bias, y, smoothing, vocab_major, with_grads)
        if with_grads:
            grads = tuple(jax.lax.dynamic_update_slice_in_dim(buffer, part, start, axis=1)
                          for buffer, part in zip(grads, chunk_grads))
        return i + 1, loss + chunk_loss, grads

    grads = ((jnp.zeros((groups, rows, vocab), hidden.dtype), jnp.zeros((groups, rows, width), jnp.float32))
             if with_grads else ())
    _, loss, grads = jax.lax.while_loop(more, body, (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32), grads))
    if not with_grads:
        return loss, None
    dlogits, dhidden = grads
    dweight = jnp.einsum("grv,grh->vh" if vocab_major else "grv,grh->hv", dlogits, hidden,
                         preferred_element_type=jnp.float32)
    dbias = jnp.sum(dlogits.astype(jnp.float32), axis=(0, 1))
    return loss, (dhidden, dweight, dbias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _chunked_lm_loss(hidden, weight, bias, labels, labelled, smoothing, chunk, vocab_major):
    return _chunk_loop(hidden, weight, bias, labels, labelled, smoothing, chunk, vocab_major, False)[0]


def _chunked_lm_loss_fwd(hidden, weight, bias, labels, labelled, smoothing, chunk, vocab_major):
    loss, grads = _chunk_loop(hidden, weight, bias, labels, labelled, smoothing, chunk, vocab_major, True)
    dtypes = (hidden.dtype, weight.dtype, bias.dtype)
    return loss, (tuple(g.astype(d) for g, d in zip(grads, dtypes)), labels, labelled)


def _chunked_lm_loss_bwd(smoothing, chunk, vocab_major, residuals, cotangent):
    (dhidden, dweight, dbias), labels, labelled = residuals
    scale = lambda g: (g * cotangent.astype(g.dtype)).astype(g.dtype)  # noqa: E731
    return (scale(dhidden), scale(dweight), scale(dbias),
            np.zeros(labels.shape, jax.dtypes.float0), np.zeros((), jax.dtypes.float0))


_chunked_lm_loss.defvjp(_chunked_lm_loss_fwd, _chunked_lm_loss_bwd)
