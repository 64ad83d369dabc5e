"""The training loss computes the LM head only on labelled positions (`inputs.labelled_lm_loss`): its
loss and gradients equal the plain computation (full [B, T, vocab] logits, then `token_losses`) within
1e-5, float32, on batches with padding and -100 labels, with and without label smoothing, for the
BertGeneration, BERT and RoBERTa heads (tied and untied), several row groups and several chunks."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgen_jax import EncoderDecoderModel
from bertgen_jax.inputs import labelled_lm_loss, shift_tokens_right, token_losses
from bertgen_jax.models import _dropout_rngs

from conftest import batch, tiny_encoder_decoder
from test_bert_family import torch_pair

TOL = 1e-5


def _batch(seed=0, size=4):
    ids, mask = batch(seed=seed, batch_size=size, length=9)
    labels, label_mask = batch(seed=seed + 1, batch_size=size, length=7)
    labels[label_mask == 0] = -100
    labels[0, -1] = -100  # a row with its own length
    labels[1, 2] = -100  # an ignored position inside a row
    labels[size - 1] = -100  # a filler row (no labels at all), as a short last batch has
    return {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask, jnp.int32),
            "labels": jnp.asarray(labels, jnp.int32)}


def _plain_loss_fn(model, label_smoothing):
    """The loss as computed before: every position through the LM head, then `token_losses`."""
    c = model.config

    def loss_sum(params, micro, rng):
        labels = micro["labels"]
        decoder_input_ids = shift_tokens_right(labels, c.pad_token_id, c.decoder_start_token_id)
        decoder_mask = (decoder_input_ids != c.pad_token_id).astype(jnp.int32)
        _, decoded = model.module.apply({"params": model._module_params(params)}, micro["input_ids"],
                                        micro["attention_mask"], decoder_input_ids, decoder_mask,
                                        deterministic=rng is None, rngs=_dropout_rngs(rng is None, rng))
        losses, valid = token_losses(decoded["logits"], labels, label_smoothing)
        return jnp.sum(losses), jnp.sum(valid).astype(jnp.float32)

    return loss_sum


def _assert_same_loss_and_grads(model, micro, label_smoothing, row_groups=1, rng=None):
    ours = model.loss_function(label_smoothing=label_smoothing, deterministic=rng is None, labelled_only=True,
                               row_groups=row_groups)
    plain = _plain_loss_fn(model, label_smoothing)
    (loss_a, count_a), grads_a = jax.jit(jax.value_and_grad(ours, has_aux=True))(model.params, micro, rng)
    (loss_b, count_b), grads_b = jax.jit(jax.value_and_grad(plain, has_aux=True))(model.params, micro, rng)
    assert float(count_a) == float(count_b) == float((np.asarray(micro["labels"]) != -100).sum())
    assert abs(float(loss_a) - float(loss_b)) <= TOL * max(1.0, abs(float(loss_b)))
    flat_a = jax.tree_util.tree_flatten_with_path(grads_a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(grads_b)[0])
    assert len(flat_a) == len(flat_b)
    for path, a in flat_a:
        np.testing.assert_allclose(np.asarray(a), np.asarray(flat_b[path]), rtol=TOL, atol=TOL,
                                   err_msg=jax.tree_util.keystr(path))
    # Not vacuous: the LM head's projection gets a gradient.
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads_a)) > 1e-3
    # The eval path (no gradient) gives the same loss.
    loss_eval, _ = jax.jit(ours)(model.params, micro, rng)
    assert abs(float(loss_eval) - float(loss_b)) <= TOL * max(1.0, abs(float(loss_b)))


@pytest.mark.parametrize("label_smoothing, row_groups", [(0.0, 1), (0.1, 2)])
def test_bertgen_pair_labelled_loss_equals_full_logits(save_dir, label_smoothing, row_groups):
    tm = tiny_encoder_decoder(seed=3)
    tm.save_pretrained(save_dir("m"))
    model = EncoderDecoderModel.from_pretrained(save_dir("m"))
    _assert_same_loss_and_grads(model, _batch(seed=5), label_smoothing, row_groups)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_family_heads_labelled_loss_equals_full_logits(save_dir, kind):
    """BERT's head has a transform (dense, activation, LayerNorm), RoBERTa's its own; with dropout on."""
    tm = torch_pair(kind, seed=2)
    tm.save_pretrained(save_dir("m"))
    model = EncoderDecoderModel.from_pretrained(save_dir("m"))
    pad = model.config.pad_token_id
    micro = _batch(seed=7)
    micro["input_ids"] = jnp.where(micro["attention_mask"] == 1, micro["input_ids"], pad)
    _assert_same_loss_and_grads(model, micro, 0.1, rng=jax.random.PRNGKey(1))


def test_untied_lm_head_labelled_loss_equals_full_logits(save_dir):
    tm = tiny_encoder_decoder(seed=4, decoder_overrides=dict(tie_word_embeddings=False))
    tm.save_pretrained(save_dir("m"))
    model = EncoderDecoderModel.from_pretrained(save_dir("m"))
    assert not model.config.decoder.tie_word_embeddings
    _assert_same_loss_and_grads(model, _batch(seed=9), 0.1)


@pytest.mark.parametrize("chunk_rows, vocab_major", [(4, True), (7, False), (64, True)])
def test_labelled_lm_loss_over_several_chunks(chunk_rows, vocab_major):
    """The chunk loop: labelled rows spread over many chunks (and a last partial one), both weight layouts."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(4, 9, 16)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(23, 16) if vocab_major else (16, 23)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(23,)), jnp.float32)
    labels = rng.integers(0, 23, size=(4, 9))
    labels[rng.random((4, 9)) < 0.3] = -100
    labels[2] = -100
    labels = jnp.asarray(labels, jnp.int32)

    def plain(h, w, b):
        logits = jnp.einsum("bth,vh->btv" if vocab_major else "bth,hv->btv", h, w) + b
        losses, valid = token_losses(logits, labels, 0.1)
        return jnp.sum(losses)

    def ours(h, w, b):
        return labelled_lm_loss(h, w, b, labels, label_smoothing=0.1, groups=2, chunk_rows=chunk_rows,
                                weight_is_vocab_major=vocab_major)[0]

    expected, expected_grads = jax.value_and_grad(plain, argnums=(0, 1, 2))(hidden, weight, bias)
    value, grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2)))(hidden, weight, bias)
    assert abs(float(value) - float(expected)) <= TOL * abs(float(expected))
    for a, b in zip(grads, expected_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=TOL, atol=TOL)


def test_dropout_masks_come_from_the_fused_counter_hash(save_dir):
    """The training step draws two seeds per dropout site with XLA's RngBitGenerator (`unsafe_rbg` keys:
    threefry runs only to derive one key per micro-batch, not at every dropout site, where its inlined
    hash was half the step's compile time) and builds each mask from them with the counter hash of
    `modules.dropout_keep_mask`, which XLA fuses into the masking op: no RngBitGenerator draws a
    mask-sized array (it ran as its own kernel at ~10 ns per element). Dropout still acts, and is a
    function of the step's key."""
    import optax

    from bertgen_jax.training.step import create_train_state, make_grad_fn, make_train_step

    tm = tiny_encoder_decoder(seed=3, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    tm.save_pretrained(save_dir("m"))
    model = EncoderDecoderModel.from_pretrained(save_dir("m"))
    micro = _batch(seed=5)
    stacked = {k: v[None] for k, v in micro.items()}
    optimizer = optax.adamw(1e-3)
    state = create_train_state(model.params, optimizer)
    lowered = make_train_step(model, optimizer, separate_update=True).gradients.jitted.lower(
        state.params, stacked, state.rng, state.params).as_text()
    dropout_sites = 2 * model.config.encoder.num_hidden_layers + 3 * model.config.decoder.num_hidden_layers + 2
    draws = re.findall(r"rng_bit_generator.*?-> \(tensor<[^>]*>, tensor<([^>]*)>\)", lowered)
    assert len(draws) >= dropout_sites
    drawn_sizes = [int(np.prod([int(d) for d in shape.split("x")[:-1]] or [1])) for shape in draws]
    assert max(drawn_sizes) <= 40, drawn_sizes  # seeds and key folds, never a mask's worth
    # threefry only splits the state key and derives the dropout key (a fixed handful of calls, nested ones
    # counted), whatever the number of dropout sites.
    assert len(re.findall(r"call @_?threefry", lowered)) <= 6 < dropout_sites

    grads = jax.jit(make_grad_fn(model, deterministic=False))
    loss_a = float(grads(model.params, stacked, jax.random.PRNGKey(0))[0])
    loss_a_again = float(grads(model.params, stacked, jax.random.PRNGKey(0))[0])
    loss_b = float(grads(model.params, stacked, jax.random.PRNGKey(1))[0])
    loss_off = float(jax.jit(make_grad_fn(model, deterministic=True))(model.params, stacked, jax.random.PRNGKey(0))[0])
    assert loss_a == loss_a_again
    assert loss_a != loss_b and loss_a != loss_off and loss_b != loss_off
