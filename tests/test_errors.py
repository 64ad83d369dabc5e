"""Bad input is a clear error naming the problem, never a silent wrong answer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bertgen_jax import BertGenerationConfig, BertGenerationDecoder, BertGenerationEncoder, EncoderDecoderModel
from converters.checkpoint_io import load_state_dict, save_state_dict

from conftest import tiny_decoder, tiny_encoder, tiny_encoder_decoder

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
             max_position_embeddings=12)


@pytest.mark.parametrize("field, value, message", [
    ("position_embedding_type", "rotary", "position_embedding_type"),
    ("hidden_act", "swishy", "hidden_act"),
    ("hidden_size", 0, "hidden_size"),
    ("num_hidden_layers", -1, "num_hidden_layers"),
    ("vocab_size", 0, "vocab_size"),
    ("num_attention_heads", 3, "not a multiple of num_attention_heads"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        BertGenerationConfig(**{**SMALL, field: value})


def test_config_json_round_trip_keeps_unknown_keys(tmp_path):
    config = BertGenerationConfig(**SMALL, custom_field=[1, 2], position_embedding_type="relative_key")
    config.save_pretrained(str(tmp_path))
    again = BertGenerationConfig.from_pretrained(str(tmp_path))
    assert again == config and again.custom_field == [1, 2]
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        BertGenerationConfig.from_pretrained(str(tmp_path))


@pytest.fixture(scope="module")
def encoder():
    return BertGenerationEncoder.from_config(BertGenerationConfig(**SMALL))


def test_token_id_out_of_range(encoder):
    with pytest.raises(ValueError, match=r"token id 50 outside \[0, 50\)"):
        encoder(np.array([[1, 2, 50]]))
    with pytest.raises(ValueError, match=r"token id -1"):
        encoder(np.array([[1, -1]]))


def test_sequence_too_long(encoder):
    with pytest.raises(ValueError, match="longer than max_position_embeddings=12"):
        encoder(np.ones((1, 13), np.int32))


def test_shape_mismatches(encoder):
    with pytest.raises(ValueError, match="attention_mask has shape"):
        encoder(np.ones((2, 5), np.int32), np.ones((2, 4), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        encoder(np.ones((5,), np.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        encoder(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="position_ids"):
        encoder(np.ones((1, 3), np.int32), position_ids=np.array([[0, 1, 12]]))


def test_label_and_decoder_input_checks(save_dir):
    tm = tiny_encoder_decoder(seed=60)
    tm.save_pretrained(save_dir())
    model = EncoderDecoderModel.from_pretrained(save_dir())
    ids = np.ones((1, 4), np.int32)
    with pytest.raises(ValueError, match="labels holds token id 99"):
        model(ids, labels=np.array([[5, 99]]))
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        model(ids)
    model.config.decoder_start_token_id = None
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model(ids, labels=np.array([[5, 6]]))


def test_missing_unexpected_and_misshapen_keys(save_dir):
    tm = tiny_decoder(seed=61)
    tm.save_pretrained(save_dir("good"))
    state = load_state_dict(save_dir("good"))
    config_path = os.path.join(save_dir("good"), "config.json")

    def write(name, tensors):
        save_state_dict(tensors, save_dir(name))
        with open(os.path.join(save_dir(name), "config.json"), "w") as handle:
            handle.write(open(config_path).read())
        return save_dir(name)

    missing = {k: v for k, v in state.items() if k != "bert.encoder.layer.1.output.dense.weight"}
    with pytest.raises(ValueError, match=r"missing .*bert\.encoder\.layer\.1\.output\.dense\.weight") as err:
        BertGenerationDecoder.from_pretrained(write("missing", missing))
    assert "missing" in str(err.value) and save_dir("missing") in str(err.value)

    extra = dict(state, **{"bert.encoder.layer.0.attention.self.rotary.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected .*rotary\.weight"):
        BertGenerationDecoder.from_pretrained(write("extra", extra))

    bad = dict(state)
    bad["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((36, 32), np.float32)
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight.*shape \(36, 32\).*expects \(37, 32\)"):
        BertGenerationDecoder.from_pretrained(write("bad", bad))

    # A partial cross-attention is an error; a checkpoint with none at all is a warm start.
    partial = {k: v for k, v in state.items() if "layer.1.crossattention.self.query" not in k}
    with pytest.raises(ValueError, match="crossattention.self.query"):
        BertGenerationDecoder.from_pretrained(write("partial", partial))


def test_corrupt_checkpoint_names_file(save_dir):
    tm = tiny_encoder(seed=62)
    tm.save_pretrained(save_dir())
    path = os.path.join(save_dir(), "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        BertGenerationEncoder.from_pretrained(save_dir())


def test_missing_model_dir_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        BertGenerationEncoder.from_pretrained(str(tmp_path / "does-not-exist"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert-generation", **SMALL}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        BertGenerationEncoder.from_pretrained(str(tmp_path))


def test_wrong_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        BertGenerationEncoder.from_pretrained(str(tmp_path))


def test_quantization_value_checked_before_loading(tmp_path):
    with pytest.raises(ValueError, match="int2"):
        BertGenerationEncoder.from_pretrained(str(tmp_path), quantization="int2")
