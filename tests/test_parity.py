"""Float32 forward parity against transformers 4.56.2 (PyTorch) on tiny, widely randomised models.

Every model is built and saved by transformers, loaded here through `from_pretrained`, and compared
with max |diff| <= 1e-5. Relative position types are compared against transformers' use_cache=False
path: with a cache object present 4.56.2 gives every query row the position K-1 (README, "Differences").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertgen_jax import BertGenerationDecoder, BertGenerationEncoder, EncoderDecoderModel
from bertgen_jax.activations import SUPPORTED_ACTIVATIONS

from conftest import batch, max_diff, tiny_decoder, tiny_encoder, tiny_encoder_decoder

TOL = 1e-5
POSITION_TYPES = ["absolute", "relative_key", "relative_key_query"]


def _load(cls, torch_model, save_dir, name="m"):
    path = save_dir(name)
    torch_model.save_pretrained(path)
    return cls.from_pretrained(path)


@pytest.mark.parametrize("position_embedding_type", POSITION_TYPES)
def test_encoder_parity_with_outputs(position_embedding_type, save_dir):
    tm = tiny_encoder(seed=1, position_embedding_type=position_embedding_type)
    fm = _load(BertGenerationEncoder, tm, save_dir)
    ids, mask = batch(seed=2)
    with torch.no_grad():
        ref = tm(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True,
                 output_attentions=True)
    out = fm(ids, mask, output_hidden_states=True, output_attentions=True)
    assert np.abs(np.asarray(out.last_hidden_state)).mean() > 0.1  # O(1) activations: the tolerance means something
    assert max_diff(out.last_hidden_state, ref.last_hidden_state) <= TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert max_diff(ours, theirs) <= TOL
    assert len(out.attentions) == len(ref.attentions) == 2
    for ours, theirs in zip(out.attentions, ref.attentions):
        assert max_diff(ours, theirs) <= TOL


@pytest.mark.parametrize("activation", SUPPORTED_ACTIVATIONS)
def test_every_activation(activation, save_dir):
    tm = tiny_encoder(seed=3, hidden_act=activation)
    fm = _load(BertGenerationEncoder, tm, save_dir)
    ids, mask = batch(seed=4)
    with torch.no_grad():
        ref = tm(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    assert max_diff(fm(ids, mask).last_hidden_state, ref) <= TOL


@pytest.mark.parametrize("position_embedding_type", POSITION_TYPES)
@pytest.mark.parametrize("activation", ["gelu", "relu", "gelu_new"])
def test_decoder_parity_and_loss(position_embedding_type, activation, save_dir):
    tm = tiny_decoder(seed=5, position_embedding_type=position_embedding_type, hidden_act=activation)
    fm = _load(BertGenerationDecoder, tm, save_dir)
    ids, mask = batch(seed=6)
    labels = ids.copy()
    labels[mask == 0] = -100
    rng = np.random.RandomState(7)
    enc = rng.randn(3, 6, 32).astype(np.float32)
    enc_mask = np.ones((3, 6), np.int64)
    enc_mask[2, 4:] = 0
    with torch.no_grad():
        ref = tm(torch.tensor(ids), attention_mask=torch.tensor(mask), encoder_hidden_states=torch.tensor(enc),
                 encoder_attention_mask=torch.tensor(enc_mask), labels=torch.tensor(labels), use_cache=False,
                 output_hidden_states=True, output_attentions=True)
    out = fm(ids, mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, labels=labels,
             output_hidden_states=True, output_attentions=True)
    assert float(np.asarray(out.logits).std()) > 0.5  # O(1) logits
    assert max_diff(out.logits, ref.logits) <= TOL
    assert abs(float(out.loss) - float(ref.loss)) <= TOL
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert max_diff(ours, theirs) <= TOL
    for ours, theirs in zip(out.attentions, ref.attentions):
        assert max_diff(ours, theirs) <= TOL
    assert len(out.cross_attentions) == len(ref.cross_attentions) == 2
    for ours, theirs in zip(out.cross_attentions, ref.cross_attentions):
        assert max_diff(ours, theirs) <= TOL


def test_decoder_without_cross_attention_and_head_mask(save_dir):
    import transformers

    from conftest import randomize_, tiny_config

    tm = randomize_(transformers.BertGenerationDecoder(tiny_config(is_decoder=True)), seed=8)
    fm = _load(BertGenerationDecoder, tm, save_dir)
    ids, mask = batch(seed=9)
    head_mask = np.array([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]], np.float32)
    with torch.no_grad():
        ref = tm(torch.tensor(ids), attention_mask=torch.tensor(mask), head_mask=torch.tensor(head_mask),
                 use_cache=False).logits
    assert max_diff(fm(ids, mask, head_mask=head_mask).logits, ref) <= TOL
    with torch.no_grad():
        ref = tm(torch.tensor(ids), head_mask=torch.tensor(head_mask[0]), use_cache=False).logits
    assert max_diff(fm(ids, head_mask=head_mask[0]).logits, ref) <= TOL


@pytest.mark.parametrize("position_embedding_type", POSITION_TYPES)
def test_encoder_decoder_parity_and_loss(position_embedding_type, save_dir):
    tm = tiny_encoder_decoder(seed=10, position_embedding_type=position_embedding_type)
    fm = _load(EncoderDecoderModel, tm, save_dir)
    ids, mask = batch(seed=11)
    labels, label_mask = batch(seed=12, length=7)
    labels[label_mask == 0] = -100
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
                 use_cache=False, output_hidden_states=True, output_attentions=True)
    out = fm(ids, mask, labels=labels, output_hidden_states=True, output_attentions=True)
    assert max_diff(out.logits, ref.logits) <= TOL
    assert abs(float(out.loss) - float(ref.loss)) <= TOL
    assert max_diff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= TOL
    for name in ("encoder_hidden_states", "decoder_hidden_states", "encoder_attentions", "decoder_attentions",
                 "cross_attentions"):
        ours, theirs = getattr(out, name), getattr(ref, name)
        assert len(ours) == len(theirs), name
        for a, b in zip(ours, theirs):
            assert max_diff(a, b) <= TOL, name

    # Explicit decoder_input_ids and mask, as the docs' bert2bert example passes them.
    dec_ids, dec_mask = batch(seed=13, length=5)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 decoder_input_ids=torch.tensor(dec_ids), decoder_attention_mask=torch.tensor(dec_mask),
                 labels=torch.tensor(dec_ids), use_cache=False)
    out = fm(ids, mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask, labels=dec_ids)
    assert max_diff(out.logits, ref.logits) <= TOL
    assert abs(float(out.loss) - float(ref.loss)) <= TOL


def test_absolute_encoder_decoder_matches_default_cache_path(save_dir):
    """For absolute positions transformers' default (use_cache=True) forward is correct: match it too."""
    tm = tiny_encoder_decoder(seed=14)
    fm = _load(EncoderDecoderModel, tm, save_dir)
    ids, mask = batch(seed=15)
    labels, _ = batch(seed=16, length=6, pad_rows=False)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    out = fm(ids, mask, labels=labels)
    assert max_diff(out.logits, ref.logits) <= TOL
    assert abs(float(out.loss) - float(ref.loss)) <= TOL


def test_enc_to_dec_projection(save_dir):
    """Different encoder/decoder widths: transformers adds enc_to_dec_proj; so do we."""
    tm = tiny_encoder_decoder(seed=17, encoder_overrides={"hidden_size": 48, "num_attention_heads": 6})
    assert hasattr(tm, "enc_to_dec_proj")
    fm = _load(EncoderDecoderModel, tm, save_dir)
    assert "enc_to_dec_proj" in fm.params
    ids, mask = batch(seed=18)
    dec_ids, _ = batch(seed=19, length=5, pad_rows=False)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 decoder_input_ids=torch.tensor(dec_ids)).logits
    assert max_diff(fm(ids, mask, decoder_input_ids=dec_ids).logits, ref) <= TOL


def test_dropout_only_when_not_deterministic(save_dir):
    import jax

    tm = tiny_encoder(seed=20, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    fm = _load(BertGenerationEncoder, tm, save_dir)
    ids, mask = batch(seed=21)
    a = np.asarray(fm(ids, mask).last_hidden_state)
    b = np.asarray(fm(ids, mask).last_hidden_state)
    np.testing.assert_array_equal(a, b)
    key = jax.random.PRNGKey(0)
    c = np.asarray(fm(ids, mask, deterministic=False, dropout_rng=key).last_hidden_state)
    d = np.asarray(fm(ids, mask, deterministic=False, dropout_rng=key).last_hidden_state)
    e = np.asarray(fm(ids, mask, deterministic=False, dropout_rng=jax.random.PRNGKey(1)).last_hidden_state)
    np.testing.assert_array_equal(c, d)
    assert np.abs(c - a).max() > 1e-2 and np.abs(c - e).max() > 1e-2
    with pytest.raises(ValueError, match="dropout_rng"):
        fm(ids, mask, deterministic=False)
