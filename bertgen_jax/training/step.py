"""The loss, its gradients and one jitted training step.

Batches are dicts of int32 arrays shaped `[accum, batch, length]`: `input_ids`, `attention_mask`
(source side) and `labels` (target ids, -100 where ignored); a packed batch (several pairs per row,
`training.packing`) adds `inputs.PACKED_KEYS` (segment ids and per-pair positions), from which the
loss builds per-pair attention masks. `accum` micro-batches are run one after
another inside the step (`lax.scan`); the token losses of all of them are summed and divided by the
total number of label tokens, so the gradient is that of the token-mean loss over the whole
accumulated batch. With `accum == 1` the loss is exactly transformers' EncoderDecoderModel loss:
decoder inputs are the labels shifted right with `decoder_start_token_id`, the decoder attention
mask is `decoder_input_ids != pad_token_id` (as transformers builds it from labels), cross-entropy
over labels != -100.

Mixed precision: `compute_dtype=jnp.bfloat16` runs the modules in bfloat16 while params, gradients
and optimizer state stay float32 (Flax casts each parameter to the compute dtype where it is used);
softmax, LayerNorm statistics and the loss stay float32.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from ..inputs import PACKED_KEYS, is_packed
from ..models import IGNORE_INDEX
from ..models import token_losses  # noqa: F401  (re-exported: the one label-smoothed cross-entropy)
from . import distributed

BATCH_KEYS = ("input_ids", "attention_mask", "labels")


def model_inputs(batch) -> dict:
    """The batch leaves the loss reads: BATCH_KEYS, and a packed batch's segment ids and positions."""
    return {k: batch[k] for k in BATCH_KEYS + (PACKED_KEYS if is_packed(batch) else ())}


# Dropout keys are JAX's "unsafe_rbg" keys (XLA's RngBitGenerator, what MaxText uses for dropout) instead of
# threefry: threefry's hash is inlined at each of the ~50 dropout sites of a 6+6-layer model and was half of
# the training step's compile time on CPU. Each site draws two seeds from its key; the mask itself is the
# fused counter hash of `modules.dropout_keep_mask`.
DROPOUT_PRNG_IMPL = "unsafe_rbg"


def dropout_key(key: jax.Array) -> jax.Array:
    """A dropout key drawn from the state's raw threefry key (uint32[2])."""
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl=DROPOUT_PRNG_IMPL)


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree: jit-able, shardable, checkpointable)."""

    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]: split once per step for dropout


def create_train_state(params, optimizer: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """A fresh state; params are copied, so donating the state never deletes the model's arrays."""
    params = jax.tree_util.tree_map(jnp.array, params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.PRNGKey(seed))


def make_loss_fn(model, *, label_smoothing: float = 0.0, deterministic: bool = True, compute_dtype=None,
                 labelled_only: bool = False, row_groups: int = 1):
    """The model's `loss_function`: `loss_sum(params, batch, dropout_rng) -> (sum of token losses, number
    of label tokens)` for one micro-batch (leaves [B, T]). `labelled_only`: the LM head runs on labelled
    positions only, gathered within each of `row_groups` groups of rows (the batch shards of the mesh)."""
    return model.loss_function(label_smoothing=label_smoothing, deterministic=deterministic,
                               compute_dtype=compute_dtype, labelled_only=labelled_only, row_groups=row_groups)


def make_grad_fn(model, *, label_smoothing: float = 0.0, deterministic: bool = True, compute_dtype=None,
                 labelled_only: bool = False, row_groups: int = 1):
    """`grads(params, batch, rng) -> (mean loss, grads, label tokens)` over an accumulated batch
    (leaves [accum, B, T]): one forward/backward per micro-batch, summed, divided by the tokens."""
    loss_sum_fn = make_loss_fn(model, label_smoothing=label_smoothing, deterministic=deterministic,
                               compute_dtype=compute_dtype, labelled_only=labelled_only, row_groups=row_groups)

    def mean_loss(params, micro_batch, rng, denom):
        return loss_sum_fn(params, micro_batch, rng)[0] / denom

    value_and_grad = jax.value_and_grad(mean_loss)

    def grad_fn(params, micro_batch, micro_rng, denom):
        return value_and_grad(params, micro_batch, micro_rng if deterministic else dropout_key(micro_rng), denom)

    def grads(params, batch, rng):
        accum = batch["input_ids"].shape[0]
        # The label count is known from the labels before any forward pass, so backprop starts from
        # d(loss_sum / count) and the gradients come out already divided: dividing the summed
        # gradients afterwards was one more pass over all of them, and a second gradient-sized buffer
        # (the divided copy, read by the clipping and the update beside the undivided one).
        count = jnp.sum(batch["labels"] != IGNORE_INDEX).astype(jnp.float32)
        denom = jnp.maximum(count, 1.0)

        def micro_step(carry, xs):
            grad_sum, loss_sum = carry
            micro_batch, micro_rng = xs
            loss, g = grad_fn(params, micro_batch, micro_rng, denom)
            return (jax.tree_util.tree_map(jnp.add, grad_sum, g), loss_sum + loss), None

        micro = model_inputs(batch)
        rngs = jax.random.split(rng, accum)
        if accum == 1:  # no loop (compiles faster)
            loss, grad = grad_fn(params, {k: v[0] for k, v in micro.items()}, rngs[0], denom)
        else:
            init = (jax.tree_util.tree_map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))
            (grad, loss), _ = jax.lax.scan(micro_step, init, (micro, rngs))
        return loss, grad, count

    return grads


class TrainStep:
    """One optimizer update as two compiled programs: `gradients(params, batch, state rng, buffer) ->
    (mean loss, grads, label tokens)`, then `update(state, grads) -> (state, grad norm)`.

    Two programs because XLA compiles a program on about one core: the optimizer's part (a chain of
    element-wise ops per parameter tensor, ~60% of the joined program's HLO at MiniLM size) compiles
    on the other core while the gradients' program compiles (`compile_ahead`; MiniLM
    bert2bert: 16.6 -> 11.7 s). The update waits for the gradients anyway (clipping needs their
    global norm), so the split costs one more dispatch per step and no device time.

    The gradients are written into one buffer that each step donates back to the next (`buffer`,
    otherwise unused): a fresh set of gradient arrays every step (269 at MiniLM size, most of them
    below glibc's mmap threshold) fragmented the heap and raised the run's peak RSS by 300-400 MB.
    What the split does cost is memory: the gradients' buffer is whole while the backward pass still
    holds its activations, where the joined program wrote late layers' gradients into space freed by
    their activations (peak RSS MiniLM bert2bert +1-4%, bert-base bert2bert +8%; see
    `separate_update_by_default`). The state is donated to `update`. Each program is a
    `distributed.CompiledTogether` (on several processes they compile ahead of their first call and
    meet at a barrier)."""

    def __init__(self, gradients, update, zeros):
        self.gradients = distributed.CompiledTogether(gradients, "train_gradients")
        self.update = distributed.CompiledTogether(update, "train_update")
        # () -> zeros shaped and sharded as the gradients: the first step's buffer
        self.zeros = distributed.CompiledTogether(zeros, "train_zeros")
        self._buffer = None

    def __call__(self, state: TrainState, batch):
        loss, grads, count = self.gradients(state.params, batch, state.rng, self._gradient_buffer())
        self._buffer = grads  # read by the update, then overwritten by the next step's gradients
        state, grad_norm = self.update(state, grads)
        return state, {"loss": loss, "label_tokens": count, "grad_norm": grad_norm}

    def _gradient_buffer(self):
        # Donated: never held here while a program owns it (a step that fails loses it; the next makes one).
        buffer, self._buffer = self._buffer, None
        return self.zeros() if buffer is None else buffer

    def release(self) -> None:
        """Free the gradient buffer (the next call makes a new one)."""
        for leaf in jax.tree_util.tree_leaves(self._buffer):
            if not leaf.is_deleted():
                leaf.delete()
        self._buffer = None

    @property
    def parts(self) -> tuple:
        return self.gradients, self.update

    @property
    def programs(self) -> dict:
        """The programs compiled ahead so far, by (program name, argument signature)."""
        return _programs(self.parts)

    def compile_ahead(self, state: TrainState, batch, while_compiling: Sequence[Callable[[], object]] = ()) -> None:
        """Compile both programs for these arguments (arrays or `jax.ShapeDtypeStruct`s with shardings),
        the update's on a second thread (XLA's compile runs without the GIL), which then makes the first
        gradient buffer (its program's first run takes ~0.5 s at MiniLM size, not all of it the zeroing)
        and runs `while_compiling` (other start-up work) while the gradients' program, the longest, still
        compiles. The buffer is the size of the params: below what the compiler itself holds meanwhile.
        The second thread starts once the gradients' program is traced: two tracings at once only take
        turns at the GIL and delay the longest compile (MiniLM bert2bert, the end-to-end job's step,
        alternated three times: 8.5-8.7 -> 8.0-8.2 s to both programs and the start-up work beside
        them; as one program, `JoinedTrainStep`, 11.0-12.0 -> 10.4-11.6 s)."""
        _beside(lambda traced: self.gradients.compile_ahead(state.params, batch, state.rng, state.params,
                                                            after_lowering=traced),
                [lambda: self.update.compile_ahead(state, state.params), self._make_first_buffer, *while_compiling])

    def _make_first_buffer(self) -> None:
        self.zeros.compile_ahead()
        if self._buffer is None:
            self._buffer = self.zeros()


class JoinedTrainStep:
    """One optimizer update as one compiled program `(state, batch) -> (state, metrics)`, the state
    donated: the gradients live only inside it. Same interface as `TrainStep`."""

    def __init__(self, step):
        self.step = distributed.CompiledTogether(step, "train_step")

    def __call__(self, state: TrainState, batch):
        return self.step(state, batch)

    @property
    def parts(self) -> tuple:
        return (self.step,)

    @property
    def programs(self) -> dict:
        return _programs(self.parts)

    def compile_ahead(self, state: TrainState, batch, while_compiling: Sequence[Callable[[], object]] = ()) -> None:
        """Compile the program; `while_compiling` runs on a second thread once it is traced."""
        _beside(lambda traced: self.step.compile_ahead(state, batch, after_lowering=traced), while_compiling)

    def release(self) -> None:
        pass


class _Gate:
    """Where the second thread of `_beside` waits: opened by the main thread once its program is traced
    (`open(True)`), or closed when that or anything after it failed (`open(False)`: jobs not yet past
    the gate are skipped)."""

    def __init__(self):
        self._opened, self._traced = threading.Event(), False

    def open(self, traced: bool) -> None:
        self._traced = traced
        self._opened.set()

    def wait(self) -> bool:
        self._opened.wait()
        return self._traced


def _beside(main: Callable[[Callable[[bool], None]], object], jobs: Sequence[Callable[[], object]]) -> None:
    """Run `main(traced)` here and `jobs`, in order, on one second thread once `main` has called
    `traced(True)` (its program is traced; `traced(False)`: skip them); wait for both, raise the first
    error (main's first)."""
    from concurrent.futures import ThreadPoolExecutor

    gate = _Gate()

    def run_jobs():
        if gate.wait():
            for job in jobs:
                job()

    with ThreadPoolExecutor(1, thread_name_prefix="bertgen-compile") as pool:
        future = pool.submit(run_jobs)
        try:
            main(gate.open)
        except BaseException:
            gate.open(False)  # the jobs must not wait forever for a main that failed
            raise
        future.result()


def _programs(parts) -> dict:
    return {(part.name, signature): program for part in parts for signature, program in part.programs.items()}


# Up to here (parameters, summed over the tree) the step runs as two programs (`TrainStep`): the
# compile time saved (MiniLM bert2bert, 49M: 16.6 -> 11.7 s, a cold `bertgen train` of the
# end-to-end job 78-85 -> 72 s) is worth the memory (+1-4% peak RSS). Above it, one program
# (`JoinedTrainStep`): bert-base bert2bert (247M) compiled 27-30 -> 24 s but peaked 470 MB (8%) higher.
SEPARATE_UPDATE_MAX_PARAMS = 128_000_000


def separate_update_by_default(params) -> bool:
    """Whether `make_train_step` runs gradients and update as two programs for these params (or their
    shapes) when not told: for models up to SEPARATE_UPDATE_MAX_PARAMS parameters."""
    count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
    return count <= SEPARATE_UPDATE_MAX_PARAMS


def make_train_step(model, optimizer: optax.GradientTransformation, *, label_smoothing: float = 0.0,
                    deterministic: bool = False, compute_dtype=None, state_sharding=None, batch_sharding=None,
                    labelled_only: bool = False, row_groups: int = 1, separate_update=None):
    """One update `(state, batch) -> (state, metrics)`; `state` is donated (its buffers are reused for
    the new state, so do not touch the old one). No host sync inside. `separate_update`: gradients and
    update as two programs (`TrainStep`) or one (`JoinedTrainStep`); None: `separate_update_by_default`
    for the model's params. Both compute the same update.

    metrics: `loss` (token-mean over the accumulated batch), `label_tokens`, `grad_norm` (before
    clipping). With shardings given, the step runs under them (see `training.sharding`); the gradients
    are sharded as the params.
    """
    grads_fn = make_grad_fn(model, label_smoothing=label_smoothing, deterministic=deterministic,
                            compute_dtype=compute_dtype, labelled_only=labelled_only, row_groups=row_groups)
    if separate_update is None:
        separate_update = separate_update_by_default(model.params)
    replicated = None if state_sharding is None else jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec())

    def apply_update(state: TrainState, grads, rng):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, rng)

    if not separate_update:
        def train_step(state: TrainState, batch):
            rng, step_rng = jax.random.split(state.rng)
            loss, grads, count = grads_fn(state.params, batch, step_rng)
            metrics = {"loss": loss, "label_tokens": count, "grad_norm": optax.global_norm(grads)}
            return apply_update(state, grads, rng), metrics

        kwargs: dict = {"donate_argnums": (0,)}
        if state_sharding is not None:
            kwargs.update(in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, replicated))
        return JoinedTrainStep(jax.jit(train_step, **kwargs))

    def gradients(params, batch, state_rng, buffer):
        del buffer  # donated: the gradients are written into it
        _, step_rng = jax.random.split(state_rng)
        return grads_fn(params, batch, step_rng)

    def update(state: TrainState, grads):
        rng, _ = jax.random.split(state.rng)  # the split `gradients` drew its step key from
        return apply_update(state, grads, rng), optax.global_norm(grads)

    param_shapes = jax.eval_shape(lambda params: params, model.params)

    def zeros():
        return jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), param_shapes)

    # keep_unused: the buffer must stay a parameter of the program for its donation to alias the output.
    gradient_kwargs: dict = {"donate_argnums": (3,), "keep_unused": True}
    update_kwargs: dict = {"donate_argnums": (0,)}
    zeros_kwargs: dict = {}
    if state_sharding is not None:
        params_sharding = state_sharding.params
        gradient_kwargs.update(in_shardings=(params_sharding, batch_sharding, replicated, params_sharding),
                               out_shardings=(replicated, params_sharding, replicated))
        update_kwargs.update(in_shardings=(state_sharding, params_sharding), out_shardings=(state_sharding, replicated))
        zeros_kwargs.update(out_shardings=params_sharding)
    return TrainStep(jax.jit(gradients, **gradient_kwargs), jax.jit(update, **update_kwargs),
                     jax.jit(zeros, **zeros_kwargs))


def make_eval_step(model, *, compute_dtype=None, params_sharding=None, batch_sharding=None,
                   labelled_only: bool = False, row_groups: int = 1):
    """Jitted `(params, batch) -> (sum of token cross-entropies, label tokens)` without dropout or
    label smoothing; sum over batches and divide for the eval loss."""
    loss_sum = make_loss_fn(model, deterministic=True, compute_dtype=compute_dtype, labelled_only=labelled_only,
                            row_groups=row_groups)

    def eval_step(params, batch):
        micro = model_inputs(batch)
        sums, counts = jax.lax.map(lambda b: loss_sum(params, b, None), micro)
        return jnp.sum(sums), jnp.sum(counts)

    kwargs: dict = {}
    if params_sharding is not None:
        replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
        kwargs.update(in_shardings=(params_sharding, batch_sharding), out_shardings=(replicated, replicated))
    return jax.jit(eval_step, **kwargs)

