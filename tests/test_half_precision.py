"""bfloat16 / float16 on MiniLM real weights (warm-started bert2bert): runs, stays finite, close to float32.

Softmax, LayerNorm statistics and the loss run in float32 whatever the dtype (modules.py); the additive
mask is float32's min. Measured on the 4 sentences below (decoder fed the sentence, logits up to ~8.6):
bfloat16 max |diff| 0.048, mean 0.005; float16 max 0.008, mean 0.0007; top-1 agreement 100% for both.
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
# (max |diff| relative to max |logit|, mean |diff|, greedy outputs identical to float32, of 4)
TOLERANCE = {"bfloat16": (0.02, 0.02, 2), "float16": (0.005, 0.005, 3)}


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
    rel_max, mean, same = TOLERANCE[name]
    assert diff.max() <= rel_max * np.abs(ref_logits).max() and diff.mean() <= mean, (diff.max(), diff.mean())
    top1 = (np.asarray(out.logits).argmax(-1) == ref_logits.argmax(-1))[valid].mean()
    assert top1 >= 0.98
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
