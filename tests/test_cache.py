"""Cached step-by-step decoding equals the full forward pass, for every position type."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertgen_jax import BertGenerationDecoder, EncoderDecoderModel

from conftest import batch, max_diff, tiny_decoder, tiny_encoder_decoder

POSITION_TYPES = ["absolute", "relative_key", "relative_key_query"]


@pytest.mark.parametrize("position_embedding_type", POSITION_TYPES)
def test_decoder_steps_equal_full_pass(position_embedding_type, save_dir):
    tm = tiny_decoder(seed=30, position_embedding_type=position_embedding_type)
    tm.save_pretrained(save_dir())
    model = BertGenerationDecoder.from_pretrained(save_dir())
    ids, mask = batch(seed=31, batch_size=2, length=8)
    enc = np.random.RandomState(32).randn(2, 5, 32).astype(np.float32)
    enc_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    full = np.asarray(model(ids, mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask).logits)

    cache = model.init_cache(2, 12, enc, enc_mask, attention_mask=mask)
    steps = []
    for t in range(ids.shape[1]):
        out = model(ids[:, t:t + 1], cache=cache)
        cache = out.cache
        steps.append(np.asarray(out.logits))
    steps = np.concatenate(steps, axis=1)
    valid = mask.astype(bool)
    assert np.abs(steps - full)[valid].max() <= 1e-5
    assert int(cache["index"]) == ids.shape[1]

    # A multi-token prefill followed by steps is correct too (transformers 4.56.2 is not, for
    # relative types: it gives every prefill row position K-1).
    cache = model.init_cache(2, 12, enc, enc_mask, attention_mask=mask)
    prefill = model(ids[:, :5], cache=cache)
    rest = model(ids[:, 5:], cache=prefill.cache)
    stitched = np.concatenate([np.asarray(prefill.logits), np.asarray(rest.logits)], axis=1)
    assert np.abs(stitched - full)[valid].max() <= 1e-5

    # Single-token steps match transformers' own cached decoding, which is correct for Tq=1.
    with torch.no_grad():
        past = None
        ref = []
        for t in range(ids.shape[1]):
            o = tm(torch.tensor(ids[:1, t:t + 1]), encoder_hidden_states=torch.tensor(enc[:1]),
                   encoder_attention_mask=torch.tensor(enc_mask[:1]), past_key_values=past, use_cache=True)
            past = o.past_key_values
            ref.append(o.logits.numpy())
    assert max_diff(steps[:1], np.concatenate(ref, axis=1)) <= 1e-5


@pytest.mark.parametrize("position_embedding_type", POSITION_TYPES)
def test_encoder_decoder_cached_decode(position_embedding_type, save_dir):
    tm = tiny_encoder_decoder(seed=33, position_embedding_type=position_embedding_type)
    tm.save_pretrained(save_dir())
    model = EncoderDecoderModel.from_pretrained(save_dir())
    ids, mask = batch(seed=34, batch_size=2)
    dec_ids, _ = batch(seed=35, batch_size=2, length=6, pad_rows=False)
    full = np.asarray(model(ids, mask, decoder_input_ids=dec_ids).logits)
    encoded = model.encode(ids, mask)
    cache = model.init_cache(2, 8, encoded.last_hidden_state, mask)
    steps = []
    for t in range(dec_ids.shape[1]):
        out = model.decode(dec_ids[:, t:t + 1], cache)
        cache = out.cache
        steps.append(np.asarray(out.logits))
    assert max_diff(np.concatenate(steps, axis=1), full) <= 1e-5


def test_cache_overflow_is_an_error(save_dir):
    tm = tiny_decoder(seed=36)
    tm.save_pretrained(save_dir())
    model = BertGenerationDecoder.from_pretrained(save_dir())
    enc = np.zeros((1, 3, 32), np.float32)
    cache = model.init_cache(1, 4, enc)
    with pytest.raises(ValueError, match="overflows"):
        model(np.ones((1, 5), np.int32), cache=cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.init_cache(1, 41, enc)
