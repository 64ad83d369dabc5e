"""`bertgen convert` both directions, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
import transformers

from bertgen_jax import EncoderDecoderModel
from bertgen_jax.cli import main

from conftest import batch, max_diff, tiny_encoder_decoder


def test_convert_to_flax_and_back(save_dir, capsys):
    tm = tiny_encoder_decoder(seed=80, position_embedding_type="relative_key")
    tm.save_pretrained(save_dir("hf"), safe_serialization=False)
    assert main(["convert", save_dir("hf"), save_dir("flax"), "--to", "flax"]) == 0
    assert "EncoderDecoderModel" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(save_dir("flax"), "flax_model.msgpack"))
    flax_model = EncoderDecoderModel.from_pretrained(save_dir("flax"))

    assert main(["convert", save_dir("flax"), save_dir("pt"), "--to", "pytorch"]) == 0
    back, info = transformers.EncoderDecoderModel.from_pretrained(save_dir("pt"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask = batch(seed=81)
    dec, _ = batch(seed=82, length=4, pad_rows=False)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec),
                 use_cache=False).logits
        again = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     decoder_input_ids=torch.tensor(dec), use_cache=False).logits
    assert max_diff(flax_model(ids, mask, decoder_input_ids=dec).logits, ref) <= 1e-5
    assert max_diff(again, ref) == 0.0


def test_convert_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "convert", str(tmp_path / "nope"),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bertgen convert: error:" in lines[0] and "nope" in lines[0]
    result = subprocess.run([sys.executable, "-m", "bertgen_jax.cli", "convert", "--to", "onnx", "a", "b"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    np.testing.assert_equal(main([]), 2)
