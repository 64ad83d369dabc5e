"""Flax linen modules of BertGeneration (transformers 4.56.2 `modeling_bert_generation.py`).

Parameter names copy the PyTorch attribute names (`embeddings/word_embeddings`,
`encoder/layer_<i>/attention/self/query`, `.../output/LayerNorm`, ...), so the converter is a
mechanical rename: Linear `weight` -> Dense `kernel` (transposed), Embedding `weight` ->
`embedding`, LayerNorm `weight` -> `scale`.

Modes are call arguments, never hidden state: without `cache` a call is a full forward pass; with
`cache` (a pytree made by `init_cache`) the new tokens are written at `cache["index"]` and attend to
everything cached so far. Relative position scores use explicit query/key positions, so cached
decoding gives the same numbers as the full pass for every position type.

Numerics: softmax and LayerNorm statistics run in float32 whatever `dtype` is (transformers runs
softmax in the activation dtype; that only differs for bfloat16/float16). The additive mask value
is float32's min, as transformers uses for float32 models.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .activations import ACTIVATIONS, PReLU, XIELU
from .config import BertGenerationConfig
from .quantization import QVALUE, SCALE, dequantize_kernel, is_quantized_leaf

Array = Any
MASK_MIN = float(jnp.finfo(jnp.float32).min)


def _normal(config: BertGenerationConfig):
    return nn.initializers.normal(stddev=config.initializer_range)


def _mix32(x: Array, shifts: tuple[int, ...], multipliers: tuple[int, ...]) -> Array:
    """An xorshift-multiply integer hash on uint32 (a bijection: distinct inputs, distinct outputs)."""
    for shift, multiplier in zip(shifts, multipliers):
        x = (x ^ (x >> shift)) * jnp.uint32(multiplier)
    return x ^ (x >> shifts[-1])


def dropout_keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> Array:
    """Bool mask of `shape`, each element True (kept) with probability 1 - rate.

    Two 32-bit seeds come from `key` through jax.random (one tiny RngBitGenerator draw per dropout
    site); each element's bits are a keyed hash of its flat index: triple32 (Wellons's hash-prospector,
    the 3-round xorshift-multiply hash with the lowest measured avalanche bias) of (index ^ seed 0),
    xored with seed 1 and mixed once more. A counter-based generator like Philox (torch's on GPU), but
    plain elementwise integer ops that XLA fuses into the op that applies the mask: XLA's
    RngBitGenerator runs as a separate kernel at ~10 ns per element on CPU (~12% of a MiniLM training
    step for its ~4M dropout draws). The mask is a function of the key and the element's position
    only, so it is the same however the array is sharded.
    """
    size = math.prod(shape)
    if size > 2 ** 32:
        raise ValueError(f"dropout over {size} elements: the per-element counter is 32-bit")
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    bits = _mix32(counter ^ seeds[0], (17, 11, 15, 14), (0xED5AD4BB, 0xAC4C1B51, 0x31848BAB))
    bits = _mix32(bits ^ seeds[1], (16, 15, 15), (0x21F0AAAD, 0xD35A2D97))
    # P(bits < threshold) = threshold / 2**32 = rate (to within 2**-32).
    threshold = min(round(rate * 2 ** 32), 2 ** 32 - 1)
    return bits >= jnp.uint32(threshold)


class Dropout(nn.Module):
    """`nn.Dropout` (and torch's): zero each element with probability `rate`, scale the kept ones by
    1 / (1 - rate); off when deterministic. Masks from `dropout_keep_mask` with a key from the
    "dropout" rng collection."""

    rate: float

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate >= 1.0:
            return jnp.zeros_like(inputs)
        keep = dropout_keep_mask(self.make_rng("dropout"), inputs.shape, self.rate)
        return jax.lax.select(keep, inputs / jnp.asarray(1.0 - self.rate, inputs.dtype), jnp.zeros_like(inputs))


class QuantDense(nn.Dense):
    """nn.Dense that also accepts a quantized kernel ({"qvalue", "scale"}) and dequantizes it at the call.

    The integers are made to depend on the layer input (`where(x0 == x0, q, 0)`, true unless x0 is
    NaN, and then the output is NaN anyway), so XLA can neither hoist the int->float conversion out of
    a decoding `while_loop` nor schedule all layers' conversions up front: only one float kernel is
    live at a time. A plain function of the params (`dequantize_tree`) is loop-invariant, and XLA then
    keeps a float copy of every decoder kernel alive for the whole loop.
    """

    @nn.compact
    def __call__(self, inputs):
        leaf = self.get_variable("params", "kernel") if self.has_variable("params", "kernel") else None
        if not is_quantized_leaf(leaf):
            return super().__call__(inputs)
        x0 = inputs.reshape(-1)[0]
        q = jnp.where(x0 == x0, leaf[QVALUE], jnp.zeros((), leaf[QVALUE].dtype))
        kernel = dequantize_kernel({QVALUE: q, SCALE: leaf[SCALE]}, self.dtype or inputs.dtype)
        bias = self.get_variable("params", "bias") if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = jax.lax.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _dense(config, features, dtype, param_dtype, name=None):
    # QuantDense is nn.Dense that also takes an int8/int4 kernel and dequantizes it at the call.
    return QuantDense(features, dtype=dtype, param_dtype=param_dtype, kernel_init=_normal(config),
                    bias_init=nn.initializers.zeros, name=name)


def _layer_norm(config, dtype, param_dtype):
    # use_fast_variance=False: two-pass variance as torch computes it.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                        use_fast_variance=False)


def mask_to_bias(mask: Array) -> Array:
    """1/0 (or bool) mask -> additive float32 bias: 0 where attended, float32 min elsewhere."""
    return (1.0 - mask.astype(jnp.float32)) * MASK_MIN


class Embeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm, dropout (no token types)."""

    config: BertGenerationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.word_embeddings = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=_normal(c),
                                        dtype=self.dtype, param_dtype=self.param_dtype)
        self.position_embeddings = nn.Embed(c.max_position_embeddings, c.hidden_size,
                                            embedding_init=_normal(c), dtype=self.dtype,
                                            param_dtype=self.param_dtype)
        self.LayerNorm = _layer_norm(c, self.dtype, self.param_dtype)
        self.dropout = Dropout(rate=c.hidden_dropout_prob)

    def __call__(self, input_ids, position_ids, deterministic: bool = True):
        # Absolute positions are added for relative position types too (as in transformers).
        hidden = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        hidden = self.LayerNorm(hidden)
        return self.dropout(hidden, deterministic=deterministic)


class MultiHeadAttention(nn.Module):
    """`attention.self` / `crossattention.self`: q, k, v projections and the scores.

    Attributes:
      config: the model config.
      relative: use `config.position_embedding_type`'s relative scores (self-attention only;
        transformers builds cross-attention as absolute).
    """

    config: BertGenerationConfig
    relative: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.query = _dense(c, c.hidden_size, self.dtype, self.param_dtype)
        self.key = _dense(c, c.hidden_size, self.dtype, self.param_dtype)
        self.value = _dense(c, c.hidden_size, self.dtype, self.param_dtype)
        if self.relative:
            self.distance_embedding = nn.Embed(2 * c.max_position_embeddings - 1, c.head_dim,
                                               embedding_init=_normal(c), dtype=self.dtype,
                                               param_dtype=self.param_dtype)
        self.dropout = Dropout(rate=c.attention_probs_dropout_prob)

    def _split_heads(self, x):
        # [B, T, H] -> [B, heads, T, d]
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.config.num_attention_heads, self.config.head_dim).transpose(0, 2, 1, 3)

    # Q, K and V are three matmuls. Joining their kernels into one [H, 3H] matmul was measured slower on
    # CPU: the join is a copy of the kernels at every call (per generate for the encoder and cross-attention,
    # hoisted out of the decoding loop for self-attention, per step in training), and the joined matmul
    # saved less than that copy cost (L24 greedy batch 1: 101 -> 77 ms/token without it).
    def project_key_value(self, states):
        """Keys and values [B, heads, S, d] of `states` (used to fill caches once)."""
        return self._split_heads(self.key(states)), self._split_heads(self.value(states))

    def project_query_key_value(self, hidden):
        """Queries, keys and values [B, heads, T, d] of `hidden` (self-attention)."""
        return tuple(self._split_heads(getattr(self, name)(hidden)) for name in ("query", "key", "value"))

    def __call__(self, hidden, key, value, bias, query_positions=None, key_positions=None,
                 layer_head_mask=None, deterministic: bool = True, query=None):
        """Attend `hidden` [B, Tq, H] to `key`/`value` [B, heads, K, d].

        bias: additive float32 mask broadcastable to [B, heads, Tq, K].
        query_positions [Tq], key_positions [K]: int positions for relative scores.
        query: the queries [B, heads, Tq, d] when already projected (`project_query_key_value`).
        Returns (context [B, Tq, H], probabilities [B, heads, Tq, K]).
        """
        c = self.config
        if query is None:
            query = self._split_heads(self.query(hidden))
        scores = jnp.einsum("bhqd,bhkd->bhqk", query, key).astype(jnp.float32)
        if self.relative:
            # distance = l - r, looked up at l - r + P - 1 (transformers' `distance_embedding`).
            distance = query_positions[:, None] - key_positions[None, :]
            # Distances beyond the table only occur for masked (future/unwritten) cache slots.
            index = jnp.clip(distance + c.max_position_embeddings - 1, 0, 2 * c.max_position_embeddings - 2)
            table = self.distance_embedding(index).astype(query.dtype)  # [Tq, K, d]
            scores = scores + jnp.einsum("bhld,lrd->bhlr", query, table).astype(jnp.float32)
            if c.position_embedding_type == "relative_key_query":
                scores = scores + jnp.einsum("bhrd,lrd->bhlr", key, table).astype(jnp.float32)
        scores = scores / math.sqrt(c.head_dim) + bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = self.dropout(probs, deterministic=deterministic)
        if layer_head_mask is not None:
            probs = probs * layer_head_mask.astype(probs.dtype)[None, :, None, None]
        context = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(self.dtype), value.astype(self.dtype))
        batch, _, length, _ = context.shape
        context = context.transpose(0, 2, 1, 3).reshape(batch, length, c.hidden_size)
        return context, probs


class DenseResidualNorm(nn.Module):
    """`attention.output` / `output`: LayerNorm(dropout(dense(x)) + residual)."""

    config: BertGenerationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.dense = _dense(c, c.hidden_size, self.dtype, self.param_dtype)
        self.LayerNorm = _layer_norm(c, self.dtype, self.param_dtype)
        self.dropout = Dropout(rate=c.hidden_dropout_prob)

    def __call__(self, hidden, residual, deterministic: bool = True):
        return self.LayerNorm(self.dropout(self.dense(hidden), deterministic=deterministic) + residual)


class Attention(nn.Module):
    """`attention` / `crossattention`: MultiHeadAttention named `self` plus `output`."""

    config: BertGenerationConfig
    relative: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.self = MultiHeadAttention(self.config, self.relative, self.dtype, self.param_dtype)
        self.output = DenseResidualNorm(self.config, self.dtype, self.param_dtype)

    def __call__(self, hidden, key, value, bias, query_positions=None, key_positions=None,
                 layer_head_mask=None, deterministic: bool = True, query=None):
        context, probs = self.self(hidden, key, value, bias, query_positions, key_positions,
                                   layer_head_mask, deterministic, query=query)
        return self.output(context, hidden, deterministic), probs


class Intermediate(nn.Module):
    config: BertGenerationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.dense = _dense(c, c.intermediate_size, self.dtype, self.param_dtype)
        if c.hidden_act == "prelu":
            self.intermediate_act_fn = PReLU(self.param_dtype)
        elif c.hidden_act == "xielu":
            self.intermediate_act_fn = XIELU(self.param_dtype)
        else:
            self.intermediate_act_fn = ACTIVATIONS[c.hidden_act]

    def __call__(self, hidden):
        return self.intermediate_act_fn(self.dense(hidden))


class Layer(nn.Module):
    """One post-LN block: self-attention, optional cross-attention, feed-forward."""

    config: BertGenerationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        relative = c.position_embedding_type != "absolute"
        self.attention = Attention(c, relative, self.dtype, self.param_dtype)
        if c.add_cross_attention:
            self.crossattention = Attention(c, False, self.dtype, self.param_dtype)
        self.intermediate = Intermediate(c, self.dtype, self.param_dtype)
        self.output = DenseResidualNorm(c, self.dtype, self.param_dtype)

    def cross_key_value(self, encoder_hidden_states):
        return self.crossattention.self.project_key_value(encoder_hidden_states)

    def __call__(self, hidden, self_bias, query_positions, key_positions, self_cache=None, cache_index=None,
                 cross_kv=None, cross_bias=None, layer_head_mask=None, deterministic: bool = True):
        """Returns (hidden, new_self_cache or None, self_probs, cross_probs or None)."""
        query, key, value = self.attention.self.project_query_key_value(hidden)
        new_cache = None
        if self_cache is not None:
            # Write the new keys/values at the cache index; attend over the whole fixed-size cache.
            key = jax.lax.dynamic_update_slice(self_cache["key"], key.astype(self_cache["key"].dtype),
                                               (0, 0, cache_index, 0))
            value = jax.lax.dynamic_update_slice(self_cache["value"], value.astype(self_cache["value"].dtype),
                                                 (0, 0, cache_index, 0))
            new_cache = {"key": key, "value": value}
        hidden, self_probs = self.attention(hidden, key, value, self_bias, query_positions, key_positions,
                                            layer_head_mask, deterministic, query=query)
        cross_probs = None
        if cross_kv is not None:
            hidden, cross_probs = self.crossattention(hidden, cross_kv[0], cross_kv[1], cross_bias,
                                                      layer_head_mask=layer_head_mask,
                                                      deterministic=deterministic)
        hidden = self.output(self.intermediate(hidden), hidden, deterministic)
        return hidden, new_cache, self_probs, cross_probs


class LayerStack(nn.Module):
    """`encoder`: the list of layers (`layer_0` ... `layer_{L-1}`)."""

    config: BertGenerationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.layer = [Layer(self.config, self.dtype, self.param_dtype) for _ in range(self.config.num_hidden_layers)]

    def cross_key_values(self, encoder_hidden_states):
        return [layer.cross_key_value(encoder_hidden_states) for layer in self.layer]

    def __call__(self, hidden, self_bias, query_positions, key_positions, self_cache=None, cache_index=None,
                 cross_kvs=None, cross_bias=None, head_mask=None, deterministic=True,
                 output_hidden_states=False, output_attentions=False):
        all_hidden, all_self, all_cross, new_caches = [], [], [], []
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, layer_cache, self_probs, cross_probs = layer(
                hidden, self_bias, query_positions, key_positions,
                self_cache=None if self_cache is None else self_cache[i], cache_index=cache_index,
                cross_kv=None if cross_kvs is None else cross_kvs[i], cross_bias=cross_bias,
                layer_head_mask=None if head_mask is None else head_mask[i], deterministic=deterministic)
            new_caches.append(layer_cache)
            if output_attentions:
                all_self.append(self_probs)
                if cross_probs is not None:
                    all_cross.append(cross_probs)
        if output_hidden_states:
            all_hidden.append(hidden)
        return {
            "last_hidden_state": hidden,
            "hidden_states": tuple(all_hidden) if output_hidden_states else None,
            "attentions": tuple(all_self) if output_attentions else None,
            "cross_attentions": tuple(all_cross) if output_attentions and all_cross else None,
            "self_cache": None if self_cache is None else new_caches,
        }


class BertGenerationModule(nn.Module):
    """The BertGeneration stack (`BertGenerationEncoder` in transformers): embeddings + layers.

    Causal self-attention when `config.is_decoder`; cross-attention when `config.add_cross_attention`
    and encoder states (or a cache holding their keys/values) are given.
    """

    config: BertGenerationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.embeddings = Embeddings(self.config, self.dtype, self.param_dtype)
        self.encoder = LayerStack(self.config, self.dtype, self.param_dtype)

    # -------------------------------------------------------------- cache
    def init_cache(self, batch_size: int, max_length: int, encoder_hidden_states=None,
                   encoder_attention_mask=None, attention_mask=None):
        """A fixed-size cache for `max_length` decoder positions.

        {"index": int32 0, "mask": [B, M] key mask (prompt padding), "self": per-layer
        {"key","value"} [B, heads, M, d] zeros, "cross": {"mask": [B, S], "layers": per-layer
        {"key","value"} of the encoder states, computed once here}}.
        """
        c = self.config
        shape = (batch_size, c.num_attention_heads, max_length, c.head_dim)
        self_cache = [{"key": jnp.zeros(shape, self.dtype), "value": jnp.zeros(shape, self.dtype)}
                      for _ in range(c.num_hidden_layers)]
        if attention_mask is None:
            key_mask = jnp.ones((batch_size, max_length), jnp.int32)
        else:
            # A prompt mask [B, P] covers the first P slots; generated slots are always attended.
            attention_mask = jnp.asarray(attention_mask, jnp.int32)
            pad = max_length - attention_mask.shape[1]
            key_mask = jnp.concatenate([attention_mask, jnp.ones((batch_size, pad), jnp.int32)], axis=1)
        cache = {"index": jnp.zeros((), jnp.int32), "mask": key_mask, "self": self_cache}
        if encoder_hidden_states is not None:
            if not c.add_cross_attention:
                raise ValueError("encoder_hidden_states given to a model without cross-attention "
                                 "(config.add_cross_attention is False)")
            source_length = encoder_hidden_states.shape[1]
            if encoder_attention_mask is None:
                encoder_attention_mask = jnp.ones((batch_size, source_length), jnp.int32)
            layers = [{"key": k, "value": v} for k, v in self.encoder.cross_key_values(encoder_hidden_states)]
            cache["cross"] = {"mask": jnp.asarray(encoder_attention_mask, jnp.int32), "layers": layers}
        return cache

    # -------------------------------------------------------------- forward
    def default_position_ids(self, input_ids, query_positions, past):
        """Positions when none are given: past + arange (RoBERTa overrides this in bert_family)."""
        return query_positions[None, :]

    def __call__(self, input_ids, attention_mask=None, position_ids=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, head_mask=None, cache=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False, token_type_ids=None):
        c = self.config
        batch, length = input_ids.shape
        causal = bool(c.is_decoder)
        if cache is None:
            past = 0
            query_positions = jnp.arange(length, dtype=jnp.int32)
            key_positions = query_positions
            if attention_mask is None:
                attention_mask = jnp.ones((batch, length), jnp.int32)
        else:
            past = cache["index"]
            query_positions = past + jnp.arange(length, dtype=jnp.int32)
            key_positions = jnp.arange(cache["self"][0]["key"].shape[2], dtype=jnp.int32)
            if attention_mask is None:
                attention_mask = cache["mask"]
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids, query_positions, past)

        mask = jnp.asarray(attention_mask)
        if mask.ndim == 3:  # [B, Tq, K] given explicitly, as transformers accepts
            mask = mask[:, None, :, :]
        else:
            mask = mask[:, None, None, :]
            if causal or cache is not None:
                mask = mask * (key_positions[None, :] <= query_positions[:, None])[None, None]
        self_bias = mask_to_bias(mask)

        cross_kvs, cross_bias = None, None
        if cache is not None and "cross" in cache:
            cross_kvs = [(layer["key"], layer["value"]) for layer in cache["cross"]["layers"]]
            cross_bias = mask_to_bias(cache["cross"]["mask"][:, None, None, :])
        elif encoder_hidden_states is not None:
            if not c.add_cross_attention:
                raise ValueError("encoder_hidden_states given to a model without cross-attention "
                                 "(config.add_cross_attention is False)")
            cross_kvs = self.encoder.cross_key_values(encoder_hidden_states)
            if encoder_attention_mask is None:
                encoder_attention_mask = jnp.ones(encoder_hidden_states.shape[:2], jnp.int32)
            encoder_attention_mask = jnp.asarray(encoder_attention_mask)
            if encoder_attention_mask.ndim == 3:
                cross_bias = mask_to_bias(encoder_attention_mask[:, None, :, :])
            else:
                cross_bias = mask_to_bias(encoder_attention_mask[:, None, None, :])

        head_mask = _expand_head_mask(head_mask, c)
        if token_type_ids is None:
            hidden = self.embeddings(input_ids, position_ids, deterministic)
        else:  # BERT/RoBERTa stacks only (bert_family.FamilyEmbeddings)
            hidden = self.embeddings(input_ids, position_ids, deterministic, token_type_ids=token_type_ids)
        outputs = self.encoder(hidden, self_bias, query_positions, key_positions,
                               self_cache=None if cache is None else cache["self"], cache_index=past,
                               cross_kvs=cross_kvs, cross_bias=cross_bias, head_mask=head_mask,
                               deterministic=deterministic, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
        if cache is not None:
            new_cache = dict(cache)
            new_cache["self"] = outputs.pop("self_cache")
            new_cache["index"] = cache["index"] + length
            outputs["cache"] = new_cache
        else:
            outputs.pop("self_cache")
            outputs["cache"] = None
        return outputs


def _expand_head_mask(head_mask, config):
    """[heads] or [L, heads] -> [L, heads] (transformers' get_head_mask), None stays None."""
    if head_mask is None:
        return None
    head_mask = jnp.asarray(head_mask)
    if head_mask.ndim == 1:
        head_mask = jnp.broadcast_to(head_mask[None, :], (config.num_hidden_layers, head_mask.shape[0]))
    if head_mask.shape != (config.num_hidden_layers, config.num_attention_heads):
        raise ValueError(
            f"head_mask has shape {tuple(head_mask.shape)}; expected ({config.num_attention_heads},) or "
            f"({config.num_hidden_layers}, {config.num_attention_heads})"
        )
    return head_mask


# On CPU, decoding steps of 2..32 rows (batch x beams, one position each) project with a multiply-and-sum
# over the embeddings' contiguous hidden axis instead of a matmul: XLA's matmul of so few rows runs below
# both the memory and the compute rate (8 rows at MiniLM size: ~13 GB/s, ~50 GFLOP/s) and measured 1.2-1.7x
# slower than the sum from MiniLM to bert-large sizes in float32; one row keeps XLA's matrix-vector kernel
# (the sum is far slower there), 33 rows and more the matmul. The choice is made per platform where the
# program is lowered (`lax.platform_dependent`): GPUs and TPUs keep the matmul (unmeasured there), also in
# an export for several platforms.
ROW_SUM_PROJECTION_ROWS = (2, 32)


def _tied_projection(hidden, embeddings):
    """hidden [B, T, H] @ embeddings [V, H]^T -> [B, T, V]."""
    matmul = functools.partial(jnp.einsum, "bth,vh->btv")
    batch, length, width = hidden.shape
    low, high = ROW_SUM_PROJECTION_ROWS
    if not (length == 1 and low <= batch <= high and hidden.dtype == embeddings.dtype == jnp.float32):
        return matmul(hidden, embeddings)

    def row_sum(hidden, embeddings):
        logits = jnp.sum(embeddings[:, None, :] * hidden.reshape(1, batch, width), axis=-1)  # [V, rows]
        return logits.T.reshape(batch, 1, -1)

    return jax.lax.platform_dependent(hidden, embeddings, cpu=row_sum, default=matmul)


def output_projection(head, hidden, word_embeddings):
    """An LM head's hidden -> vocabulary projection: the word embeddings transposed when tied, else
    its own `decoder` kernel (every head of the family shares this)."""
    if head.config.tie_word_embeddings:
        return _tied_projection(hidden, word_embeddings.astype(head.dtype))
    return head.decoder(hidden)


def untied_decoder(head):
    """The `decoder` projection an LM head owns when the word embeddings are not tied."""
    c = head.config
    return QuantDense(c.vocab_size, use_bias=False, dtype=head.dtype, param_dtype=head.param_dtype,
                      kernel_init=_normal(c))


class LMHead(nn.Module):
    """`lm_head`: logits = h @ E^T + bias, E the word embeddings when tied (no transform)."""

    config: BertGenerationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.bias = self.param("bias", nn.initializers.zeros, (c.vocab_size,), self.param_dtype)
        if not c.tie_word_embeddings:
            self.decoder = untied_decoder(self)

    def __call__(self, hidden, word_embeddings=None):
        logits = output_projection(self, hidden, word_embeddings)
        return logits + self.bias.astype(logits.dtype)


class DecoderModule(nn.Module):
    """BertGenerationDecoder: `bert` stack + `lm_head`."""

    config: BertGenerationConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.bert = BertGenerationModule(self.config, self.dtype, self.param_dtype)
        self.lm_head = LMHead(self.config, self.dtype, self.param_dtype)

    def init_cache(self, batch_size, max_length, encoder_hidden_states=None, encoder_attention_mask=None,
                   attention_mask=None):
        return self.bert.init_cache(batch_size, max_length, encoder_hidden_states, encoder_attention_mask,
                                    attention_mask)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, head_mask=None, cache=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False):
        outputs = self.bert(input_ids, attention_mask, position_ids, encoder_hidden_states, encoder_attention_mask,
                            head_mask, cache, deterministic, output_hidden_states, output_attentions)
        embedding = self.bert.embeddings.word_embeddings.embedding if self.config.tie_word_embeddings else None
        outputs["logits"] = self.lm_head(outputs["last_hidden_state"], embedding)
        return outputs
