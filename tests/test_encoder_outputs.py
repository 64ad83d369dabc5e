"""generate(encoder_outputs=...): decoding from one encoder pass, as transformers' generate does."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from bertgen_jax import EncoderDecoderModel
from bertgen_jax.bert_family import EncoderDecoderModule

from conftest import batch, randomize_, tiny_encoder_decoder
from test_generate import _boost

EOS = 1


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tm = tiny_encoder_decoder(seed=200)
    randomize_(tm, seed=201, scale=0.4)
    _boost(tm, [EOS, 5], 1.5)
    path = str(tmp_path_factory.mktemp("encout"))
    tm.save_pretrained(path)
    return tm, path


@pytest.fixture(scope="module")
def model(models):
    return EncoderDecoderModel.from_pretrained(models[1])  # shared: its compiled programs are reused


def _inputs():
    return batch(seed=7, batch_size=3, length=9)  # rows 1 and 2 padded


@pytest.mark.parametrize("options", [dict(max_new_tokens=8),
                                     dict(max_new_tokens=8, num_beams=3, length_penalty=0.6),
                                     dict(max_new_tokens=8, no_repeat_ngram_size=2, min_new_tokens=3),
                                     dict(max_new_tokens=8, do_sample=True, top_k=5, seed=3)])
def test_encoder_outputs_token_identical_to_input_ids(model, options):
    ids, mask = _inputs()
    expected = model.generate(ids, mask, **options)
    encoded = model.encode(ids, mask)
    got = model.generate(encoder_outputs=encoded, attention_mask=mask, **options)
    np.testing.assert_array_equal(np.asarray(got.sequences), np.asarray(expected.sequences))
    if expected.sequences_scores is not None:
        np.testing.assert_allclose(np.asarray(got.sequences_scores), np.asarray(expected.sequences_scores),
                                   atol=1e-5)


def test_encoder_outputs_match_transformers(models, model):
    torch_model = models[0]
    ids, mask = _inputs()
    with torch.no_grad():
        enc = torch_model.get_encoder()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        reference = torch_model.generate(encoder_outputs=enc, attention_mask=torch.tensor(mask), max_new_tokens=8,
                                         do_sample=False, num_beams=1)
    got = model.generate(encoder_outputs=model.encode(ids, mask), attention_mask=mask, max_new_tokens=8)
    reference = reference.numpy()
    ours = np.asarray(got.sequences)[:, :reference.shape[1]]
    for ref_row, our_row in zip(reference, ours):  # identical up to each row's EOS; we pad after it
        end = next((i + 1 for i in range(1, len(ref_row)) if ref_row[i] == EOS), len(ref_row))
        np.testing.assert_array_equal(our_row[:end], ref_row[:end])


def test_encoder_runs_once_for_many_decodes(models, monkeypatch):
    """Count encoder traces: every generate from encoder_outputs reuses the one encoder pass."""
    _, path = models
    model = EncoderDecoderModel.from_pretrained(path)
    calls = []
    original = EncoderDecoderModule.encode

    def counting_encode(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EncoderDecoderModule, "encode", counting_encode)
    ids, mask = _inputs()
    encoded = model.encode(ids, mask)
    assert len(calls) == 1
    samples = [model.generate(encoder_outputs=encoded, attention_mask=mask, max_new_tokens=6, do_sample=True,
                              prng_key=jax.random.PRNGKey(i)).sequences for i in range(3)]
    model.generate(encoder_outputs=encoded, attention_mask=mask, max_new_tokens=6, num_beams=2)
    assert len(calls) == 1, "generate(encoder_outputs=...) ran the encoder again"
    assert not all(np.array_equal(np.asarray(samples[0]), np.asarray(s)) for s in samples[1:])
    model.generate(ids, mask, max_new_tokens=6)  # the input_ids path does run it: the counter can see it
    assert len(calls) == 2


def test_encoder_outputs_errors(model):
    ids, mask = _inputs()
    encoded = model.encode(ids, mask)
    with pytest.raises(ValueError, match="not both"):
        model.generate(ids, mask, encoder_outputs=encoded, max_new_tokens=4)
    with pytest.raises(ValueError, match="input_ids or encoder_outputs"):
        model.generate(max_new_tokens=4)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.generate(encoder_outputs=encoded, attention_mask=mask[:, :4], max_new_tokens=4)
    with pytest.raises(ValueError, match="hidden size"):
        model.generate(encoder_outputs=np.zeros((3, 9, 7), np.float32), max_new_tokens=4)
    # a dict / tuple as transformers users hold them works too
    by_dict = model.generate(encoder_outputs={"last_hidden_state": encoded.last_hidden_state}, attention_mask=mask,
                             max_new_tokens=4)
    by_tuple = model.generate(encoder_outputs=(encoded.last_hidden_state,), attention_mask=mask, max_new_tokens=4)
    np.testing.assert_array_equal(np.asarray(by_dict.sequences), np.asarray(by_tuple.sequences))
