"""Attention projections: the params tree keeps transformers' one `query` / `key` / `value` Dense each,
and no program copies those kernels at run time.

Joining the Q/K/V (and cross-attention K/V) kernels into one [H, 3H] matmul was measured slower on CPU
than three matmuls (the join copies the kernels at every generate or training step), so the modules call
the layers one by one; these tests pin that no compiled path (the encoder + cross-attention cache that
generation builds, the decoding loop, the training gradient) concatenates kernels again. The tied LM head
of a decoding step of a few rows is a multiply-and-sum instead of a matmul (faster on CPU): the last test
pins which shapes take it and that its logits are the matmul's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bertgen_jax import EncoderDecoderModel
from bertgen_jax.config import BertGenerationConfig
from bertgen_jax.generation import loop
from bertgen_jax.modules import ROW_SUM_PROJECTION_ROWS, LMHead, MultiHeadAttention

from conftest import TINY, tiny_encoder_decoder

NAMES = ("query", "key", "value")


def test_init_tree_keeps_one_dense_per_projection():
    module = MultiHeadAttention(BertGenerationConfig(**dict(TINY, is_decoder=True, add_cross_attention=True)))
    params = module.init(jax.random.PRNGKey(0), jnp.ones((2, 3, 32)), method=MultiHeadAttention.project_query_key_value)
    assert set(params["params"]) == set(NAMES)
    for name in NAMES:
        assert params["params"][name]["kernel"].shape == (32, 32)
        assert params["params"][name]["bias"].shape == (32,)


def _kernel_concatenations(jaxpr, hidden: int) -> list:
    """Output shapes of every `concatenate` (nested jaxprs too) that joins [H, H] kernels or [H] biases."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "concatenate":
            shapes = [tuple(v.aval.shape) for v in eqn.invars]
            if all(s in ((hidden, hidden), (hidden,)) for s in shapes):
                found.append(tuple(eqn.outvars[0].aval.shape))
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    found += _kernel_concatenations(getattr(inner, "jaxpr", inner), hidden)
    return found


def test_generation_and_training_copy_no_kernels(tmp_path):
    tiny_encoder_decoder(seed=3).save_pretrained(str(tmp_path))
    model = EncoderDecoderModel.from_pretrained(str(tmp_path))
    hidden, max_length = model.config.encoder.hidden_size, 6
    ids = jnp.asarray(np.random.default_rng(4).integers(3, 99, (2, 7)), jnp.int32)
    mask = jnp.ones_like(ids)

    # The helper can fail: a joined projection is what it finds.
    def joined(params):
        q, k = params["decoder"]["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"], \
            params["decoder"]["bert"]["encoder"]["layer_0"]["attention"]["self"]["key"]["kernel"]
        return ids[..., None].astype(jnp.float32) @ jnp.ones((1, hidden)) @ jnp.concatenate([q, k], axis=1)

    assert _kernel_concatenations(jax.make_jaxpr(joined)(model.params).jaxpr, hidden) == [(hidden, 2 * hidden)]

    build_cache = functools.partial(model._generation_cache, max_length=max_length)
    assert _kernel_concatenations(jax.make_jaxpr(build_cache)(model.params, ids, mask).jaxpr, hidden) == []

    cache = model._build_generation_cache(model.params, ids, mask, max_length)
    knobs, options = loop.plan_decoding(1, max_length=max_length)
    decode = functools.partial(loop._decode, tokens_to_logits=model.tokens_to_logits, options=options)
    prompt = jnp.full((2, 1), 2, jnp.int32)
    jaxpr = jax.make_jaxpr(decode)(model.params, cache, prompt, knobs, jax.random.PRNGKey(0)).jaxpr
    assert any(eqn.primitive.name == "while" for eqn in jaxpr.eqns)
    assert _kernel_concatenations(jaxpr, hidden) == []

    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    loss_sum = model.loss_function(deterministic=False)
    grad = jax.grad(lambda p: loss_sum(p, batch, jax.random.PRNGKey(0))[0])
    assert _kernel_concatenations(jax.make_jaxpr(grad)(model.params).jaxpr, hidden) == []


def _lowered_ops(fn, *args, platforms=("cpu",)) -> tuple:
    """(dot_general ops, reduce ops) in the StableHLO that `fn` lowers to for `platforms`."""
    from jax import export

    text = export.export(jax.jit(fn), platforms=platforms)(*args).mlir_module()
    return text.count("stablehlo.dot_general"), text.count("stablehlo.reduce")


def test_lm_head_of_a_few_row_decoding_step_sums_rows_and_equals_the_matmul():
    config = BertGenerationConfig(**dict(TINY, is_decoder=True))
    head = LMHead(config)
    rng = np.random.default_rng(5)
    embeddings = jnp.asarray(rng.normal(0, 1, (config.vocab_size, config.hidden_size)), jnp.float32)
    params = {"bias": jnp.asarray(rng.normal(0, 1, (config.vocab_size,)), jnp.float32)}
    apply = functools.partial(head.apply, {"params": params})
    low, high = ROW_SUM_PROJECTION_ROWS
    for shape in ((1, 1), (low, 1), (8, 1), (high, 1), (high + 1, 1), (3, 4)):
        hidden = jnp.asarray(rng.normal(0, 1, shape + (config.hidden_size,)), jnp.float32)
        logits = jax.jit(apply)(hidden, embeddings)
        expected = np.einsum("bth,vh->btv", np.asarray(hidden, np.float64), np.asarray(embeddings, np.float64))
        np.testing.assert_allclose(np.asarray(logits), expected + np.asarray(params["bias"]), rtol=1e-5, atol=1e-5)
        row_sum = shape[1] == 1 and low <= shape[0] <= high
        assert _lowered_ops(apply, hidden, embeddings) == ((0, 1) if row_sum else (1, 0)), shape
        # Other platforms keep the matmul; an export for CPU and GPU holds the sum only for CPU (jnp.einsum
        # lowers one matmul per platform there).
        assert _lowered_ops(apply, hidden, embeddings, platforms=("cuda",)) == (1, 0), shape
        assert _lowered_ops(apply, hidden, embeddings, platforms=("cpu", "cuda")) == (2, int(row_sum)), shape
    # Half precision keeps the matmul (the row sum was measured in float32 only).
    half = functools.partial(LMHead(config, dtype=jnp.bfloat16).apply, {"params": params})
    assert _lowered_ops(half, jnp.ones((4, 1, config.hidden_size), jnp.bfloat16), embeddings) == (1, 0)
