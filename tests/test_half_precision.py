"""bfloat16 / float16 on MiniLM real weights (warm-started bert2bert): runs, stays finite, close to float32.

Softmax, LayerNorm statistics and the loss run in float32 whatever the dtype (modules.py); the additive
mask is float32's min. The warm start is BertModel + BertLMHeadModel (as transformers builds it; its LM-head
transform is new and random). Measured on the 4 sentences below (decoder fed the sentence, logits up to
~6.0): bfloat16 max |diff| 0.080 (1.3% of max |logit|), mean 0.009, top-1 agreement 94.7% (the fresh
transform leaves top-1/top-2 margins as small as 0.003); float16 max 0.012, mean 0.0014, top-1 100%.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgen_jax import AutoTokenizer, EncoderDecoderModel

from conftest import REAL_SENTENCES

WARM_START = dict(decoder_start_token_id=101, pad_token_id=0, encoder_bos_token_id=101, encoder_eos_token_id=102,
                  decoder_bos_token_id=101, decoder_eos_token_id=102)
# (max |diff| relative to max |logit|, mean |diff|, greedy outputs identical to float32 (of 4), top-1 agreement)
TOLERANCE = {"bfloat16": (0.02, 0.02, 2, 0.9), "float16": (0.005, 0.005, 3, 0.98)}


def run(model, ids, mask):
    labels = np.where(mask > 0, ids, -100)
    out = model(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask, labels=labels,
                output_hidden_states=True)
    # no_repeat_ngram_size=1: plain greedy decoding of the untrained bert2bert repeats [CLS]
    sequences = model.generate(ids, mask, max_new_tokens=8, min_new_tokens=8, no_repeat_ngram_size=1).sequences
    return out, np.asarray(sequences)


@pytest.fixture(scope="module")
def inputs(minilm_dir):
    encoded = AutoTokenizer.from_pretrained(minilm_dir)(REAL_SENTENCES, padding=True, return_tensors="np")
    return encoded["input_ids"], encoded["attention_mask"]


@pytest.fixture(scope="module")
def reference(minilm_dir, inputs):
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, **WARM_START)
    out, sequences = run(model, *inputs)
    return np.asarray(out.logits), float(out.loss), sequences


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_half_precision_forward_and_generate(minilm_dir, inputs, reference, name):
    dtype = getattr(jnp, name)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, dtype=dtype, param_dtype=dtype,
                                                                **WARM_START)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(model.params)} == {jnp.dtype(dtype)}
    ids, mask = inputs
    out, sequences = run(model, ids, mask)
    assert out.logits.dtype == dtype and out.loss.dtype == jnp.float32
    for array in (out.logits, out.loss, *out.encoder_hidden_states, *out.decoder_hidden_states):
        assert bool(jnp.isfinite(array).all())  # float16: no overflow to inf, no NaN

    ref_logits, ref_loss, ref_sequences = reference
    valid = mask.astype(bool)
    diff = np.abs(np.asarray(out.logits.astype(jnp.float32)) - ref_logits)[valid]
    rel_max, mean, same, top1_min = TOLERANCE[name]
    assert diff.max() <= rel_max * np.abs(ref_logits).max() and diff.mean() <= mean, (diff.max(), diff.mean())
    top1 = (np.asarray(out.logits).argmax(-1) == ref_logits.argmax(-1))[valid].mean()
    assert top1 >= top1_min
    assert abs(float(out.loss) - ref_loss) < 0.05
    assert sequences.shape == ref_sequences.shape
    assert (sequences == ref_sequences).all(axis=1).sum() >= same


def test_bfloat16_compute_float32_params(minilm_dir, inputs, reference):
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, dtype=jnp.bfloat16,
                                                                **WARM_START)
    ids, mask = inputs
    logits = model(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask).logits
    assert logits.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(model.params)} == {jnp.dtype(jnp.float32)}
    diff = np.abs(np.asarray(logits.astype(jnp.float32)) - reference[0])[mask.astype(bool)]
    assert diff.max() <= 0.02 * np.abs(reference[0]).max()
