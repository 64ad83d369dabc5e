"""Fine-tuning: gradients and AdamW against PyTorch, accumulation, resume, crash-safe checkpoints,
a tiny copy task through `bertgen train`, and clear errors for bad data files."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bertgen_jax import AutoTokenizer, EncoderDecoderModel
from bertgen_jax.training import (
    BatchLoader, DataError, OptimizerConfig, TrainConfig, Trainer, create_train_state, decay_mask, load_pairs,
    make_grad_fn, make_loss_fn, make_optimizer, make_train_step, read_examples,
)
from bertgen_jax.training import distributed, sharding
from bertgen_jax.training.cli import add_train_arguments, run_train
from bertgen_jax.training.data import BatchPosition
from bertgen_jax.training.evaluate import generate_texts, score_texts, tokenizer_lowercases
from converters.mapping import flatten, torch_key, tree_to_state_dict

from conftest import batch, tiny_config, tiny_encoder_decoder

POSITION_TYPES = ["absolute", "relative_key", "relative_key_query"]
WORDS = [f"w{i}" for i in range(94)]  # with 5 special tokens: a 99-token vocabulary, as the tiny models have
COPY_WORDS = WORDS[:20]


# ----------------------------------------------------------------------------- helpers
def _load(torch_model, save_dir, name="m"):
    path = save_dir(name)
    torch_model.save_pretrained(path)
    return EncoderDecoderModel.from_pretrained(path)


def _labelled_batch(seed=0):
    ids, mask = batch(seed=seed, batch_size=3, length=9)
    labels, label_mask = batch(seed=seed + 1, batch_size=3, length=7)
    labels[label_mask == 0] = -100
    labels[0, -1] = -100  # a row with its own length
    return ids, mask, labels


def _jax_batch(ids, mask, labels):
    return {"input_ids": jnp.asarray(ids[None], jnp.int32), "attention_mask": jnp.asarray(mask[None], jnp.int32),
            "labels": jnp.asarray(labels[None], jnp.int32)}


def _torch_loss(tm, ids, mask, labels):
    return tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
              use_cache=False).loss


def _relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))


def write_tokenizer(directory) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w") as handle:
        handle.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as handle:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True}, handle)
    return str(directory)


def write_copy_task(path, n, seed) -> str:
    """Copy task: the target is the source (3-6 words of 20)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for _ in range(n):
            text = " ".join(rng.choice(COPY_WORDS, size=int(rng.integers(3, 7))))
            handle.write(json.dumps({"source": text, "target": text}) + "\n")
    return str(path)


def write_tiny_model(directory, seed=0) -> str:
    """A one-layer bert2bert with transformers' own initialisation; [CLS] (2) starts decoding, [PAD] is 0."""
    torch.manual_seed(seed)
    # Dropout on attention probabilities only: the resume test needs dropout, and each dropout site
    # costs compile time.
    special = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3, num_hidden_layers=1, hidden_dropout_prob=0.0)
    enc = transformers.BertGenerationEncoder(tiny_config(**special))
    dec = transformers.BertGenerationDecoder(tiny_config(is_decoder=True, add_cross_attention=True, **special))
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        enc.config, dec.config, decoder_start_token_id=2, pad_token_id=0)
    transformers.EncoderDecoderModel(config=config, encoder=enc, decoder=dec).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def copy_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("copy")
    return {"tokenizer": write_tokenizer(root / "tokenizer"), "model": write_tiny_model(root / "model"),
            "train": write_copy_task(root / "train.jsonl", 256, seed=0),
            "eval": write_copy_task(root / "eval.jsonl", 32, seed=1), "root": root}


# ----------------------------------------------------------------------------- gradients and loss
@pytest.mark.parametrize("position_embedding_type", POSITION_TYPES)
def test_gradients_match_pytorch(position_embedding_type, save_dir):
    tm = tiny_encoder_decoder(seed=3, position_embedding_type=position_embedding_type)
    fm = _load(tm, save_dir)
    ids, mask, labels = _labelled_batch()
    loss_t = _torch_loss(tm, ids, mask, labels)
    loss_t.backward()

    loss, grads, count = jax.jit(make_grad_fn(fm))(fm.params, _jax_batch(ids, mask, labels), jax.random.PRNGKey(0))
    assert int(count) == int((labels != -100).sum())
    assert abs(float(loss) - float(loss_t)) <= 1e-5 * max(1.0, abs(float(loss_t)))
    ours = tree_to_state_dict(jax.device_get(grads))
    assert len(ours) == len(list(tm.parameters()))  # every (untied) parameter has a gradient
    _assert_grads_match(ours, tm)


def _assert_grads_match(ours, tm):
    """Relative error <= 1e-4 per parameter. Attention key biases have an exactly zero gradient
    (softmax ignores a constant added to every score of a row) where scores are q.k only: both
    sides are float noise there, checked against the largest gradient instead."""
    theirs = {key: tm.get_parameter(key).grad.numpy() for key in ours}
    scale = max(float(np.max(np.abs(g))) for g in theirs.values())
    noise_only = 0
    for key, value in ours.items():
        if np.max(np.abs(theirs[key])) <= 1e-6 * scale:
            assert key.endswith("self.key.bias"), key
            assert np.max(np.abs(value)) <= 1e-6 * scale, key
            noise_only += 1
        else:
            assert _relative_error(value, theirs[key]) <= 1e-4, (key, _relative_error(value, theirs[key]))
    assert noise_only <= 8


def test_tied_encoder_decoder_gradients_match_pytorch(save_dir):
    tm = tiny_encoder_decoder(seed=4, tie_encoder_decoder=True)
    fm = _load(tm, save_dir)
    ids, mask, labels = _labelled_batch(seed=5)
    _torch_loss(tm, ids, mask, labels).backward()
    _, grads, _ = jax.jit(make_grad_fn(fm))(fm.params, _jax_batch(ids, mask, labels), jax.random.PRNGKey(0))
    assert "encoder" not in grads  # one shared copy gets the gradient of both uses
    _assert_grads_match(tree_to_state_dict(jax.device_get(grads)), tm)


def test_label_smoothing_matches_transformers_label_smoother(save_dir):
    from transformers.trainer_pt_utils import LabelSmoother

    tm = tiny_encoder_decoder(seed=6)
    fm = _load(tm, save_dir)
    ids, mask, labels = _labelled_batch(seed=7)
    with torch.no_grad():
        out = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
        expected = LabelSmoother(epsilon=0.1)(out, torch.tensor(labels))
    micro_batch = {k: v[0] for k, v in _jax_batch(ids, mask, labels).items()}
    loss_sum, count = make_loss_fn(fm, label_smoothing=0.1)(fm.params, micro_batch, None)
    assert abs(float(loss_sum / count) - float(expected)) <= 1e-5


def test_gradient_accumulation_is_the_token_mean_over_all_micro_batches(save_dir):
    fm = _load(tiny_encoder_decoder(seed=8, num_hidden_layers=1), save_dir)
    ids, mask, labels = _labelled_batch(seed=9)
    ids2, mask2, labels2 = _labelled_batch(seed=11)
    labels2[:, 4:] = -100  # a micro-batch with fewer tokens: a mean of means would weigh it wrongly
    whole = {"input_ids": np.concatenate([ids, ids2])[None], "attention_mask": np.concatenate([mask, mask2])[None],
             "labels": np.concatenate([labels, labels2])[None]}
    split = {k: v.reshape((2, 3) + v.shape[2:]) for k, v in whole.items()}
    grad_fn = jax.jit(make_grad_fn(fm))
    loss_a, grads_a, _ = grad_fn(fm.params, whole, jax.random.PRNGKey(0))
    loss_b, grads_b, _ = grad_fn(fm.params, split, jax.random.PRNGKey(0))
    assert abs(float(loss_a) - float(loss_b)) <= 1e-6
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads_a))
    for a, b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale)


# ----------------------------------------------------------------------------- optimizer
def test_weight_decay_mask_matches_trainer(save_dir):
    tm = tiny_encoder_decoder(seed=1)
    fm = _load(tm, save_dir)
    decayed = set(transformers.Trainer.get_decay_parameter_names(None, tm))
    for path, decays in flatten(decay_mask(fm.params)).items():
        assert decays == (torch_key(path) in decayed), torch_key(path)
    assert any(flatten(decay_mask(fm.params)).values()) and not all(flatten(decay_mask(fm.params)).values())


def test_adamw_steps_match_pytorch(save_dir):
    tm = tiny_encoder_decoder(seed=2, num_hidden_layers=1).train()
    for module in tm.modules():  # no dropout: the two runs must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    fm = _load(tm, save_dir)
    hp = dict(learning_rate=3e-3, weight_decay=0.1, b1=0.8, b2=0.95, eps=1e-6, max_grad_norm=0.5,
              warmup_steps=1, total_steps=4)
    decayed = set(transformers.Trainer.get_decay_parameter_names(None, tm))
    named = dict(tm.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n in decayed], "weight_decay": hp["weight_decay"]},
              {"params": [p for n, p in named.items() if n not in decayed], "weight_decay": 0.0}]
    torch_opt = torch.optim.AdamW(groups, lr=hp["learning_rate"], betas=(hp["b1"], hp["b2"]), eps=hp["eps"])
    schedule = transformers.get_linear_schedule_with_warmup(torch_opt, hp["warmup_steps"], hp["total_steps"])

    optimizer = make_optimizer(OptimizerConfig(**hp), fm.params)
    state = create_train_state(fm.params, optimizer)
    step = make_train_step(fm, optimizer, deterministic=True)
    for i in range(3):
        ids, mask, labels = _labelled_batch(seed=20 + i)
        loss = _torch_loss(tm, ids, mask, labels)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(tm.parameters(), hp["max_grad_norm"])
        torch_opt.step()
        schedule.step()
        torch_opt.zero_grad()
        state, metrics = step(state, _jax_batch(ids, mask, labels))
        assert abs(float(metrics["loss"]) - float(loss)) <= 1e-4
        assert abs(float(metrics["grad_norm"]) - float(norm)) <= 1e-4 * float(norm)
        assert float(norm) > hp["max_grad_norm"]  # clipping is exercised
    assert int(state.step) == 3
    ours = tree_to_state_dict(jax.device_get(state.params))
    start = tree_to_state_dict(fm.params)
    lr = hp["learning_rate"]
    for key, value in ours.items():
        theirs = tm.get_parameter(key).detach().numpy()
        if np.max(np.abs(theirs - start[key])) < 0.01 * lr:
            # Attention key biases: their gradient is float noise (see _assert_grads_match), and
            # Adam turns noise into a step of about lr * noise / eps; both sides barely move.
            assert key.endswith("self.key.bias") and np.max(np.abs(value - start[key])) < 0.01 * lr, key
            continue
        # Adam moves each weight by ~lr per step whatever the gradient; compare to that scale.
        assert np.max(np.abs(value - theirs)) <= 1e-3 * lr + 1e-6 * np.max(np.abs(theirs)), key


def test_the_step_writes_its_gradients_into_one_reused_buffer_and_matches_the_joined_step(save_dir):
    """The step runs as two programs (gradients, then the update); the gradients go into the buffer the
    previous step's gradients occupied (donated and aliased: no fresh gradient arrays each step), and
    the result is the joined computation's: the gradient program alone gives the same loss, and the
    update is AdamW on those gradients."""
    fm = _load(tiny_encoder_decoder(seed=4, num_hidden_layers=1), save_dir)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3, max_grad_norm=1.0, total_steps=4), fm.params)
    step = make_train_step(fm, optimizer, deterministic=True)
    assert len(step.parts) == 2  # a small model: separate programs by default
    state = create_train_state(fm.params, optimizer)
    batches = [_jax_batch(*_labelled_batch(seed=40 + i)) for i in range(3)]
    joined = make_train_step(fm, optimizer, deterministic=False, separate_update=False)
    assert len(joined.parts) == 1
    pointers = []
    for micro in batches:
        expected_loss, expected_grads, _ = jax.jit(make_grad_fn(fm, deterministic=True))(
            state.params, micro, jax.random.split(state.rng)[1])
        before = jax.device_get(state.params)
        state, metrics = step(state, micro)
        buffer = step._buffer
        pointers.append([leaf.unsafe_buffer_pointer() for leaf in jax.tree_util.tree_leaves(buffer)])
        np.testing.assert_allclose(float(metrics["loss"]), float(expected_loss), rtol=1e-6)
        for got, want in zip(jax.tree_util.tree_leaves(buffer), jax.tree_util.tree_leaves(expected_grads)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                             jax.tree_util.tree_leaves(jax.device_get(state.params))))
    # The third step wrote into the buffer the second one had written (not donated, a new buffer would be
    # made while the old one is still alive: different addresses).
    assert pointers[1] == pointers[2]
    step.release()
    assert step._buffer is None

    # One program or two: the same updates, dropout on (the same keys drawn from the state's rng).
    separate = make_train_step(fm, optimizer, deterministic=False, separate_update=True)
    states = {"joined": create_train_state(fm.params, optimizer, seed=5),
              "separate": create_train_state(fm.params, optimizer, seed=5)}
    for micro in batches:
        metrics = {}
        for name, train_step in (("joined", joined), ("separate", separate)):
            states[name], metrics[name] = train_step(states[name], micro)
        for key in ("loss", "label_tokens", "grad_norm"):
            np.testing.assert_allclose(float(metrics["joined"][key]), float(metrics["separate"][key]), rtol=1e-6)
    assert int(states["joined"].step) == int(states["separate"].step) == 3
    np.testing.assert_array_equal(np.asarray(states["joined"].rng), np.asarray(states["separate"].rng))
    for a, b in zip(jax.tree_util.tree_leaves(states["joined"].params), jax.tree_util.tree_leaves(states["separate"].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_separate_update_by_default_goes_by_parameter_count():
    from bertgen_jax.training.step import SEPARATE_UPDATE_MAX_PARAMS, separate_update_by_default

    shapes = {"a": jax.ShapeDtypeStruct((SEPARATE_UPDATE_MAX_PARAMS // 2,), jnp.float32)}
    assert separate_update_by_default(shapes)
    shapes["b"] = jax.ShapeDtypeStruct((SEPARATE_UPDATE_MAX_PARAMS // 2 + 1,), jnp.float32)
    assert not separate_update_by_default(shapes)


@pytest.mark.parametrize("max_norm", [0.05, 1e3])  # clipping on, and a norm under the limit
def test_gradient_clipping_is_torch_clip_grad_norm(max_norm):
    """optim.clip_by_global_norm scales every gradient by min(1, max_norm / (norm + 1e-6)), as
    torch.nn.utils.clip_grad_norm_ (what transformers' Trainer calls) does."""
    from bertgen_jax.training.optim import clip_by_global_norm

    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((7, 5)).astype(np.float32), "b": {"c": rng.standard_normal(11).astype(np.float32)}}
    clip = clip_by_global_norm(max_norm)
    ours, _ = jax.jit(clip.update)(jax.tree_util.tree_map(jnp.asarray, grads), clip.init(grads))
    tensors = [torch.nn.Parameter(torch.zeros(x.shape)) for x in (grads["a"], grads["b"]["c"])]
    for tensor, value in zip(tensors, (grads["a"], grads["b"]["c"])):
        tensor.grad = torch.from_numpy(value.copy())
    torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    np.testing.assert_allclose(np.asarray(ours["a"]), tensors[0].grad.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(np.asarray(ours["b"]["c"]), tensors[1].grad.numpy(), rtol=1e-6, atol=0)
    if max_norm > 1:
        np.testing.assert_array_equal(np.asarray(ours["a"]), grads["a"])


def test_bf16_compute_keeps_float32_params(save_dir):
    fm = _load(tiny_encoder_decoder(seed=12, num_hidden_layers=1), save_dir)
    ids, mask, labels = _labelled_batch(seed=13)
    loss, grads, _ = jax.jit(make_grad_fn(fm, compute_dtype=jnp.bfloat16))(
        fm.params, _jax_batch(ids, mask, labels), jax.random.PRNGKey(0))
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
    reference = float(fm(ids, mask, labels=labels).loss)
    assert float(loss) != reference and abs(float(loss) - reference) <= 0.05 * reference


# ----------------------------------------------------------------------------- data
def test_batches_are_bucketed_deterministic_and_resumable(copy_task):
    tokenizer = AutoTokenizer.from_pretrained(copy_task["tokenizer"])
    data = load_pairs(copy_task["train"], tokenizer, decoder_start_token_id=2, progress=False)
    assert len(data) == 256 and all(label[0] != 2 and label[-1] == 3 for label in data.labels)
    make = lambda seed: BatchLoader(data, batch_size=8, accum=2, seed=seed, pad_token_id=0,  # noqa: E731
                                    pad_to_multiple_of=2)
    loader = make(5)
    assert len(loader) == 16
    run = list(itertools.islice(loader.batches(), 21))  # (position after the batch, batch)
    epoch = [b for _, b in run[:16]]
    assert all(np.array_equal(a["input_ids"], b["input_ids"])
               for a, (_, b) in zip(epoch, itertools.islice(make(5).batches(), 16)))
    rows = [row[row != 0] for b in epoch for row in b["input_ids"].reshape(-1, b["input_ids"].shape[-1])]
    assert sorted(tuple(r) for r in rows) == sorted(tuple(s) for s in data.sources)  # every example once
    assert {b["input_ids"].shape[:2] for b in epoch} == {(2, 8)}
    assert len({b["input_ids"].shape[-1] for b in epoch}) > 1  # length buckets
    assert all(b["input_ids"].shape[-1] % 2 == 0 for b in epoch)
    assert not np.array_equal(next(make(6).batches())[1]["labels"], epoch[0]["labels"])
    # resume mid-epoch 1 from the position saved after batch 20
    position, _ = run[19]
    assert position.epoch == 1 and position.batch == 4
    assert np.array_equal(next(loader.batches(position))[1]["labels"], run[20][1]["labels"])


def test_length_grouping_can_be_turned_off(copy_task):
    # One pool per batch: batch compositions are consecutive slices of the epoch's permutation (what a
    # plain shuffled sampler gives); 50 batches per pool: lengths are sorted within each pool first.
    tokenizer = AutoTokenizer.from_pretrained(copy_task["tokenizer"])
    data = load_pairs(copy_task["train"], tokenizer, decoder_start_token_id=2, progress=False)
    lengths = np.asarray([max(len(s), len(t)) for s, t in zip(data.sources, data.labels)])
    plain = BatchLoader(data, batch_size=8, seed=3, pad_token_id=0, pool_batches=1).epoch_order(0)
    permutation = np.random.default_rng([3, 0]).permutation(len(data))
    assert sorted(tuple(sorted(b)) for b in plain) == sorted(tuple(sorted(permutation[i:i + 8]))
                                                             for i in range(0, len(data), 8))
    grouped = BatchLoader(data, batch_size=8, seed=3, pad_token_id=0).epoch_order(0)
    spread = lambda batches: np.mean([np.ptp(lengths[b]) for b in batches])  # noqa: E731
    assert spread(grouped) < spread(plain)
    with pytest.raises(ValueError, match="length_group_batches"):
        Trainer(None, None, data, TrainConfig(output_dir="unused", length_group_batches=0, compilation_cache="off"))


def test_fusion_data_set_is_deterministic_disjoint_and_loads(tmp_path, minilm_dir):
    from bertgen_jax.data import fusion_splits, write_fusion_dataset

    splits = fusion_splits(n_train=400, n_eval=40, n_test=20, seed=1)
    assert splits == fusion_splits(n_train=400, n_eval=40, n_test=20, seed=1)
    assert splits != fusion_splits(n_train=400, n_eval=40, n_test=20, seed=2)
    sources = [{p["source"] for p in split} for split in splits.values()]
    assert [len(s) for s in sources] == [400, 40, 20]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
    pair = splits["train"][0]
    assert pair["source"].count(".") == 2 and pair["target"].count(".") == 1 and pair["source"] != pair["target"]
    paths = write_fusion_dataset(str(tmp_path / "fusion"), n_train=50, n_eval=10, n_test=10)
    data = load_pairs(paths["train"], AutoTokenizer.from_pretrained(minilm_dir), decoder_start_token_id=101,
                      progress=False)
    assert len(data) == 50 and all(label[0] != 101 and label[-1] == 102 for label in data.labels)


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_bad_data_files_name_file_and_line(tmp_path, copy_task):
    tokenizer = AutoTokenizer.from_pretrained(copy_task["tokenizer"])
    cases = {
        _bad(tmp_path, "missing.jsonl", '{"source": "w1", "target": "w2"}\n\n{"source": "w3"}\n'):
            ["missing.jsonl", "line 3", "'target'"],
        _bad(tmp_path, "badjson.jsonl", '{"source": "w1", "target": "w2"}\n{"source": \n'): ["line 2", "invalid JSON"],
        _bad(tmp_path, "empty.jsonl", "\n\n"): ["empty.jsonl", "empty"],
        _bad(tmp_path, "empty.csv", ""): ["empty.csv", "empty"],
        _bad(tmp_path, "header.csv", "src,target\nw1,w2\n"): ["header.csv", "line 1", "'source'"],
        _bad(tmp_path, "fields.tsv", "source\ttarget\nw1\tw2\nw3\n"): ["fields.tsv", "line 3"],
        _bad(tmp_path, "number.jsonl", '{"source": 5, "target": "w2"}\n'): ["line 1", "must be text"],
        _bad(tmp_path, "notext.csv", 'source,target\nw1,w2\n"w3\nw4",w5\n"   ",w6\n'):
            ["notext.csv", "line 5", "source", "tokenizes to nothing"],
        _bad(tmp_path, "notext.jsonl", '{"source": "w1", "target": "[SEP]"}\n'): ["line 1", "target", "nothing"],
        str(tmp_path / "absent.jsonl"): ["absent.jsonl", "no such file"],
        _bad(tmp_path, "data.txt", "w1\n"): ["data.txt", "extension"],
    }
    for path, fragments in cases.items():
        with pytest.raises(DataError) as info:
            load_pairs(path, tokenizer, progress=False)
        for fragment in fragments:
            assert fragment in str(info.value), (path, str(info.value))
    # multi-line CSV records keep the right line numbers for the rows after them
    assert [e.line for e in read_examples(_bad(tmp_path, "ok.csv", 'source,target\n"a\nb",c\nd,e\n'))] == [2, 4]


def test_cli_reports_bad_data_in_one_line(tmp_path, copy_task, capsys):
    bad = _bad(tmp_path, "bad.tsv", "source\ttarget\nw1\tw2\n\t\n")
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", copy_task["model"], "--tokenizer", copy_task["tokenizer"], "--train-file", bad,
         "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert run_train(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.tsv, line 3" in err and "tokenizes to nothing" in err


# ----------------------------------------------------------------------------- the loop
def _trainer(copy_task, output_dir, **overrides):
    tokenizer = AutoTokenizer.from_pretrained(copy_task["tokenizer"])
    model = EncoderDecoderModel.from_pretrained(copy_task["model"])
    data = load_pairs(copy_task["train"], tokenizer, decoder_start_token_id=2, progress=False)
    small = type(data)(data.path, data.sources[:14], data.labels[:14], data.examples[:14])
    config = dict(output_dir=str(output_dir), max_steps=6, batch_size=4, learning_rate=3e-3, weight_decay=0.01,
                  warmup_steps=2, log_every=1, progress=False, export=False, seed=3, pad_to_multiple_of=16)
    config.update(overrides.pop("config", {}))
    return Trainer(model, tokenizer, small, TrainConfig(**config), **overrides)


def test_an_error_mid_training_hands_model_params_back(copy_task, tmp_path):
    """The train state takes over model.params' buffers (donation); a failure must not leave the
    model holding deleted arrays: it gets the latest state's params."""
    def fail(step):
        if step == 2:
            raise RuntimeError("boom")

    trainer = _trainer(copy_task, tmp_path / "fails", step_callback=fail)
    before = jax.tree_util.tree_map(np.asarray, trainer.model.params)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    after = jax.tree_util.tree_leaves(trainer.model.params)
    assert all(not (isinstance(x, jax.Array) and x.is_deleted()) for x in after)
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree_util.tree_leaves(before), after))


def _record_at_state_init(trainer, record):
    """Run `record()` just before the trainer builds its train state; returns the state's program."""
    init_state = trainer._init_state

    class Recorded:
        def compile_ahead(self, *args):
            init_state.compile_ahead(*args)

        def __call__(self, params):
            record()
            return init_state(params)

    trainer._init_state = Recorded()
    return init_state


def test_the_first_step_compiles_before_the_train_state_exists(copy_task, tmp_path):
    """XLA's compile of the step holds hundreds of MB of host memory for a while: it must not come on
    top of params + optimizer state. The first batch's program is compiled before the state is built,
    and the steps then run that program (no second compile at the first call)."""
    trainer = _trainer(copy_task, tmp_path / "ahead")
    seen = {}

    def record():
        seen["programs_at_init"] = len(trainer.train_step.programs)
        seen["state_program_ahead"] = len(init_state.programs) == 1
        seen["first_buffer_ahead"] = trainer.train_step._buffer is not None

    init_state = _record_at_state_init(trainer, record)
    parts = trainer.train_step.parts
    assert len(parts) == 2  # a small model: the gradients' program and the update's
    # Also ahead, beside the gradients' program: the first gradient buffer (made) and the state's program.
    jitted = [part.jitted for part in parts] + [trainer.train_step.zeros.jitted, init_state.jitted]
    jit_cache_before = [fn._cache_size() for fn in jitted]
    trainer.train()
    assert seen == {"programs_at_init": 2, "state_program_ahead": True, "first_buffer_ahead": True}
    # The copy task's batches share one bucket: every step ran the programs compiled ahead.
    assert len(trainer.train_step.programs) == 2 and len(trainer.train_step.zeros.programs) == 1
    assert [fn._cache_size() for fn in jitted] == jit_cache_before


def test_a_one_program_step_also_compiles_the_state_program_ahead_and_trains_as_two(copy_task, tmp_path):
    """With the step as one program (`separate_update=False`, the default above 128M parameters) the
    start-up work still runs beside its compile, and the run ends where the two-program run does."""
    joined = _trainer(copy_task, tmp_path / "joined", config={"separate_update": False})
    seen = {}
    init_state = _record_at_state_init(joined, lambda: seen.update(state_program_ahead=len(init_state.programs) == 1))
    assert len(joined.train_step.parts) == 1
    result = joined.train()
    assert seen == {"state_program_ahead": True} and len(joined.train_step.programs) == 1
    separate = _trainer(copy_task, tmp_path / "separate", config={"separate_update": True}).train()
    assert result.step == separate.step == 6
    np.testing.assert_allclose(result.train_loss, separate.train_loss, rtol=1e-5)


class _TracingRecorder:
    """Wraps a jitted function: notes in `events` when `lower` (the tracing) starts and ends."""

    def __init__(self, jitted, name: str, events: list):
        self.jitted, self.name, self.events = jitted, name, events

    def lower(self, *args):
        self.events.append(f"{self.name} tracing")
        lowered = self.jitted.lower(*args)
        self.events.append(f"{self.name} traced")
        return lowered


@pytest.mark.parametrize("separate_update", [True, False])
def test_start_up_work_waits_until_the_step_is_traced(copy_task, tmp_path, separate_update):
    """Tracing holds the GIL: what runs beside the step's compile (the update's program, the first
    gradient buffer, the state's program) starts once the step's (first) program is traced, while XLA
    compiles it, not at the same time as its tracing."""
    trainer = _trainer(copy_task, tmp_path / "order", config={"separate_update": separate_update})
    events = []
    first, *rest = trainer.train_step.parts
    first.jitted = _TracingRecorder(first.jitted, "step", events)
    for part in rest:
        part.jitted = _TracingRecorder(part.jitted, "update", events)
    trainer._init_state.jitted = _TracingRecorder(trainer._init_state.jitted, "state", events)
    trainer._compile_first_step_ahead()
    # The second thread's jobs run in order once the step is traced: the update's program, the first
    # gradient buffer, the state's program.
    beside = ["state tracing", "state traced"]
    if separate_update:
        beside = ["update tracing", "update traced"] + beside
    assert events == ["step tracing", "step traced"] + beside
    assert len(trainer.train_step.programs) == len(trainer.train_step.parts)


def test_compile_ahead_signals_the_end_of_tracing_whatever_happens():
    """`after_lowering` is called once per `compile_ahead`: True after the tracing (before XLA's
    compile) and when the program was compiled before, False when the tracing fails (whose error is
    raised): a thread waiting on it must never wait forever."""
    spec = jax.ShapeDtypeStruct((3,), jnp.float32)
    calls = []
    program = distributed.CompiledTogether(jax.jit(lambda x: x + 1), "plus_one")
    program.compile_ahead(spec, after_lowering=lambda traced: calls.append((traced, len(program.programs))))
    program.compile_ahead(spec, after_lowering=lambda traced: calls.append((traced, len(program.programs))))
    assert calls == [(True, 0), (True, 1)]  # before the compile, then nothing to compile
    np.testing.assert_array_equal(program(jnp.zeros(3, jnp.float32)), np.ones(3, np.float32))

    def broken(x):
        raise ValueError("no trace today")

    failing = distributed.CompiledTogether(jax.jit(broken), "broken")
    with pytest.raises(ValueError, match="no trace today"):
        failing.compile_ahead(spec, after_lowering=lambda traced: calls.append((traced, len(failing.programs))))
    assert calls[2:] == [(False, 0)] and not failing.programs


@pytest.mark.parametrize("separate_update", [True, False])
def test_a_step_that_fails_to_trace_raises_instead_of_hanging(copy_task, tmp_path, separate_update):
    """The work beside the compile waits for the step's tracing: when that fails, the error is raised
    at once and nothing else is compiled."""
    trainer = _trainer(copy_task, tmp_path / "broken", config={"separate_update": separate_update})
    _, host_batch = next(trainer.loader.batches(BatchPosition()))
    no_labels = {key: value for key, value in host_batch.items() if key != "labels"}
    bad = sharding.shard_batch(no_labels, trainer.batch_sharding)
    outcome, beside = {}, []

    def compile_broken():
        try:
            trainer.train_step.compile_ahead(trainer._abstract_state(), bad, while_compiling=[lambda: beside.append(1)])
        except Exception as error:  # noqa: BLE001 - the test looks at what was raised
            outcome["error"] = error

    worker = threading.Thread(target=compile_broken, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "compile_ahead hung after its tracing failed"
    assert isinstance(outcome.get("error"), KeyError)
    assert not trainer.train_step.programs and not beside


def test_resume_gives_the_same_result_as_a_straight_run(copy_task, tmp_path):
    # 14 examples in batches of 4: 4 batches an epoch, so step 3 is mid-epoch and 6 is in epoch 2.
    straight = _trainer(copy_task, tmp_path / "straight")
    result = straight.train()
    assert result.step == 6 and not result.interrupted

    def interrupt(step):
        if step == 3:  # Ctrl-C: finish the step, save, stop
            if threading.current_thread() is threading.main_thread():
                os.kill(os.getpid(), signal.SIGINT)
            else:  # a runner off the main thread, where Python delivers no signals
                interrupted.request_stop()

    interrupted = _trainer(copy_task, tmp_path / "resumed", step_callback=interrupt)
    first = interrupted.train()
    assert first.interrupted and first.step == 3
    assert os.path.isdir(tmp_path / "resumed" / "checkpoints" / "3")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _trainer(copy_task, tmp_path / "resumed").train()
    second_trainer = _trainer(copy_task, tmp_path / "resumed", config={"resume": True})
    second = second_trainer.train()
    assert second.step == 6 and not second.interrupted
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(straight.model.params), leaves(second_trainer.model.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    losses = lambda r: [h["train/loss"] for h in r.history if "train/loss" in h]  # noqa: E731
    np.testing.assert_allclose(losses(second), losses(result), rtol=1e-6)


def test_packed_training_follows_the_unpacked_run(copy_task, tmp_path):
    """`pack_rows`: the same batches (plain shuffled, as packing draws them) packed two rows per batch of
    four train to the same losses and weights as one pair per row (dropout off: the masks differ)."""
    common = {"dropout": False, "length_group_batches": 1}
    plain = _trainer(copy_task, tmp_path / "plain", config=common)
    packed = _trainer(copy_task, tmp_path / "packed", config=dict(common, pack_rows=2))
    _, batch = next(packed.loader.batches())
    assert batch["input_ids"].shape[:2] == (1, 2) and "source_segment_ids" in batch
    results = plain.train(), packed.train()
    losses = [[h["train/loss"] for h in r.history if "train/loss" in h] for r in results]
    assert len(losses[0]) == 6
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(plain.model.params), leaves(packed.model.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="packing needs data read up front"):
        from bertgen_jax.training.streaming import PairSource

        Trainer(plain.model, plain.tokenizer, PairSource(copy_task["train"]),
                TrainConfig(output_dir=str(tmp_path / "x"), pack_rows=2, compilation_cache="off"))


def test_the_checkpointer_loads_orbax_only_when_a_checkpoint_is_written_or_read(tmp_path):
    """A run that writes no checkpoint into a directory that holds none never imports orbax (start-up
    time and memory); one that saves does, and a new Checkpointer then finds the step."""
    code = textwrap.dedent("""
        import sys
        import jax.numpy as jnp
        from bertgen_jax.training import Trainer  # noqa: F401  (the trainer's imports too)
        from bertgen_jax.training.checkpoint import Checkpointer
        directory = sys.argv[1]
        with Checkpointer(directory) as empty:
            assert empty.latest_step() is None and empty.all_steps() == []
        assert "orbax.checkpoint" not in sys.modules
        with Checkpointer(directory) as writer:
            writer.save(3, {"w": jnp.ones(2)}, {"note": 1}, wait=True)
        assert "orbax.checkpoint" in sys.modules
        with Checkpointer(directory) as reader:
            assert reader.latest_step() == 3 and reader.all_steps() == [3]
            state, meta = reader.restore({"w": jnp.zeros(2)})
            assert float(state["w"][1]) == 1.0 and meta == {"note": 1}
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_final_checkpoint_and_start_eval_only_when_asked(copy_task, tmp_path):
    """A finished run with save_every 0 writes no checkpoint (the exported model is the product) and
    does not evaluate before the first step; save_final_checkpoint / eval_at_start ask for them."""
    eval_data = load_pairs(copy_task["eval"], AutoTokenizer.from_pretrained(copy_task["tokenizer"]),
                           decoder_start_token_id=2, progress=False)
    plain = _trainer(copy_task, tmp_path / "plain", eval_data=eval_data, config={"max_steps": 2})
    result = plain.train()
    assert not result.interrupted and result.eval_loss is not None
    assert not (tmp_path / "plain" / "checkpoints").exists()  # orbax's manager never opened to make it
    assert [h["step"] for h in result.history if "eval/loss" in h] == [2]

    asked = _trainer(copy_task, tmp_path / "asked", eval_data=eval_data,
                     config={"max_steps": 2, "save_final_checkpoint": True, "eval_at_start": True})
    result = asked.train()
    assert sorted(os.listdir(tmp_path / "asked" / "checkpoints")) == ["2"]
    assert [h["step"] for h in result.history if "eval/loss" in h] == [0, 2]


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    import orbax.checkpoint._src.path.atomicity as atomicity
    from bertgen_jax.training.checkpoint import Checkpointer

    ckpt = Checkpointer(sys.argv[1])  # asynchronous: the saves finish in the background
    ckpt.save(1, {"w": jnp.arange(6.0), "step": jnp.asarray(1)}, {"data_position": {"epoch": 0, "batch": 1}})
    ckpt.wait_until_finished()

    async def crash(self):  # everything is written; die before the commit (the rename)
        os._exit(17)

    atomicity.AtomicRenameTemporaryPath.finalize = crash
    ckpt.save(2, {"w": jnp.arange(6.0) * 2, "step": jnp.asarray(2)}, {"data_position": {"epoch": 0, "batch": 2}})
    ckpt.wait_until_finished()
    sys.exit(0)
""")


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path):
    from bertgen_jax.training.checkpoint import Checkpointer

    directory = str(tmp_path / "ckpt")
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, directory], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert any(name.startswith("2") and name != "2" for name in os.listdir(directory))  # the uncommitted write
    abstract = {"w": jax.ShapeDtypeStruct((6,), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32)}
    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_step() == 1
        state, meta = ckpt.restore(abstract)
        np.testing.assert_array_equal(state["w"], np.arange(6.0))
        assert meta["data_position"] == {"epoch": 0, "batch": 1}
        ckpt.save(2, {"w": jnp.ones(6), "step": jnp.asarray(2)}, {"data_position": {"epoch": 0, "batch": 2}})
        assert ckpt.latest_step() == 2
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_copy_task_through_the_command_line(copy_task, tmp_path):
    out = tmp_path / "run"
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", copy_task["model"], "--tokenizer", copy_task["tokenizer"], "--train-file", copy_task["train"],
         "--eval-file", copy_task["eval"], "--output-dir", str(out), "--batch-size", "16", "--max-steps", "600",
         "--learning-rate", "3e-3", "--warmup-steps", "10", "--weight-decay", "0.01", "--save-every", "300",
         "--eval-every", "300", "--log-every", "50", "--pad-to-multiple-of", "16", "--no-progress", "--no-dropout",
         "--eval-samples", "32", "--max-new-tokens", "10", "--eval-at-start"])
    assert run_train(args) == 0
    history = [json.loads(line) for line in open(out / "metrics.jsonl")]
    evals = [h["eval/loss"] for h in history if "eval/loss" in h]
    assert len(evals) == 3 and evals[-1] < 0.25 * evals[0], evals  # at 0, 300 and 600 steps
    # greedy generation on held-out inputs reproduces them (the eval runs model.generate)
    exact = [h["eval/exact_match"] for h in history if "eval/exact_match" in h]
    assert exact[0] == 0.0 and exact[-1] >= 75.0, exact
    assert [h["eval/bleu"] for h in history if "eval/bleu" in h][-1] >= 80.0
    assert sorted(os.listdir(out / "checkpoints")) == ["300", "600"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tensorboard"))
    assert open(out / "loss_curve.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # the export loads in transformers with every key, and gives the loss we measured
    tm = transformers.EncoderDecoderModel.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    data = load_pairs(copy_task["eval"], tokenizer, decoder_start_token_id=2, progress=False)
    ids = [list(s) for s in data.sources[:4]]
    src = np.zeros((4, max(map(len, ids))), np.int64)
    for i, row in enumerate(ids):
        src[i, :len(row)] = row
    labels = np.full((4, max(len(t) for t in data.labels[:4])), -100, np.int64)
    for i, row in enumerate(data.labels[:4]):
        labels[i, :len(row)] = row
    with torch.no_grad():
        loss_t = _torch_loss(tm.eval(), src, (src != 0).astype(np.int64), labels)
    fm = EncoderDecoderModel.from_pretrained(out / "model")
    assert abs(float(fm(src, (src != 0).astype(np.int64), labels=labels).loss) - float(loss_t)) <= 1e-4
    assert float(loss_t) < 0.25 * evals[0]


# ----------------------------------------------------------------------------- generation-based eval
class _EchoModel:
    """Stands in for a model with `generate`: returns the start token followed by the input."""

    def generate(self, input_ids, attention_mask, *, max_new_tokens, num_beams, params=None):
        sequences = np.concatenate([np.full((input_ids.shape[0], 1), 2), np.where(attention_mask > 0, input_ids, 0)], 1)
        return argparse.Namespace(sequences=sequences[:, : max_new_tokens + 1])


def test_generation_eval_plumbing(copy_task):
    tokenizer = AutoTokenizer.from_pretrained(copy_task["tokenizer"])
    sources = ["w1 w2 w3", "w4 w5", "w6"]
    assert generate_texts(_EchoModel(), tokenizer, sources, batch_size=2, max_new_tokens=10) == sources
    scores = score_texts(["w1 w2 w3 w4", "w5 w6"], ["w1 w2 w3 w4", "w5 w7"])
    assert scores["exact_match"] == 50.0 and 0 < scores["bleu"] < 100
    assert score_texts(["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100.0)
    assert score_texts(["tom was here ."], ["Tom was here ."])["exact_match"] == 0.0
    assert score_texts(["tom was here ."], ["Tom was here ."], lowercase=True) == {"bleu": pytest.approx(100.0),
                                                                                   "exact_match": 100.0}
    assert tokenizer_lowercases(tokenizer)


def test_separate_update_argument():
    from bertgen_jax.training.cli import train_config_from_args

    def config(*extra):
        return train_config_from_args(add_train_arguments(argparse.ArgumentParser()).parse_args(
            ["--model", "m", "--train-file", "t.jsonl", "--output-dir", "o", *extra]))

    assert config().separate_update is None
    assert config("--separate-update", "on").separate_update is True
    assert config("--separate-update", "off").separate_update is False
    with pytest.raises(SystemExit):
        config("--separate-update", "2")
