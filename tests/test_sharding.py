"""Sharding: rules on parameter paths, the mesh flag, and a sharded run (8 virtual CPU devices,
data x fsdp) that matches the single-device run step for step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bertgen_jax.training import sharding as sh


def _mesh_of(data, fsdp):
    """A stand-in with the `.shape` that spec_for reads (no devices needed)."""
    return type("FakeMesh", (), {"shape": {"data": data, "fsdp": fsdp}})()


def test_parse_mesh():
    assert sh.parse_mesh(None) == {"data": -1, "fsdp": 1}
    assert sh.parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4}
    assert sh.parse_mesh(" fsdp=8 ") == {"data": -1, "fsdp": 8}
    for bad in ("model=2", "data", "data=two", "data=0", "data=2;fsdp=4"):
        with pytest.raises(ValueError, match="--mesh"):
            sh.parse_mesh(bad)


def test_make_mesh_checks_the_device_count():
    mesh = sh.make_mesh()
    assert mesh.axis_names == ("data", "fsdp") and mesh.size == len(jax.devices())
    with pytest.raises(ValueError, match="does not match"):
        sh.make_mesh(data=len(jax.devices()) + 1)


def test_rules_shard_big_matrices_and_replicate_vectors():
    mesh = _mesh_of(2, 4)
    layer = "decoder/bert/encoder/layer_0"
    assert sh.spec_for(f"{layer}/attention/self/query/kernel", (384, 384), mesh) == P("fsdp")
    assert sh.spec_for(f"{layer}/intermediate/dense/kernel", (384, 1536), mesh) == P("fsdp")
    assert sh.spec_for(f"{layer}/output/dense/kernel", (1536, 384), mesh) == P("fsdp")
    assert sh.spec_for(f"{layer}/attention/self/query/bias", (384,), mesh) == P()
    assert sh.spec_for(f"{layer}/output/LayerNorm/scale", (384,), mesh) == P()
    assert sh.spec_for("encoder/embeddings/position_embeddings/embedding", (512, 384), mesh) == P()
    # vocab rows when they divide, else the hidden dimension, else nothing
    assert sh.spec_for("encoder/embeddings/word_embeddings/embedding", (30524, 384), mesh) == P("fsdp")
    assert sh.spec_for("encoder/embeddings/word_embeddings/embedding", (30522, 384), mesh) == P(None, "fsdp")
    assert sh.spec_for("encoder/embeddings/word_embeddings/embedding", (99, 30), mesh) == P()
    assert sh.spec_for(f"{layer}/attention/self/query/kernel", (30, 30), mesh) == P()
    assert sh.spec_for("decoder/lm_head/bias", (30522,), mesh) == P()
    assert sh.spec_for("anything/else", (8, 8), mesh) == P()
    custom = ((r"query/kernel$", (None, "fsdp")),)
    assert sh.spec_for(f"{layer}/attention/self/query/kernel", (384, 384), mesh, custom) == P(None, "fsdp")
    assert sh.spec_for("encoder/embeddings/word_embeddings/embedding", (8, 8), _mesh_of(8, 1)) == P()


SHARDED_RUN = textwrap.dedent("""
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np
    from bertgen_jax import BertGenerationConfig, EncoderDecoderConfig, EncoderDecoderModel
    from bertgen_jax.training import (OptimizerConfig, create_train_state, make_optimizer, make_train_step,
                                      sharding as sh)

    assert len(jax.devices()) == 8, jax.devices()
    enc = BertGenerationConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=40, max_position_embeddings=32, pad_token_id=0,
                               hidden_dropout_prob=0.0)  # dropout on attention only: fewer sites to compile
    dec = enc.copy(is_decoder=True, add_cross_attention=True)
    model = EncoderDecoderModel.from_config(
        EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec, decoder_start_token_id=2, pad_token_id=0), seed=1)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2, weight_decay=0.01, warmup_steps=1,
                                               total_steps=5, max_grad_norm=1.0), model.params)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):  # [accum=2, batch=8, length], with padding
        ids = rng.integers(3, 96, (2, 8, 12)).astype(np.int32)
        mask = (np.arange(12) < rng.integers(4, 13, (2, 8, 1))).astype(np.int32)
        labels = np.where(np.arange(10) < rng.integers(3, 11, (2, 8, 1)), rng.integers(3, 96, (2, 8, 10)), -100)
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "labels": labels.astype(np.int32)})

    def run(mesh):
        state = create_train_state(model.params, optimizer, seed=7)
        shardings = sh.state_shardings(jax.eval_shape(lambda: state), optimizer, mesh)
        state = sh.place(state, shardings)
        step = make_train_step(model, optimizer, state_sharding=shardings,
                               batch_sharding=sh.batch_sharding(mesh))  # dropout on
        losses = []
        for batch in batches:
            state, metrics = step(state, sh.shard_batch(batch, sh.batch_sharding(mesh)))
            losses.append(float(metrics["loss"]))
        sharded = sum(x.addressable_shards[0].data.shape != x.shape for x in jax.tree_util.tree_leaves(state))
        params = {"/".join(map(str, p)): np.asarray(v).tolist()
                  for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}
        return {"losses": losses, "sharded_leaves": sharded, "params": params}

    results = {"single": run(sh.make_mesh(1, 1, devices=jax.devices()[:1])), "2x4": run(sh.make_mesh(2, 4))}
    print("RESULT" + json.dumps(results))
""")


def test_sharded_training_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED_RUN], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT", 1)[1])
    single = results.pop("single")
    assert single["sharded_leaves"] == 0
    assert single["losses"][-1] < single["losses"][0]  # the steps do something
    for name, run in results.items():
        assert run["sharded_leaves"] > 20, name  # kernels, embeddings and their Adam moments are split
        np.testing.assert_allclose(run["losses"], single["losses"], rtol=1e-5, err_msg=name)
        # Adam divides each gradient by its own running RMS, so a gradient that is zero up to rounding (the
        # attention key biases: softmax ignores them) or nearly cancels in a sum over the batch (reduced
        # per shard, in another order) gives an update that differs by a fraction of a step, not by a
        # rounding error: 2e-6 on one embedding weight and 5e-7 on key biases here. The bound is 1e-3 of one
        # Adam step (lr 1e-2); a sharding mistake moves weights by whole steps.
        for key, value in single["params"].items():
            np.testing.assert_allclose(run["params"][key], value, rtol=1e-4, atol=1e-5, err_msg=f"{name} {key}")
