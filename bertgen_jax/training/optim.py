"""AdamW as transformers' Trainer builds it: decay mask, linear warm-up and decay, global-norm clipping.

Gradient accumulation is not an optax wrapper here: `step.make_train_step` sums the token losses of
all micro-batches inside one jitted step and divides by the total token count (what transformers'
Trainer does since 4.46 with `num_items_in_batch`), then makes one optimizer update.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from flax.traverse_util import flatten_dict, unflatten_dict

# transformers 4.56.2 `Trainer.get_decay_parameter_names`: no decay for LayerNorm modules and for
# any parameter whose (lower-cased) name matches one of these.
NO_DECAY_PATTERNS = tuple(re.compile(p) for p in
                          (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"))


def decays(path: tuple[str, ...]) -> bool:
    """Whether the parameter at this Flax path gets weight decay (transformers' Trainer rule, on the
    dotted Flax path: the patterns never touch the parts where it differs from the torch name)."""
    if "LayerNorm" in path:
        return False
    name = ".".join(path).lower()
    return not any(pattern.search(name) for pattern in NO_DECAY_PATTERNS)


def decay_mask(params) -> dict:
    """A tree of bools like `params`: True where weight decay applies."""
    return unflatten_dict({path: decays(path) for path in flatten_dict(params)})


@dataclasses.dataclass
class OptimizerConfig:
    """transformers' TrainingArguments defaults (learning_rate, adam_*, weight_decay, max_grad_norm)."""

    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    warmup_steps: int = 0
    total_steps: int = 1000  # the linear decay reaches 0 here


def linear_schedule(learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """transformers' `get_linear_schedule_with_warmup`: 0 -> lr over `warmup_steps`, then linearly to 0
    at `total_steps`. Step t (the t-th update, from 0) uses schedule(t), as torch's scheduler does."""
    warmup_steps = max(0, int(warmup_steps))
    decay_steps = max(1, int(total_steps) - warmup_steps)
    decay = optax.linear_schedule(learning_rate, 0.0, decay_steps)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`torch.nn.utils.clip_grad_norm_` as transformers' Trainer calls it: every gradient times
    min(1, max_norm / (global norm + 1e-6)).

    One scalar factor, where optax's `clip_by_global_norm` divides every element by the norm: XLA
    treats that divide as expensive and keeps a clipped copy of every gradient (a second
    gradient-sized buffer, and one more pass over it) for the two Adam moments that read it; a
    multiply by a scalar it recomputes inside each of them. The state is optax's (empty), so
    checkpoints are unchanged."""
    max_norm = float(max_norm)

    def update_fn(updates, state, params=None):
        del params
        factor = jnp.minimum(1.0, max_norm / (optax.global_norm(updates) + 1e-6))
        return jax.tree_util.tree_map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(config: OptimizerConfig, params=None) -> optax.GradientTransformation:
    """clip_by_global_norm (if max_grad_norm) then AdamW with the Trainer's decay mask.

    `params` (or a tree of the same structure) gives the mask; without it the mask is computed
    from the params passed to `init`.
    """
    schedule = linear_schedule(config.learning_rate, config.warmup_steps, config.total_steps)
    mask = decay_mask(params) if params is not None else decay_mask
    parts = []
    if config.max_grad_norm is not None and config.max_grad_norm > 0:
        parts.append(clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay, mask=mask))
    return optax.chain(*parts)


def learning_rate_at(config: OptimizerConfig, step) -> jax.Array:
    return linear_schedule(config.learning_rate, config.warmup_steps, config.total_steps)(step)
