"""Inputs and the loss, shared by the models, generation and training: host-side checks of token ids
and masks (a JAX gather clamps out-of-range ids silently), `IGNORE_INDEX`, `shift_tokens_right`
and the cross-entropy. A leaf: it imports nothing of the project.
"""

from __future__ import annotations

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
