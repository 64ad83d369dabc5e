"""Weight-only int8/int4 quantization: error bounds, tolerances against float32, generation, save/load, bytes."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from safetensors import safe_open

from bertgen_jax import AutoTokenizer, BertGenerationDecoder, BertGenerationEncoder, EncoderDecoderModel
from bertgen_jax.cli import main
from bertgen_jax.models import quantize_model
from bertgen_jax.modules import QuantDense
from bertgen_jax.quantization import (QuantizationConfig, dequantize_kernel, dequantize_tree, is_quantized_leaf,
                                      quantize_kernel, tree_nbytes)
from converters.mapping import flatten

from conftest import REAL_SENTENCES, batch, max_diff, tiny_decoder, tiny_encoder_decoder

# The BertGeneration pair (its untrained greedy outputs have decisive margins, so int8 keeps them identical);
# the BertModel + BertLMHeadModel warm start is quantized in test_bert_family.py.
WARM_START = dict(decoder_start_token_id=101, pad_token_id=0, encoder_bos_token_id=101, encoder_eos_token_id=102,
                  decoder_bos_token_id=101, decoder_eos_token_id=102, encoder_model_class=BertGenerationEncoder,
                  decoder_model_class=BertGenerationDecoder)
# Stated tolerances, relative to max |logit| of the float32 model (measured: tiny 2% / 23%, MiniLM 3% / 16%).
TINY_TOL = {"int8": 0.05, "int4": 0.4}
MINILM_TOL = {"int8": 0.06, "int4": 0.35}  # mean |diff| (measured 0.013 / 0.145) stays below 0.03 / 0.3


def per_element_scale(leaf):
    """The scale that applies to each element of the dequantized [in, out] kernel."""
    scale = np.asarray(leaf["scale"], np.float32)
    if leaf["qvalue"].dtype == np.int8:
        return np.broadcast_to(scale[None, :], leaf["qvalue"].shape)
    rows = 2 * leaf["qvalue"].shape[0]
    return np.repeat(scale, rows // scale.shape[0], axis=0)


def unpacked_values(leaf):
    q = np.asarray(leaf["qvalue"])
    if q.dtype == np.int8:
        return q.astype(np.int32)
    return np.stack([(q & 15).astype(np.int32) - 8, (q >> 4).astype(np.int32) - 8], axis=1).reshape(-1, q.shape[1])


def assert_bound(w, leaf):
    """max |w - dequant(quant(w))| <= scale / 2 per element (dequantized in float32)."""
    error = np.abs(np.asarray(w, np.float32) - np.asarray(dequantize_kernel(leaf, jnp.float32)))
    bound = per_element_scale(leaf) / 2
    assert np.all(error <= bound * (1 + 1e-6) + 1e-12), float(np.max(error - bound))


# ----------------------------------------------------------------------------- one kernel
@pytest.mark.parametrize("scale_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_round_trip_bound(mode, scale_dtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 48)).astype(np.float32) * rng.uniform(0.01, 1.0, size=(1, 48)).astype(np.float32)
    w[:, 3] = 0.0  # an all-zero output channel: scale 0, no division by zero
    w[5, 7] = 9.0  # an outlier
    leaf = quantize_kernel(w, mode, group_size=64, scale_dtype=scale_dtype)
    assert leaf["scale"].dtype == jnp.dtype(scale_dtype)
    assert_bound(w, leaf)
    values = unpacked_values(leaf)
    if mode == "int8":
        assert leaf["qvalue"].dtype == np.int8 and leaf["qvalue"].shape == (256, 48)
        assert leaf["scale"].shape == (48,) and np.abs(values).max() <= 127
    else:  # packed two per byte, grouped scales
        assert leaf["qvalue"].dtype == np.uint8 and leaf["qvalue"].shape == (128, 48)
        assert leaf["scale"].shape == (4, 48) and values.min() >= -8 and values.max() <= 7
    assert np.all(np.asarray(dequantize_kernel(leaf))[:, 3] == 0)


def test_int4_group_fallbacks():
    rng = np.random.default_rng(1)
    small = quantize_kernel(rng.standard_normal((32, 5)), "int4", group_size=128)  # one group of 32 rows
    assert small["scale"].shape == (1, 5)
    odd = rng.standard_normal((37, 6))  # odd input dim cannot pair rows: stored as int8
    leaf = quantize_kernel(odd, "int4")
    assert leaf["qvalue"].dtype == np.int8
    assert_bound(odd, leaf)
    uneven = quantize_kernel(rng.standard_normal((96, 4)), "int4", group_size=64)  # largest even divisor <= 64
    assert uneven["scale"].shape == (2, 4)


def test_config_values():
    assert QuantizationConfig.coerce("int4") == QuantizationConfig(mode="int4")
    config = QuantizationConfig("int4", group_size=32, include=["attention"], exclude=r"cross")
    assert QuantizationConfig.coerce(json.loads(json.dumps(config.to_dict()))) == config
    for bad in ("int2", dict(mode="int4", group_size=3), dict(include="(")):
        with pytest.raises(ValueError):
            QuantizationConfig.coerce(bad) if isinstance(bad, str) else QuantizationConfig(**bad)
    with pytest.raises(ValueError, match="int2"):
        EncoderDecoderModel.from_pretrained("/nonexistent", quantization="int2")


# ----------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny"))
    tiny_encoder_decoder(seed=11).save_pretrained(path)
    return path, EncoderDecoderModel.from_pretrained(path)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_tiny_kernels_forward_and_generate(tiny, mode):
    path, reference = tiny
    model = EncoderDecoderModel.from_pretrained(path, quantization=mode)
    assert model.quantization.mode == mode
    float_leaves = flatten(reference.params)
    quantized = 0
    for path_, value in flatten(model.params).items():
        if path_[-1] == "qvalue":
            leaf_path = path_[:-1]
            assert leaf_path[-1] == "kernel"  # embeddings, LayerNorm and biases stay float by default
            node = model.params
            for key in leaf_path:
                node = node[key]
            assert_bound(float_leaves[leaf_path], jax.tree_util.tree_map(np.asarray, node))
            quantized += 1
        elif path_[-1] != "scale" or path_[-2] == "LayerNorm":
            assert np.array_equal(np.asarray(value), np.asarray(float_leaves[path_]))
    assert quantized == sum(1 for p in float_leaves if p[-1] == "kernel")

    ids, mask = batch(seed=12)
    ref = np.asarray(reference(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask).logits)
    out = np.asarray(model(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask).logits)
    assert max_diff(out, ref) <= TINY_TOL[mode] * np.abs(ref).max()
    sequences = np.asarray(model.generate(ids, mask, max_new_tokens=6).sequences)
    assert sequences.shape[0] == 3 and (sequences[:, 0] == 2).all()


def test_include_exclude_and_embeddings(tiny):
    _, reference = tiny
    attention_only = quantize_model(reference, QuantizationConfig(include="attention", exclude="crossattention"))
    kinds = {"/".join(p[:-2]) for p in flatten(attention_only.params) if p[-1] == "qvalue"}
    assert kinds and all("attention" in k and "crossattention" not in k for k in kinds)
    # word/position embeddings too: the tied LM head then reads the dequantized table
    both = quantize_model(reference, QuantizationConfig("int8", quantize_embeddings=True))
    assert is_quantized_leaf(both.params["decoder"]["bert"]["embeddings"]["word_embeddings"]["embedding"])
    ids, mask = batch(seed=13)
    ref = np.asarray(reference(ids, mask, decoder_input_ids=ids).logits)
    assert max_diff(both(ids, mask, decoder_input_ids=ids).logits, ref) <= TINY_TOL["int8"] * np.abs(ref).max()
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(both, "int4")
    with pytest.raises(ValueError, match="no weight matched"):
        quantize_model(reference, QuantizationConfig(include="no-such-layer"))


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("mode,make,cls", [
    ("int8", lambda: tiny_encoder_decoder(seed=14, tie_encoder_decoder=True), EncoderDecoderModel),
    ("int4", lambda: tiny_encoder_decoder(seed=15, position_embedding_type="relative_key"), EncoderDecoderModel),
    (QuantizationConfig("int4", group_size=16, quantize_embeddings=True),
     lambda: tiny_decoder(seed=16, tie_word_embeddings=False), BertGenerationDecoder),
])
def test_save_load_reproduces_outputs(save_dir, mode, make, cls):
    make().save_pretrained(save_dir("hf"))
    model = cls.from_pretrained(save_dir("hf"), quantization=mode)
    model.save_pretrained(save_dir("q"))

    with open(os.path.join(save_dir("q"), "config.json")) as handle:
        saved = json.load(handle)["quantization_config"]
    assert saved["quant_method"] == "bertgen_jax" and saved["mode"] == model.quantization.mode
    with safe_open(os.path.join(save_dir("q"), "model.safetensors"), framework="np") as f:
        keys = set(f.keys())
        qkeys = [k for k in keys if k.endswith(".qweight")]
        assert qkeys and all(k + "_scale" in keys for k in qkeys)
        assert {str(f.get_tensor(k).dtype) for k in qkeys} <= {"int8", "uint8"}

    loaded = cls.from_pretrained(save_dir("q"))
    assert loaded.quantization == model.quantization
    for (pa, a), (pb, b) in zip(sorted(flatten(model.params).items()), sorted(flatten(loaded.params).items())):
        assert pa == pb and a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), pa
    ids, mask = batch(seed=17)
    args = dict(decoder_input_ids=ids) if cls is EncoderDecoderModel else {}
    np.testing.assert_array_equal(np.asarray(model(ids, mask, **args).logits),
                                  np.asarray(loaded(ids, mask, **args).logits))
    with pytest.raises(ValueError, match="already quantized"):
        cls.from_pretrained(save_dir("q"), quantization="int8" if model.quantization.mode == "int4" else "int4")


def test_quantized_checkpoint_is_not_a_transformers_checkpoint(tiny, save_dir, capsys):
    path, reference = tiny
    model = EncoderDecoderModel.from_pretrained(path, quantization="int8")
    model.save_pretrained(save_dir("q"))
    with pytest.raises((OSError, ValueError), match="bertgen_jax_quantized|metadata"):  # no silent random kernels
        transformers.EncoderDecoderModel.from_pretrained(save_dir("q"))
    # `bertgen convert` writes the dequantized weights, which transformers loads
    assert main(["convert", save_dir("q"), save_dir("pt"), "--to", "pytorch"]) == 0
    assert "dequantized" in capsys.readouterr().out
    back = transformers.EncoderDecoderModel.from_pretrained(save_dir("pt"))
    ids, mask = batch(seed=18)
    import torch

    with torch.no_grad():
        theirs = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      decoder_input_ids=torch.tensor(ids)).logits
    assert max_diff(theirs, model(ids, mask, decoder_input_ids=ids).logits) < 1e-4


# ----------------------------------------------------------------------------- MiniLM real weights
@pytest.fixture(scope="module")
def minilm(minilm_dir):
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, **WARM_START)
    encoded = AutoTokenizer.from_pretrained(minilm_dir)(REAL_SENTENCES, padding=True, return_tensors="np")
    return model, encoded["input_ids"], encoded["attention_mask"]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_minilm_quantized_forward_generate_and_bytes(minilm, mode):
    model, ids, mask = minilm
    quantized = quantize_model(model, mode)
    ref = np.asarray(model(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask).logits)
    out = np.asarray(quantized(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask).logits)
    diff = np.abs(out - ref)[mask.astype(bool)]
    assert diff.max() <= MINILM_TOL[mode] * np.abs(ref).max()
    assert diff.mean() <= {"int8": 0.03, "int4": 0.3}[mode]

    kw = dict(max_new_tokens=8, min_new_tokens=8)
    greedy = np.asarray(quantized.generate(ids, mask, **kw).sequences)
    assert greedy.shape == (len(REAL_SENTENCES), 9)
    if mode == "int8":  # the untrained bert2bert's greedy outputs stay identical
        np.testing.assert_array_equal(greedy, np.asarray(model.generate(ids, mask, **kw).sequences))

    # stored bytes: int8 ~1/4, int4 ~1/8 of the float32 kernels (plus the scales)
    floats = {p: v for p, v in flatten(model.params).items() if p[-1] == "kernel"}
    kernel_q = sum(v.nbytes for p, v in flatten(quantized.params).items() if len(p) > 1 and p[-2] == "kernel")
    ratio = kernel_q / sum(v.nbytes for v in floats.values())
    assert {"int8": 0.25 < ratio < 0.26, "int4": 0.125 < ratio < 0.14}[mode], ratio
    assert tree_nbytes(quantized.params) < tree_nbytes(model.params)


def test_minilm_encoder_from_pretrained_int8(minilm_dir, minilm):
    _, ids, mask = minilm
    reference = BertGenerationEncoder.from_pretrained(minilm_dir)(ids, mask).last_hidden_state
    states = BertGenerationEncoder.from_pretrained(minilm_dir, quantization="int8")(ids, mask).last_hidden_state
    a, b = np.asarray(reference)[mask.astype(bool)], np.asarray(states)[mask.astype(bool)]
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() > 0.998 and np.median(cosine) > 0.9995  # measured 0.9990 / 0.9997


def test_minilm_warm_start_with_quantization(minilm_dir, minilm):
    model, ids, mask = minilm
    warm = EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, quantization="int4",
                                                               **WARM_START)
    assert warm.quantization is not None and warm.quantization.mode == "int4"
    expected = quantize_model(model, "int4")(ids, mask, decoder_input_ids=ids).logits
    np.testing.assert_array_equal(np.asarray(warm(ids, mask, decoder_input_ids=ids).logits), np.asarray(expected))
    with pytest.raises(ValueError, match="int3"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, quantization="int3")


def test_minilm_int8_bfloat16_scales(minilm):
    model, ids, mask = minilm
    half = EncoderDecoderModel(model.config, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), model.params),
                               dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    quantized = quantize_model(half, "int8")
    scale = quantized.params["decoder"]["bert"]["encoder"]["layer_0"]["output"]["dense"]["kernel"]["scale"]
    assert scale.dtype == jnp.bfloat16
    logits = quantized(ids, mask, decoder_input_ids=ids).logits
    assert logits.dtype == jnp.bfloat16 and bool(jnp.isfinite(logits).all())


# ----------------------------------------------------------------------------- QuantDense
def test_quant_dense_matches_and_keeps_one_float_kernel_live():
    """QuantDense dequantizes at the call, tied to the input, so a decoding loop holds one float kernel
    at a time; dequantizing the params up front lets XLA hoist every kernel out of the loop."""
    import flax.linen as nn

    class Stack(nn.Module):
        dense: type

        @nn.compact
        def __call__(self, x):
            for i in range(4):
                x = jnp.tanh(self.dense(256, name=f"layer_{i}")(x))
            return x

    params = Stack(nn.Dense).init(jax.random.PRNGKey(0), jnp.ones((1, 256)))["params"]
    quantized = jax.device_put(
        {k: {"kernel": quantize_kernel(v["kernel"]), "bias": np.asarray(v["bias"])} for k, v in params.items()})

    def loop(module, prepare):
        def run(p, x):
            return jax.lax.fori_loop(0, 3, lambda i, h: module.apply({"params": prepare(p)}, h), x)
        return jax.jit(run)

    x = jnp.ones((1, 256))
    lazy = loop(Stack(QuantDense), lambda p: dequantize_tree(p, keep_kernels=True))
    eager = loop(Stack(nn.Dense), dequantize_tree)
    np.testing.assert_allclose(lazy(quantized, x), eager(quantized, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loop(Stack(QuantDense), lambda p: p)(params, x),
                               loop(Stack(nn.Dense), lambda p: p)(params, x), rtol=1e-6)
    temp = {name: fn.lower(quantized, x).compile().memory_analysis().temp_size_in_bytes
            for name, fn in (("lazy", lazy), ("eager", eager))}
    assert temp["lazy"] < temp["eager"] / 2, temp
