"""Model-level generate: token-identical to transformers 4.56.2 `generate` on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from bertgen_jax import BertGenerationDecoder, EncoderDecoderModel, generation

from conftest import batch, randomize_, tiny_config, tiny_encoder_decoder

POSITION_TYPES = ["absolute", "relative_key", "relative_key_query"]
EOS = 1


def _boost(torch_model, token_ids, amount):
    """Raise some logits so EOS shows up at varied steps (rows finish at different times)."""
    head = torch_model.decoder.lm_head if hasattr(torch_model, "decoder") else torch_model.lm_head
    with torch.no_grad():
        for token in token_ids:
            head.bias[token] += amount
    return torch_model


_MODELS: dict = {}


def make_pair(position_embedding_type, tmp_path_factory):
    if position_embedding_type not in _MODELS:
        tm = tiny_encoder_decoder(seed=100, position_embedding_type=position_embedding_type)
        randomize_(tm, seed=101, scale=0.4)  # wide weights: no near-ties between the top candidates
        _boost(tm, [EOS, 5], 1.5)
        path = str(tmp_path_factory.mktemp("gen"))
        tm.save_pretrained(path)
        _MODELS[position_embedding_type] = (tm, EncoderDecoderModel.from_pretrained(path))
    return _MODELS[position_embedding_type]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair("absolute", tmp_path_factory)


def assert_same_until_eos(reference, ours, eos_ids=(EOS,), pad=0, start=1):
    """Token-identical up to and including each row's first EOS; after it we pad with pad_token_id
    (transformers' beam search pads with EOS when pad id is 0)."""
    reference, ours = np.asarray(reference), np.asarray(ours)
    assert reference.shape[0] == ours.shape[0]
    for ref_row, our_row in zip(reference, ours):
        hits = [i for i in range(start, len(ref_row)) if ref_row[i] in eos_ids]
        end = hits[0] + 1 if hits else len(ref_row)
        assert end <= len(our_row), (ref_row, our_row)
        np.testing.assert_array_equal(our_row[:end], ref_row[:end])
        assert np.all(our_row[end:] == pad)
        if not hits:
            assert len(our_row) == len(ref_row)


def _reference(tm, ids, mask, **kwargs):
    with torch.no_grad():
        return tm.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), return_dict_in_generate=True,
                           output_scores=True, **kwargs)


CASES = [
    dict(),
    dict(max_new_tokens=12),
    dict(max_length=14, min_new_tokens=6),
    dict(max_new_tokens=12, no_repeat_ngram_size=2),
    dict(max_new_tokens=12, repetition_penalty=1.5),
    dict(max_new_tokens=10, eos_token_id=[EOS, 7, 11]),
    dict(max_new_tokens=10, num_beams=3),
    dict(max_new_tokens=10, num_beams=4, length_penalty=0.6, num_return_sequences=2),
    dict(max_new_tokens=10, num_beams=3, length_penalty=2.0, early_stopping=True),
    dict(max_new_tokens=10, num_beams=3, length_penalty=1.0, early_stopping="never", num_return_sequences=3),
    dict(max_new_tokens=9, num_beams=2, no_repeat_ngram_size=2, repetition_penalty=1.3, min_length=5),
]


# Every option on absolute positions; the relative types (whose scores depend on the cache
# positions) with greedy, beam and the n-gram/penalty processors.
MATRIX = [("absolute", case) for case in CASES] + [
    (pet, CASES[i]) for pet in ("relative_key", "relative_key_query") for i in (0, 3, 7, 10)]


@pytest.mark.parametrize("position_embedding_type, kwargs", MATRIX,
                         ids=[f"{p}-" + (",".join(f"{k}={v}" for k, v in kw.items()) or "defaults") for p, kw in MATRIX])
def test_encoder_decoder_generate_matches_transformers(position_embedding_type, kwargs, tmp_path_factory):
    tm, model = make_pair(position_embedding_type, tmp_path_factory)
    ids, mask = batch(seed=102, batch_size=3, length=9)
    ref = _reference(tm, ids, mask, **kwargs)
    out = model.generate(ids, mask, **kwargs)
    eos = tuple(kwargs.get("eos_token_id", [EOS]))
    assert_same_until_eos(ref.sequences, out.sequences, eos)
    assert out.sequences.dtype == np.int32
    if kwargs.get("num_beams", 1) > 1:
        np.testing.assert_allclose(np.asarray(out.sequences_scores), ref.sequences_scores.numpy(), atol=1e-5)


def test_rows_finish_at_different_times(pair):
    """The test data really exercises EOS: rows stop at different lengths."""
    tm, model = pair
    ids, mask = batch(seed=102, batch_size=3, length=9)
    seq = np.asarray(model.generate(ids, mask, max_new_tokens=12).sequences)
    lengths = {int(np.argmax(row[1:] == EOS)) for row in seq if (row[1:] == EOS).any()}
    assert len(lengths) >= 2 or not all((row[1:] == EOS).any() for row in seq)


def test_decoder_only_generate_with_left_padding(tmp_path):
    config = tiny_config(is_decoder=True)
    tm = randomize_(transformers.BertGenerationDecoder(config), seed=103, scale=0.4)
    _boost(tm, [EOS], 1.0)
    tm.save_pretrained(tmp_path)
    model = BertGenerationDecoder.from_pretrained(str(tmp_path))
    rng = np.random.RandomState(104)
    ids = rng.randint(3, 99, size=(3, 6))
    mask = np.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0  # left padding: transformers' generate uses cumsum positions
    for kwargs in (dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=3)):
        ref = _reference(tm, ids, mask, **kwargs)
        out = model.generate(ids, mask, **kwargs)
        assert_same_until_eos(ref.sequences, out.sequences, start=ids.shape[1])


def test_no_recompile_within_a_bucket(pair):
    _, model = pair
    ids, mask = batch(seed=105, batch_size=2, length=9)
    model.generate(ids, mask, max_new_tokens=6)
    before = generation.compile_count()
    model.generate(ids, mask, max_new_tokens=6)  # same call again
    shorter, short_mask = batch(seed=106, batch_size=2, length=5)
    model.generate(shorter, short_mask, max_new_tokens=6)  # other length, same bucket (16)
    model.generate(shorter[:1], short_mask[:1], max_new_tokens=6)  # batch 1 -> its own bucket
    assert generation.compile_count() - before == 1


def test_sampling_is_reproducible_and_top_k_1_is_greedy(pair):
    import jax

    _, model = pair
    ids, mask = batch(seed=107, batch_size=2, length=8)
    key = jax.random.PRNGKey(3)
    a = np.asarray(model.generate(ids, mask, max_new_tokens=8, do_sample=True, prng_key=key, top_k=0).sequences)
    b = np.asarray(model.generate(ids, mask, max_new_tokens=8, do_sample=True, prng_key=key, top_k=0).sequences)
    np.testing.assert_array_equal(a, b)
    greedy = np.asarray(model.generate(ids, mask, max_new_tokens=8).sequences)
    top1 = np.asarray(model.generate(ids, mask, max_new_tokens=8, do_sample=True, top_k=1,
                                     prng_key=jax.random.PRNGKey(9)).sequences)
    np.testing.assert_array_equal(top1, greedy)


def test_sampling_checks_options_before_the_key_and_draws_a_fresh_key_without_one(pair):
    import jax

    _, model = pair
    ids, mask = batch(seed=109, batch_size=2, length=8)
    # No key given: every option is still checked and named.
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, mask, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(ids, mask, do_sample=True, top_k=-3)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, mask, do_sample=True, top_p=1.5)
    # Without a key sampling works, on a fresh key per call: 16 wide draws are not all the same.
    draws = {np.asarray(model.generate(ids, mask, max_new_tokens=8, do_sample=True, top_k=0,
                                       temperature=5.0).sequences).tobytes() for _ in range(4)}
    assert len(draws) > 1
    # seed= is PRNGKey(seed).
    kwargs = dict(max_new_tokens=8, do_sample=True, top_k=0, temperature=2.0)
    by_seed = np.asarray(model.generate(ids, mask, seed=11, **kwargs).sequences)
    np.testing.assert_array_equal(by_seed, np.asarray(model.generate(ids, mask, seed=11, **kwargs).sequences))
    np.testing.assert_array_equal(
        by_seed, np.asarray(model.generate(ids, mask, prng_key=jax.random.PRNGKey(11), **kwargs).sequences))
    with pytest.raises(ValueError, match="not both"):
        model.generate(ids, mask, seed=1, prng_key=jax.random.PRNGKey(1), **kwargs)
    with pytest.raises(ValueError, match="seed"):
        model.generate(ids, mask, seed=-1, **kwargs)


def test_generate_option_errors(pair):
    _, model = pair
    ids, mask = batch(seed=108, batch_size=1, length=5)
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(ids, mask, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(ids, mask, max_length=100)
    with pytest.raises(ValueError, match="token id 500"):
        model.generate(np.array([[5, 500]]))
