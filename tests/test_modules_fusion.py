"""Fused projections: the self-attention Q/K/V (and cross-attention K/V) Dense layers run as one matmul
while the params tree keeps one `query` / `key` / `value` entry each (transformers' names).

Parity with transformers is proven by the parity and generation suites, which run through the fused
path; these tests pin what they cannot see: the fused call equals the per-layer calls, quantized
kernels take the per-layer path, init builds the unfused tree, and in the compiled decoding loop the
kernel concatenation is hoisted out of the `while_loop` (computed once per generate, not per token).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgen_jax import EncoderDecoderModel
from bertgen_jax.config import BertGenerationConfig
from bertgen_jax.generation import loop
from bertgen_jax.modules import MultiHeadAttention, QuantDense, fused_dense
from bertgen_jax.quantization import quantize_kernel

from conftest import TINY, tiny_encoder_decoder

NAMES = ("query", "key", "value")


def _config():
    return BertGenerationConfig(**dict(TINY, is_decoder=True, add_cross_attention=True))


def _attention_params(param_dtype, seed=0):
    module = MultiHeadAttention(_config(), param_dtype=param_dtype)
    hidden = jnp.ones((2, 3, 32))
    params = module.init(jax.random.PRNGKey(seed), hidden, method=MultiHeadAttention.project_query_key_value)
    # Non-zero biases (init makes them zero) so a dropped or misplaced bias shows.
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(rng.standard_normal(x.shape), x.dtype) if path[-1].key == "bias" else x,
        params)
    return module, params


def test_init_tree_keeps_one_dense_per_projection():
    module, params = _attention_params(jnp.float32)
    assert set(params["params"]) == set(NAMES)
    for name in NAMES:
        assert params["params"][name]["kernel"].shape == (32, 32)
        assert params["params"][name]["bias"].shape == (32,)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_fused_projection_equals_the_separate_layers(param_dtype):
    module, params = _attention_params(param_dtype)
    hidden = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 32)), jnp.float32)

    def separate(m, x):
        return tuple(m._split_heads(getattr(m, name)(x)) for name in NAMES)

    fused = module.apply(params, hidden, method=MultiHeadAttention.project_query_key_value)
    reference = module.apply(params, hidden, method=separate)
    for got, want in zip(fused, reference):
        assert got.shape == (2, 4, 5, 8) and got.dtype == want.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    key, value = module.apply(params, hidden, method=MultiHeadAttention.project_key_value)
    np.testing.assert_allclose(np.asarray(key), np.asarray(reference[1]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(value), np.asarray(reference[2]), rtol=1e-6, atol=1e-6)


def test_quantized_kernels_take_the_per_layer_path():
    """A quantized kernel ({qvalue, scale}) among the fused layers: each layer runs as QuantDense,
    so the outputs equal the per-layer calls bit for bit (one kernel quantized is enough to switch)."""

    class Pair(nn.Module):
        def setup(self):
            self.a = QuantDense(16)
            self.b = QuantDense(16)

        def fused(self, x):
            return fused_dense(self, ("a", "b"), x)

        def separate(self, x):
            return self.a(x), self.b(x)

    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 24)), jnp.float32)
    params = Pair().init(jax.random.PRNGKey(0), x, method=Pair.separate)["params"]
    params = {"a": {"kernel": jax.device_put(quantize_kernel(params["a"]["kernel"])), "bias": params["a"]["bias"]},
              "b": params["b"]}
    fused = Pair().apply({"params": params}, x, method=Pair.fused)
    separate = Pair().apply({"params": params}, x, method=Pair.separate)
    for got, want in zip(fused, separate):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _reachable(hlo: str, root: str) -> str:
    """The text of computation `root` and of every computation it calls (fusions, nested loops)."""
    bodies = {}
    for block in re.split(r"\n(?=\S)", hlo):
        match = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", block)
        if match:
            bodies[match.group(1)] = block
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in bodies:
            continue
        seen.add(name)
        # HLO names are unique in a module: a %name that is a computation is a call of it.
        todo.extend(ref for ref in re.findall(r"%([\w.\-]+)", bodies[name]) if ref in bodies)
    return "\n".join(bodies[name] for name in seen)


def test_decode_loop_runs_one_qkv_matmul_per_layer_with_the_concat_hoisted(tmp_path):
    tiny_encoder_decoder(seed=3).save_pretrained(str(tmp_path))
    model = EncoderDecoderModel.from_pretrained(str(tmp_path))
    batch, hidden, layers, max_length = 2, 32, 2, 6
    ids = jnp.asarray(np.random.default_rng(4).integers(3, 99, (batch, 7)), jnp.int32)
    cache = model._build_generation_cache(model.params, ids, jnp.ones_like(ids), max_length)
    knobs, options = loop.plan_decoding(1, max_length=max_length)
    prompt = jnp.full((batch, 1), 2, jnp.int32)
    hlo = loop._decode_jit.lower(model.params, cache, prompt, knobs, jax.random.PRNGKey(0),
                                 tokens_to_logits=model.tokens_to_logits, options=options).compile().as_text()
    bodies = re.findall(r"while\([^\n]*body=%([\w.\-]+)", hlo)
    assert len(bodies) == 1, bodies
    body = _reachable(hlo, bodies[0])
    # One [B, 3H] projection per decoder layer inside the loop; no [H, 3H] kernel is built there.
    # (a dot is either in the body or in the fused computation of a library-call fusion: counted once)
    matmuls = re.findall(rf"= f32\[{batch},(?:1,)?{3 * hidden}\]\S* dot\(", body)
    assert len(matmuls) == layers, matmuls
    assert not re.search(rf"f32\[{hidden},{3 * hidden}\]\S* (?:concatenate|fusion)\(", body)
    # ... it is built before the loop, once per layer.
    assert len(re.findall(rf"= f32\[{hidden},{3 * hidden}\]\S* (?:concatenate|fusion)\(", hlo)) == layers


def _concatenated_kernel_shapes(jaxpr, hidden: int) -> list:
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
                    found += _concatenated_kernel_shapes(getattr(inner, "jaxpr", inner), hidden)
    return found


def test_training_loss_runs_separate_projections_and_the_forward_stays_fused(tmp_path):
    """Training (`loss_function`) joins no kernels: its params change every step, so the join and the
    split of its gradient would run every step. The same model's forward outside it still fuses."""
    tiny_encoder_decoder(seed=5).save_pretrained(str(tmp_path))
    model = EncoderDecoderModel.from_pretrained(str(tmp_path))
    hidden = model.config.encoder.hidden_size
    ids = jnp.asarray(np.random.default_rng(6).integers(3, 99, (2, 7)), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "labels": ids}
    loss_sum = model.loss_function(deterministic=False)
    grad = jax.grad(lambda p: loss_sum(p, batch, jax.random.PRNGKey(0))[0])
    assert _concatenated_kernel_shapes(jax.make_jaxpr(grad)(model.params).jaxpr, hidden) == []

    def forward(params):
        return model.module.apply({"params": model._module_params(params)}, ids, jnp.ones_like(ids), ids,
                                  jnp.ones_like(ids))[1]["logits"]

    joined = _concatenated_kernel_shapes(jax.make_jaxpr(forward)(model.params).jaxpr, hidden)
    assert (hidden, 3 * hidden) in joined and (hidden, 2 * hidden) in joined
