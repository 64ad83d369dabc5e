"""Checkpoints in and out: transformers -> here -> transformers, with no missing/unexpected keys."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import transformers

from bertgen_jax import BertGenerationDecoder, BertGenerationEncoder, EncoderDecoderModel

from conftest import batch, max_diff, tiny_decoder, tiny_encoder, tiny_encoder_decoder

TOL = 1e-5


def _assert_clean_load(info):
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]


@pytest.mark.parametrize("position_embedding_type", ["absolute", "relative_key_query"])
def test_decoder_round_trip(position_embedding_type, save_dir):
    tm = tiny_decoder(seed=40, position_embedding_type=position_embedding_type)
    tm.save_pretrained(save_dir("hf"))
    ours = BertGenerationDecoder.from_pretrained(save_dir("hf"))
    ours.save_pretrained(save_dir("ours"))
    back, info = transformers.BertGenerationDecoder.from_pretrained(save_dir("ours"), output_loading_info=True)
    _assert_clean_load(info)
    reference = tm.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, reference[key]), key
    ids, mask = batch(seed=41)
    enc = np.random.RandomState(42).randn(3, 4, 32).astype(np.float32)
    with torch.no_grad():
        ref = back(torch.tensor(ids), attention_mask=torch.tensor(mask), encoder_hidden_states=torch.tensor(enc),
                   use_cache=False).logits
    assert max_diff(ours(ids, mask, encoder_hidden_states=enc).logits, ref) <= TOL
    saved = json.load(open(os.path.join(save_dir("ours"), "config.json")))
    assert saved["model_type"] == "bert-generation" and saved["architectures"] == ["BertGenerationDecoder"]


def test_encoder_round_trip_and_from_config(save_dir):
    tm = tiny_encoder(seed=43)
    tm.save_pretrained(save_dir("hf"))
    ours = BertGenerationEncoder.from_pretrained(save_dir("hf"))
    ours.save_pretrained(save_dir("ours"))
    back, info = transformers.BertGenerationEncoder.from_pretrained(save_dir("ours"), output_loading_info=True)
    _assert_clean_load(info)
    ids, mask = batch(seed=44)
    with torch.no_grad():
        ref = back(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    assert max_diff(ours(ids, mask).last_hidden_state, ref) <= TOL

    # A randomly initialised model (from_config) also saves into a clean transformers load.
    fresh = BertGenerationEncoder.from_config(ours.config, seed=3)
    emb = np.asarray(fresh.params["embeddings"]["word_embeddings"]["embedding"])
    assert np.all(emb[ours.config.pad_token_id] == 0) and 0.015 < emb[1:].std() < 0.025
    fresh.save_pretrained(save_dir("fresh"))
    _, info = transformers.BertGenerationEncoder.from_pretrained(save_dir("fresh"), output_loading_info=True)
    _assert_clean_load(info)


@pytest.mark.parametrize("position_embedding_type", ["absolute", "relative_key"])
def test_encoder_decoder_round_trip(position_embedding_type, save_dir):
    tm = tiny_encoder_decoder(seed=45, position_embedding_type=position_embedding_type)
    tm.save_pretrained(save_dir("hf"))
    ours = EncoderDecoderModel.from_pretrained(save_dir("hf"))
    ours.save_pretrained(save_dir("ours"))
    back, info = transformers.EncoderDecoderModel.from_pretrained(save_dir("ours"), output_loading_info=True)
    _assert_clean_load(info)
    assert back.config.decoder_start_token_id == 2 and back.config.pad_token_id == 0
    ids, mask = batch(seed=46)
    dec, _ = batch(seed=47, length=5, pad_rows=False)
    with torch.no_grad():
        ref = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec),
                   use_cache=False).logits
    assert max_diff(ours(ids, mask, decoder_input_ids=dec).logits, ref) <= TOL


def test_tied_encoder_decoder(save_dir):
    """tie_encoder_decoder: transformers' 4.x safetensors save drops every encoder.* key."""
    tm = tiny_encoder_decoder(seed=48, tie_encoder_decoder=True)
    assert tm.encoder.embeddings.word_embeddings.weight is tm.decoder.bert.embeddings.word_embeddings.weight
    tm.save_pretrained(save_dir("hf"))
    from converters.checkpoint_io import load_state_dict

    saved_keys = load_state_dict(save_dir("hf")).keys()
    ours = EncoderDecoderModel.from_pretrained(save_dir("hf"))
    assert "encoder" not in ours.params  # one shared copy, as in transformers
    ids, mask = batch(seed=49)
    dec, _ = batch(seed=50, length=5, pad_rows=False)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec),
                 use_cache=False).logits
    assert max_diff(ours(ids, mask, decoder_input_ids=dec).logits, ref) <= TOL
    assert not any(k.startswith("encoder.") for k in saved_keys)  # 4.56.2 de-duplicates the shared tensors

    # A 2020-style file with every key (encoder.* duplicated) loads to the same model.
    from converters.checkpoint_io import save_state_dict

    state = {k: v.numpy() for k, v in tm.state_dict().items()}
    assert any(k.startswith("encoder.") for k in state)
    save_state_dict(state, save_dir("full"))
    ours.config.save_pretrained(save_dir("full"))
    full = EncoderDecoderModel.from_pretrained(save_dir("full"))
    assert max_diff(full(ids, mask, decoder_input_ids=dec).logits, ref) <= TOL

    ours.save_pretrained(save_dir("ours"))
    back, info = transformers.EncoderDecoderModel.from_pretrained(save_dir("ours"), output_loading_info=True)
    _assert_clean_load(info)
    assert back.config.tie_encoder_decoder
    with torch.no_grad():
        ref2 = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec), use_cache=False).logits
    assert max_diff(ref2, ref) <= TOL


@pytest.mark.parametrize("layout", ["sharded", "bin"])
def test_sharded_and_bin_checkpoints(layout, save_dir):
    tm = tiny_encoder_decoder(seed=51)
    if layout == "sharded":
        tm.save_pretrained(save_dir("hf"), max_shard_size="30KB")
        assert os.path.exists(os.path.join(save_dir("hf"), "model.safetensors.index.json"))
    else:
        tm.save_pretrained(save_dir("hf"), safe_serialization=False)
        assert os.path.exists(os.path.join(save_dir("hf"), "pytorch_model.bin"))
    ours = EncoderDecoderModel.from_pretrained(save_dir("hf"))
    ids, mask = batch(seed=52)
    dec, _ = batch(seed=53, length=4, pad_rows=False)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec)).logits
    assert max_diff(ours(ids, mask, decoder_input_ids=dec).logits, ref) <= TOL
    ours.save_pretrained(save_dir("ours"), max_shard_size="30KB")
    _, info = transformers.EncoderDecoderModel.from_pretrained(save_dir("ours"), output_loading_info=True)
    _assert_clean_load(info)


def test_plain_bert_layouts_warm_start(save_dir):
    """BertModel / BertForMaskedLM / RobertaModel checkpoints load as transformers loads them into
    BertGeneration: pooler, token types and MLM heads dropped with a reason; cross-attention and the
    LM-head bias created."""
    bert_config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=37, max_position_embeddings=40)
    from conftest import randomize_

    for cls in (transformers.BertModel, transformers.BertForMaskedLM):
        tm = randomize_(cls(bert_config), seed=54)
        path = save_dir(cls.__name__)
        tm.save_pretrained(path)
        ours = BertGenerationEncoder.from_pretrained(path)
        ref_model = transformers.BertGenerationEncoder.from_pretrained(path)
        ids, mask = batch(seed=55)
        with torch.no_grad():
            ref = ref_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        assert max_diff(ours(ids, mask).last_hidden_state, ref) <= TOL
        reasons = " ".join(r for _, r in ours.conversion_report.dropped)
        assert "token_type" in reasons
        dec = BertGenerationDecoder.from_pretrained(path, is_decoder=True, add_cross_attention=True)
        assert any("crossattention" in p for p in dec.conversion_report.initialized)
        assert np.all(np.asarray(dec.params["lm_head"]["bias"]) == 0)

    roberta = randomize_(transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=42)), seed=56)
    roberta.save_pretrained(save_dir("roberta"))
    ours = BertGenerationEncoder.from_pretrained(save_dir("roberta"))
    ref_model = transformers.BertGenerationEncoder.from_pretrained(save_dir("roberta"))
    ids, mask = batch(seed=57)
    with torch.no_grad():
        ref = ref_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    assert max_diff(ours(ids, mask).last_hidden_state, ref) <= TOL


def test_untied_head_uses_the_decoder_bias_as_transformers_forward(save_dir):
    # transformers 5 saves an untied head's lm_head.bias and lm_head.decoder.bias as two tensors; only
    # lm_head.decoder.bias takes part in the forward. Edit a 4.56.2 checkpoint so the two differ.
    from safetensors.numpy import load_file, save_file

    tm = tiny_decoder(seed=44, tie_word_embeddings=False)
    tm.save_pretrained(save_dir("hf"))
    path = os.path.join(save_dir("hf"), "model.safetensors")
    tensors = load_file(path)
    rng = np.random.RandomState(45)
    tensors["lm_head.decoder.bias"] = rng.randn(99).astype(np.float32)
    tensors["lm_head.bias"] = rng.randn(99).astype(np.float32)
    save_file(tensors, path, metadata={"format": "pt"})

    reference = transformers.BertGenerationDecoder.from_pretrained(save_dir("hf")).eval()
    assert np.array_equal(reference.lm_head.decoder.bias.detach().numpy(), tensors["lm_head.decoder.bias"])
    ours = BertGenerationDecoder.from_pretrained(save_dir("hf"))
    ids, mask = batch(seed=46)
    enc = np.random.RandomState(47).randn(3, 4, 32).astype(np.float32)
    with torch.no_grad():
        ref = reference(torch.tensor(ids), attention_mask=torch.tensor(mask),
                        encoder_hidden_states=torch.tensor(enc), use_cache=False).logits
    assert max_diff(ours(ids, mask, encoder_hidden_states=enc).logits, ref) <= TOL
    assert "lm_head.bias" in [key for key, _ in ours.conversion_report.dropped]
    reason = dict(ours.conversion_report.dropped)["lm_head.bias"]
    assert "lm_head.decoder.bias" in reason and "forward" in reason
