"""The whole bert2bert family: EncoderDecoderModel checkpoints whose parts are BertModel + BertLMHeadModel,
RobertaModel + RobertaForCausalLM or mixed with BertGeneration, saved by transformers 4.56.2.

Forward parity (<= 1e-5, every weight randomised), generation token-identical to transformers' generate,
round trips back to transformers with no missing/unexpected keys, and the MiniLM warm start built as
transformers' from_encoder_decoder_pretrained builds it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from bertgen_jax import BertLMHeadModel, BertModel, EncoderDecoderModel, RobertaForCausalLM, RobertaModel
from converters.checkpoint_io import load_state_dict
from converters.mapping import torch_key

from conftest import batch, max_diff, randomize_
from test_generate import assert_same_until_eos

TOL = 1e-5
SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=40)
# (config class, AutoModel class, AutoModelForCausalLM class, special ids); RoBERTa keeps its own pad 1, bos 0, eos 2.
FAMILY = {
    "bert": (transformers.BertConfig, transformers.BertModel, transformers.BertLMHeadModel,
             dict(pad_token_id=0, bos_token_id=2, eos_token_id=1)),
    "roberta": (transformers.RobertaConfig, transformers.RobertaModel, transformers.RobertaForCausalLM, {}),
    "bertgen": (transformers.BertGenerationConfig, transformers.BertGenerationEncoder,
                transformers.BertGenerationDecoder, {}),
}
PAIRS = ["bert", "roberta", "bert-bertgen", "roberta-bert"]


def torch_pair(kind: str, seed: int = 0, scale: float = 0.2, **overrides):
    """transformers' EncoderDecoderModel with the encoder/decoder classes `kind` names (encoder-decoder)."""
    enc_kind, dec_kind = kind.split("-") if "-" in kind else (kind, kind)
    config_cls, encoder_cls, _, ids = FAMILY[enc_kind]
    encoder = encoder_cls(config_cls(**SIZES, **ids, **overrides))
    config_cls, _, decoder_cls, ids = FAMILY[dec_kind]
    decoder = decoder_cls(config_cls(**SIZES, **ids, **overrides, is_decoder=True, add_cross_attention=True))
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    # As transformers' docs: the special ids are set on the config afterwards.
    model.config.decoder_start_token_id = decoder.config.bos_token_id
    model.config.pad_token_id = decoder.config.pad_token_id
    return randomize_(model, seed, scale)


def padded_batch(seed, pad_id, *, left=False, length=9):
    ids, mask = batch(seed=seed, length=length)
    ids[mask == 0] = pad_id
    if left:  # the padding at the front of each row instead
        ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()
    return ids, mask


def _saved(tm, save_dir, name="hf"):
    path = save_dir(name)
    tm.save_pretrained(path)
    return path


def _eager(path):
    """The reference: eager attention (sdpa un-masks fully masked rows, eager gives them uniform weights)."""
    return transformers.EncoderDecoderModel.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("kind, position_embedding_type",
                         [(k, "absolute") for k in PAIRS] + [("roberta", "relative_key_query")])
def test_forward_parity(kind, position_embedding_type, save_dir):
    tm = torch_pair(kind, seed=1, position_embedding_type=position_embedding_type)
    path = _saved(tm, save_dir)
    ref_model, ours = _eager(path), EncoderDecoderModel.from_pretrained(path)
    pad = tm.config.pad_token_id
    for left in (False, True):  # RoBERTa's positions depend on where the padding is
        ids, mask = padded_batch(2, pad, left=left)
        labels, label_mask = batch(seed=3, length=7)
        labels[label_mask == 0] = -100
        with torch.no_grad():
            ref = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            labels=torch.tensor(labels), use_cache=False)
        out = ours(ids, mask, labels=labels)
        assert float(np.asarray(out.logits).std()) > 0.3  # O(1) logits: the tolerance means something
        assert max_diff(out.logits, ref.logits) <= TOL
        assert abs(float(out.loss) - float(ref.loss)) <= TOL
        assert max_diff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= TOL

        # Explicit decoder ids with padding (right, then left) and their mask.
        dec_ids, dec_mask = padded_batch(4, pad, left=left, length=6)
        with torch.no_grad():
            ref = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            decoder_input_ids=torch.tensor(dec_ids), decoder_attention_mask=torch.tensor(dec_mask),
                            use_cache=False)
        out = ours(ids, mask, decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask)
        assert max_diff(out.logits, ref.logits) <= TOL

    if position_embedding_type == "absolute":
        # transformers' default (sdpa, use_cache=True) forward: the same loss.
        with torch.no_grad():
            ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
        assert abs(float(ours(ids, mask, labels=labels).loss) - float(ref.loss)) <= TOL


_GENERATION: dict = {}
# (weight scale, EOS logit boost) per pair, picked so that greedy rows are not one repeated token and
# some finish (tiny random models with LayerNorm'd LM heads otherwise loop on one token).
GENERATION_SETUP = {"bert": (0.1, 1.0), "roberta": (0.15, 0.4), "bert-bertgen": (0.3, 0.0)}


def generation_pair(kind, tmp_path_factory):
    if kind not in _GENERATION:
        scale, boost = GENERATION_SETUP[kind]
        tm = torch_pair(kind, seed=100, scale=scale)
        decoder = tm.decoder
        head = decoder.cls.predictions if hasattr(decoder, "cls") else decoder.lm_head
        with torch.no_grad():
            head.bias[decoder.config.eos_token_id] += boost
        path = str(tmp_path_factory.mktemp(f"gen-{kind}"))
        tm.save_pretrained(path)
        _GENERATION[kind] = (tm, EncoderDecoderModel.from_pretrained(path))
    return _GENERATION[kind]


GENERATE_CASES = [
    dict(max_new_tokens=12),
    dict(max_new_tokens=10, num_beams=4, length_penalty=0.6, num_return_sequences=2),
    dict(max_new_tokens=12, no_repeat_ngram_size=2),
]


@pytest.mark.parametrize("kwargs", GENERATE_CASES, ids=["greedy", "beam-length-penalty", "no-repeat-ngram"])
@pytest.mark.parametrize("kind", ["bert", "roberta", "bert-bertgen"])
def test_generate_matches_transformers(kind, kwargs, tmp_path_factory):
    tm, ours = generation_pair(kind, tmp_path_factory)
    pad, eos = tm.config.pad_token_id, tm.decoder.config.eos_token_id
    ids, mask = padded_batch(102, pad)
    with torch.no_grad():
        ref = tm.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
    out = ours.generate(ids, mask, **kwargs)
    assert_same_until_eos(ref.numpy(), out.sequences, (eos,), pad=pad)
    if kwargs.get("num_beams", 1) == 1:
        sequences = np.asarray(out.sequences)
        assert any((row[1:] == eos).any() for row in sequences)  # EOS really occurs in the test data
        assert max(len(set(row.tolist())) for row in sequences) >= 3  # and the rows are not one repeated token


@pytest.mark.parametrize("kind", PAIRS)
def test_round_trip_to_transformers(kind, save_dir):
    tm = torch_pair(kind, seed=5)
    path = _saved(tm, save_dir)
    ours = EncoderDecoderModel.from_pretrained(path)
    ours.save_pretrained(save_dir("ours"))
    back, info = transformers.EncoderDecoderModel.from_pretrained(save_dir("ours"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    reference = tm.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert set(load_state_dict(save_dir("ours"))) == set(load_state_dict(path))  # transformers' own key set
    assert type(back.encoder) is type(tm.encoder) and type(back.decoder) is type(tm.decoder)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_single_models_round_trip_and_decoder_generate(family, save_dir):
    """BertModel / RobertaModel (pooler output too) and the causal-LM decoders on their own, including
    decoder-only generation from left-padded prompts (transformers passes cumsum positions there)."""
    config_cls, encoder_cls, decoder_cls, ids_kw = FAMILY[family]
    ours_encoder_cls, ours_decoder_cls = {"bert": (BertModel, BertLMHeadModel),
                                          "roberta": (RobertaModel, RobertaForCausalLM)}[family]
    encoder = randomize_(encoder_cls(config_cls(**SIZES, **ids_kw)), seed=6)
    path = _saved(encoder, save_dir, "enc")
    ours = ours_encoder_cls.from_pretrained(path)
    pad = encoder.config.pad_token_id
    ids, mask = padded_batch(7, pad)
    types = (np.arange(ids.shape[1])[None, :] >= 4).astype(np.int64).repeat(ids.shape[0], 0)
    with torch.no_grad():
        ref = encoder(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    out = ours(ids, mask, token_type_ids=types)
    assert max_diff(out.last_hidden_state, ref.last_hidden_state) <= TOL
    assert max_diff(out.pooler_output, ref.pooler_output) <= TOL
    ours.save_pretrained(save_dir("enc-ours"))
    _, info = encoder_cls.from_pretrained(save_dir("enc-ours"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    decoder = randomize_(decoder_cls(config_cls(**SIZES, **ids_kw, is_decoder=True)), seed=8, scale=0.4)
    with torch.no_grad():
        (decoder.cls.predictions if family == "bert" else decoder.lm_head).bias[decoder.config.eos_token_id] += 1.0
    path = _saved(decoder, save_dir, "dec")
    ours = ours_decoder_cls.from_pretrained(path)
    labels = ids.copy()
    labels[mask == 0] = -100
    with torch.no_grad():
        ref = decoder(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    out = ours(ids, mask, labels=labels)
    assert max_diff(out.logits, ref.logits) <= TOL and abs(float(out.loss) - float(ref.loss)) <= TOL
    prompt, prompt_mask = padded_batch(9, pad, left=True, length=6)
    for kwargs in (dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=3)):
        with torch.no_grad():
            ref = decoder.generate(torch.tensor(prompt), attention_mask=torch.tensor(prompt_mask),
                                   pad_token_id=pad, **kwargs)
        out = ours.generate(prompt, prompt_mask, pad_token_id=pad, **kwargs)
        assert_same_until_eos(ref.numpy(), out.sequences, (decoder.config.eos_token_id,), pad=pad,
                              start=prompt.shape[1])
    ours.save_pretrained(save_dir("dec-ours"))
    _, info = decoder_cls.from_pretrained(save_dir("dec-ours"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_minilm_warm_start_as_transformers(minilm_dir, tmp_path):
    """from_encoder_decoder_pretrained(minilm, minilm) builds BertModel + BertLMHeadModel as transformers'
    method does: the same parameter names and shapes, the new tensors listed, and the same loss once
    transformers' own (randomly initialised) weights are loaded."""
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    reference = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir).eval()
    assert type(reference.decoder).__name__ == "BertLMHeadModel"
    reference.config.decoder_start_token_id = tok.cls_token_id
    reference.config.pad_token_id = tok.pad_token_id
    reference.save_pretrained(tmp_path)

    warm = EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir)
    warm.config.decoder_start_token_id = tok.cls_token_id
    warm.config.pad_token_id = tok.pad_token_id
    ours_state = warm.state_dict()
    theirs_state = load_state_dict(str(tmp_path))
    assert {k: v.shape for k, v in ours_state.items()} == {k: tuple(v.shape) for k, v in theirs_state.items()}
    for key, value in ours_state.items():  # copied weights equal; new ones initialised as transformers does
        if "crossattention" not in key and not key.startswith("decoder.cls."):
            np.testing.assert_array_equal(value, theirs_state[key], err_msg=key)
    new = {torch_key(tuple(path.split("/"))) for path in warm.conversion_report.initialized}
    assert new == {k for k in theirs_state if "crossattention" in k or k.startswith("decoder.cls.")}, new
    cross = warm.params["decoder"]["bert"]["encoder"]["layer_0"]["crossattention"]["self"]["query"]["kernel"]
    assert 0.015 < float(np.std(np.asarray(cross))) < 0.025  # N(0, initializer_range)
    head = warm.params["decoder"]["cls"]["predictions"]
    assert np.all(np.asarray(head["bias"]) == 0) and np.all(np.asarray(head["transform"]["LayerNorm"]["scale"]) == 1)

    loaded = EncoderDecoderModel.from_pretrained(str(tmp_path))
    encoded = tok(["The quick brown fox jumps over the lazy dog.", "JAX compiles Python."], padding=True,
                  return_tensors="np")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    labels = tok(["A fox jumps.", "JAX compiles numerical programs."], padding=True, return_tensors="np")["input_ids"]
    labels = labels.astype(np.int64)
    labels[labels == tok.pad_token_id] = -100
    with torch.no_grad():
        ref = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    out = loaded(ids, mask, labels=labels)
    assert max_diff(out.logits, ref.logits) <= 1e-4
    assert abs(float(out.loss) - float(ref.loss)) <= 1e-4


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_tied_encoder_decoder(kind, save_dir):
    """tie_encoder_decoder: one shared stack (transformers' 4.x save keeps only the encoder's pooler)."""
    tm = torch_pair(kind, seed=11)
    tm.config.tie_encoder_decoder = True
    tm.tie_weights()
    randomize_(tm, seed=12)
    base = getattr(tm.decoder, tm.decoder.base_model_prefix)
    assert tm.encoder.embeddings.word_embeddings.weight is base.embeddings.word_embeddings.weight
    path = _saved(tm, save_dir)
    assert {k for k in load_state_dict(path) if k.startswith("encoder.")} == {"encoder.pooler.dense.weight",
                                                                             "encoder.pooler.dense.bias"}
    ours = EncoderDecoderModel.from_pretrained(path)
    assert set(ours.params["encoder"]) == {"pooler"}  # everything else is the decoder's
    ids, mask = padded_batch(13, tm.config.pad_token_id)
    dec, _ = batch(seed=14, length=5, pad_rows=False)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec),
                 use_cache=False).logits
    assert max_diff(ours(ids, mask, decoder_input_ids=dec).logits, ref) <= TOL
    ours.save_pretrained(save_dir("ours"))
    back, info = transformers.EncoderDecoderModel.from_pretrained(save_dir("ours"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        again = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     decoder_input_ids=torch.tensor(dec), use_cache=False).logits
    assert max_diff(again, ref) == 0.0


def test_cli_convert_family_checkpoint(save_dir, capsys):
    """`bertgen convert` on a roberta2roberta checkpoint: to Flax and back to a clean transformers load; a
    bare BertModel checkpoint converts as BertModel (transformers' AutoModel class)."""
    from bertgen_jax.cli import main

    tm = torch_pair("roberta", seed=15)
    path = _saved(tm, save_dir)
    assert main(["convert", path, save_dir("flax"), "--to", "flax"]) == 0
    assert main(["convert", save_dir("flax"), save_dir("pt"), "--to", "pytorch"]) == 0
    back, info = transformers.EncoderDecoderModel.from_pretrained(save_dir("pt"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for key, value in back.state_dict().items():
        assert torch.equal(value, tm.state_dict()[key]), key
    tm.encoder.save_pretrained(save_dir("bert"))
    capsys.readouterr()
    assert main(["convert", save_dir("bert"), save_dir("bert-flax")]) == 0
    assert capsys.readouterr().out.startswith("RobertaModel:")


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_quantized_and_half_precision_family(kind, save_dir):
    """int8 weight-only quantization and bfloat16 run on the family's heads (transform / pooler Dense layers
    quantized too), stay close to float32, and the quantized model saves and loads back."""
    import jax.numpy as jnp

    from bertgen_jax import quantize_model

    tm = torch_pair(kind, seed=16)
    path = _saved(tm, save_dir)
    model = EncoderDecoderModel.from_pretrained(path)
    ids, mask = padded_batch(17, tm.config.pad_token_id)
    dec, _ = batch(seed=18, length=5, pad_rows=False)
    ref = np.asarray(model(ids, mask, decoder_input_ids=dec).logits)
    quantized = quantize_model(model, "int8")
    head = quantized.params["decoder"]["cls"]["predictions"] if kind == "bert" else quantized.params["decoder"]["lm_head"]
    assert "qvalue" in (head["transform"]["dense"] if kind == "bert" else head["dense"])["kernel"]
    out = np.asarray(quantized(ids, mask, decoder_input_ids=dec).logits)
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
    quantized.save_pretrained(save_dir("q"))
    again = EncoderDecoderModel.from_pretrained(save_dir("q"))
    np.testing.assert_array_equal(np.asarray(again(ids, mask, decoder_input_ids=dec).logits), out)
    half = EncoderDecoderModel.from_pretrained(path, dtype=jnp.bfloat16)
    logits = np.asarray(half(ids, mask, decoder_input_ids=dec).logits.astype(jnp.float32))
    assert np.abs(logits - ref).max() <= 0.05 * np.abs(ref).max()
    assert len(half.generate(ids, mask, max_new_tokens=4).sequences) == len(ids)


def test_roberta_length_limit(save_dir):
    """RoBERTa positions start at pad_token_id + 1: max_position_embeddings - pad - 1 tokens fit, and a longer
    input is a clear error (a JAX gather would clamp the position silently)."""
    tm = torch_pair("roberta", seed=19)
    model = EncoderDecoderModel.from_pretrained(_saved(tm, save_dir))
    limit = SIZES["max_position_embeddings"] - tm.config.pad_token_id - 1
    assert model.config.encoder.max_input_length == limit
    ids = np.full((1, limit), 7)
    dec = np.full((1, 3), 7)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec)).logits
    assert max_diff(model(ids, decoder_input_ids=dec).logits, ref) <= TOL
    with pytest.raises(ValueError, match=f"longer than max_position_embeddings={limit}"):
        model(np.full((1, limit + 1), 7), decoder_input_ids=dec)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(ids, max_length=limit + 1)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_training_gradients_match_pytorch(kind, save_dir):
    """The training loss and every gradient (transform / LM-head and token types included) match
    PyTorch's backward pass; the pooler, outside the loss, gets a zero gradient (None in PyTorch)."""
    import jax
    import jax.numpy as jnp

    from bertgen_jax.training import make_grad_fn
    from converters.mapping import tree_to_state_dict

    tm = torch_pair(kind, seed=20)
    model = EncoderDecoderModel.from_pretrained(_saved(tm, save_dir))
    ids, mask = padded_batch(21, tm.config.pad_token_id)
    labels, label_mask = batch(seed=22, length=7)
    labels[label_mask == 0] = -100
    loss_t = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
                use_cache=False).loss
    loss_t.backward()
    data = {"input_ids": jnp.asarray(ids[None], jnp.int32), "attention_mask": jnp.asarray(mask[None], jnp.int32),
            "labels": jnp.asarray(labels[None], jnp.int32)}
    loss, grads, _ = jax.jit(make_grad_fn(model))(model.params, data, jax.random.PRNGKey(0))
    assert abs(float(loss) - float(loss_t)) <= 1e-5 * max(1.0, abs(float(loss_t)))
    ours = tree_to_state_dict(jax.device_get(grads))
    assert set(ours) == set(dict(tm.named_parameters()))
    scale = max(float(p.grad.abs().max()) for p in tm.parameters() if p.grad is not None)
    for key, value in ours.items():
        theirs = tm.get_parameter(key).grad
        if theirs is None:
            assert key.startswith("encoder.pooler.") and not np.any(value), key
            continue
        theirs = theirs.numpy()
        if float(np.abs(theirs).max()) <= 1e-6 * scale:
            # attention key biases: exactly zero in exact arithmetic (softmax ignores a per-row constant),
            # float noise on both sides
            assert key.endswith("self.key.bias") and float(np.abs(value).max()) <= 1e-6 * scale, key
        else:
            assert float(np.abs(value - theirs).max()) <= 1e-4 * float(np.abs(theirs).max()), key
