"""Sequence packing (`training.packing`, `BatchLoader(pack_rows=...)`): several pairs per row give the
loss and gradients of the same pairs padded one per row, within 1e-5 (float32, no dropout), for the
BertGeneration pair with every position type, the BERT and RoBERTa pairs, label smoothing and the
labelled-rows LM head; the packer places every pair once, keeps each pair's tokens in order, and balances
the rows; the loader fixes one packed shape for the run and packs every batch into it; `--pack-rows auto`
packs where the plan saves compute and not where one long pair would stretch every row."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgen_jax import EncoderDecoderModel
from bertgen_jax.training import packing
from bertgen_jax.training.data import BatchLoader, BatchPosition, Example, TokenizedData
from bertgen_jax.training.step import make_grad_fn

from conftest import tiny_encoder_decoder
from test_bert_family import torch_pair

TOL = 1e-5


def _data(seed=0, n=24, vocab=99, pad_id=0, source_range=(2, 13), target_range=(1, 11)) -> TokenizedData:
    rng = np.random.default_rng(seed)
    sources = [rng.integers(3, vocab, size=rng.integers(*source_range)).astype(np.int32) for _ in range(n)]
    labels = [rng.integers(3, vocab, size=rng.integers(*target_range)).astype(np.int32) for _ in range(n)]
    assert all(pad_id not in s for s in sources) and all(pad_id not in t for t in labels)
    return TokenizedData("pairs.jsonl", sources, labels, [Example("s", "t", i + 1) for i in range(n)])


def _loaders(data, pad_id, batch_size=8, rows=3, accum=1):
    kwargs = dict(batch_size=batch_size, accum=accum, pad_token_id=pad_id, seed=1, pool_batches=1)
    return BatchLoader(data, **kwargs), BatchLoader(data, **kwargs, pack_rows=rows)


def _assert_packed_equals_unpacked(model, data, *, label_smoothing=0.0, labelled_only=False, accum=1):
    pad_id = model.config.encoder.pad_token_id
    plain_loader, packed_loader = _loaders(data, pad_id, accum=accum)
    indices = plain_loader.epoch_order(0)[0]
    plain, packed = plain_loader.make_batch(indices), packed_loader.make_batch(indices)
    # Fewer positions per side, the same labels.
    assert packed["input_ids"].size < plain["input_ids"].size and packed["labels"].size < plain["labels"].size
    assert sorted(packed["labels"][packed["labels"] != -100]) == sorted(plain["labels"][plain["labels"] != -100])
    grads_fn = jax.jit(make_grad_fn(model, label_smoothing=label_smoothing, deterministic=True,
                                    labelled_only=labelled_only))
    key = jax.random.PRNGKey(0)
    loss_a, grads_a, count_a = grads_fn(model.params, jax.tree_util.tree_map(jnp.asarray, plain), key)
    loss_b, grads_b, count_b = grads_fn(model.params, jax.tree_util.tree_map(jnp.asarray, packed), key)
    assert float(count_a) == float(count_b) > 0
    assert abs(float(loss_a) - float(loss_b)) <= TOL * max(1.0, abs(float(loss_a)))
    flat_b = dict(jax.tree_util.tree_flatten_with_path(grads_b)[0])
    for path, a in jax.tree_util.tree_flatten_with_path(grads_a)[0]:
        np.testing.assert_allclose(np.asarray(flat_b[path]), np.asarray(a), rtol=TOL, atol=TOL,
                                   err_msg=jax.tree_util.keystr(path))
    # Not vacuous: the gradients are far from zero, and a pair attending across its row would change them.
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads_a)) > 1e-2


@pytest.mark.parametrize("position_embedding_type", ["absolute", "relative_key", "relative_key_query"])
def test_packed_loss_and_gradients_equal_unpacked(save_dir, position_embedding_type):
    tm = tiny_encoder_decoder(seed=3, position_embedding_type=position_embedding_type)
    tm.save_pretrained(save_dir("m"))
    model = EncoderDecoderModel.from_pretrained(save_dir("m"))
    _assert_packed_equals_unpacked(model, _data(seed=1), label_smoothing=0.1)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_family_pairs_packed_equal_unpacked(save_dir, kind):
    """RoBERTa counts positions from pad_token_id + 1 in every pair; BERT adds token types."""
    tm = torch_pair(kind, seed=2)
    tm.save_pretrained(save_dir("m"))
    model = EncoderDecoderModel.from_pretrained(save_dir("m"))
    pad_id = model.config.encoder.pad_token_id
    _assert_packed_equals_unpacked(model, _data(seed=4, pad_id=pad_id))


def test_packed_labelled_lm_head_and_accumulation_equal_unpacked(save_dir):
    tm = tiny_encoder_decoder(seed=5)
    tm.save_pretrained(save_dir("m"))
    model = EncoderDecoderModel.from_pretrained(save_dir("m"))
    _assert_packed_equals_unpacked(model, _data(seed=6, n=40), labelled_only=True, accum=2)


def test_pairs_must_not_see_each_other(save_dir):
    """The masks matter: packing without them (one segment per row) changes the loss."""
    tm = tiny_encoder_decoder(seed=3)
    tm.save_pretrained(save_dir("m"))
    model = EncoderDecoderModel.from_pretrained(save_dir("m"))
    plain_loader, packed_loader = _loaders(_data(seed=1), 0)
    packed = packed_loader.make_batch(plain_loader.epoch_order(0)[0])
    merged = dict(packed, source_segment_ids=np.minimum(packed["source_segment_ids"], 1),
                  target_segment_ids=np.minimum(packed["target_segment_ids"], 1))
    grads_fn = jax.jit(make_grad_fn(model, deterministic=True))
    loss, _, _ = grads_fn(model.params, jax.tree_util.tree_map(jnp.asarray, packed), jax.random.PRNGKey(0))
    loss_merged, _, _ = grads_fn(model.params, jax.tree_util.tree_map(jnp.asarray, merged), jax.random.PRNGKey(0))
    assert abs(float(loss) - float(loss_merged)) > 1e-3


def test_assign_rows_places_every_pair_once_and_balances():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n, rows = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        source_lengths, target_lengths = rng.integers(1, 60, size=n), rng.integers(1, 60, size=n)
        assignment = packing.assign_rows(source_lengths, target_lengths, rows)
        assert len(assignment) == rows
        assert sorted(i for pairs in assignment for i in pairs) == list(range(n))
        for lengths in (source_lengths, target_lengths):
            fullest = max(sum(lengths[i] for i in pairs) for pairs in assignment)
            # Greedy balancing: the fullest row is within one (the largest) pair of the even share.
            assert fullest <= int(np.ceil(lengths.sum() / rows)) + int((source_lengths + target_lengths).max())
    with pytest.raises(ValueError, match="rows must be positive"):
        packing.assign_rows([3], [4], 0)


def test_pack_lays_pairs_out_in_order_with_segments_and_positions():
    sources = [np.array([5, 6, 7], np.int32), np.array([8], np.int32), np.array([9, 10], np.int32)]
    labels = [np.array([11], np.int32), np.array([12, 13], np.int32), np.array([14, 15, 16], np.int32)]
    arrays = packing.pack(sources, labels, [[0, 1], [2]], 5, 4, pad_token_id=0)
    np.testing.assert_array_equal(arrays["input_ids"], [[5, 6, 7, 8, 0], [9, 10, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["source_segment_ids"], [[1, 1, 1, 2, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["source_positions"], [[0, 1, 2, 0, 0], [0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["attention_mask"], [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(arrays["labels"], [[11, 12, 13, -100], [14, 15, 16, -100]])
    np.testing.assert_array_equal(arrays["target_segment_ids"], [[1, 2, 2, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(arrays["target_positions"], [[0, 0, 1, 0], [0, 1, 2, 0]])
    with pytest.raises(ValueError, match="needs more than 4 positions"):
        packing.pack(sources, labels, [[0, 1, 2]], 6, 4, pad_token_id=0)


def test_loader_packs_every_batch_of_the_run_into_one_shape():
    data = _data(seed=2, n=50)
    loader = BatchLoader(data, batch_size=8, pad_token_id=0, seed=3, pack_rows=2, pack_epochs=3, pool_batches=50)
    assert loader.pool_batches == 1  # packing mixes lengths instead of grouping them
    source_length, target_length = loader.packed_lengths
    total = sum(len(s) for s in data.sources) + sum(len(t) for t in data.labels)
    seen, shapes = 0, set()
    for position, batch in loader.batches(BatchPosition(), epochs=3):
        shapes.add((batch["input_ids"].shape, batch["labels"].shape))
        seen += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
    assert shapes == {((1, 2, source_length), (1, 2, target_length))}
    assert seen == 3 * total  # every token of every pair, every epoch
    # Fewer positions than one padded row per pair (these lengths vary 1-12: the fullest row of three
    # epochs sets the shape).
    plain = BatchLoader(data, batch_size=8, pad_token_id=0, seed=3, pool_batches=1)
    plain_positions = sum(b["input_ids"].size + b["labels"].size for _, b in plain.batches(epochs=1))
    assert len(plain) * 2 * (source_length + target_length) < plain_positions
    # Accumulation: each micro-batch packs its own pairs; the epoch's short batch (2 pairs; batches are
    # shuffled, so it is anywhere in the epoch) leaves its second micro-batch empty (padding rows only).
    accumulated = BatchLoader(data, batch_size=8, accum=2, pad_token_id=0, seed=3, pack_rows=2)
    batches = [b for _, b in accumulated.batches(epochs=1)]
    assert all(b["input_ids"].shape[:2] == (2, 2) for b in batches)
    assert sum(int(b["attention_mask"].sum() + (b["labels"] != -100).sum()) for b in batches) == total
    empty = [b for b in batches if (b["labels"][1] == -100).all() and (b["source_segment_ids"][1] == 0).all()]
    assert len(empty) == 1 and int((empty[0]["source_segment_ids"][0].max(axis=-1)).sum()) == 2
    with pytest.raises(ValueError, match="pack_rows must be between 1 and the batch size 8"):
        BatchLoader(data, batch_size=8, pad_token_id=0, pack_rows=9)


def _loader_for(data, batch_size=16):
    return lambda rows: BatchLoader(data, batch_size=batch_size, pad_token_id=0, seed=0, pack_rows=rows)


def test_auto_packs_short_pairs_and_not_a_long_tail():
    """`--pack-rows auto`: batch / 4 rows where the plan (positions, plus attention's growth with the row)
    saves at least 10%; one long pair sets every packed row's length, so a long tail stays unpacked."""
    short = _data(seed=3, n=160, source_range=(4, 14), target_range=(4, 14))
    assert packing.choose_pack_rows(_loader_for(short), 16, 1, 10, 384) == 4
    plain, packed = (_loader_for(short)(rows).planned_cost(10, 384) for rows in (0, 4))
    assert packed < 0.9 * plain
    # Lengths that fill their bucket (10-13 tokens, padded to 13) leave packing too little to gain.
    even = _data(seed=3, n=160, source_range=(10, 14), target_range=(10, 14))
    assert packing.choose_pack_rows(_loader_for(even), 16, 1, 10, 384) == 0
    tail = _data(seed=3, n=160, source_range=(4, 14), target_range=(4, 14))
    tail.sources[7] = np.arange(3, 123, dtype=np.int32)  # one 120-token source
    assert packing.choose_pack_rows(_loader_for(tail), 16, 1, 10, 384) == 0
    # Rows must be a multiple of the batch shards and fewer than the batch.
    assert packing.choose_pack_rows(_loader_for(short), 16, 8, 10, 384) == 0
    assert packing.choose_pack_rows(_loader_for(short, 2), 2, 1, 10, 384) == 0
    assert packing.choose_pack_rows(_loader_for(short), 16, 3, 10, 384) == 3  # 4 rounded down to 3 shards


def test_pack_rows_argument():
    import argparse

    from bertgen_jax.training.cli import add_train_arguments

    def parse(*extra):
        return add_train_arguments(argparse.ArgumentParser()).parse_args(
            ["--model", "m", "--train-file", "t.jsonl", "--output-dir", "o", *extra]).pack_rows

    assert parse() == "auto" and parse("--pack-rows", "3") == 3 and parse("--pack-rows", "0") == 0
    for bad in ("-1", "four"):
        with pytest.raises(SystemExit):
            parse("--pack-rows", bad)
