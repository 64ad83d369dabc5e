"""Dropout masks (`modules.dropout_keep_mask`): a keyed counter hash instead of XLA's RngBitGenerator.

What a dropout mask must be: each element kept with probability 1 - rate, independently of its
neighbours, of the other dropout sites and of the other steps; a function of the key (the same key
gives the same mask); kept values scaled by 1 / (1 - rate), as nn.Dropout and torch do."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgen_jax.modules import Dropout, dropout_keep_mask

SHAPE = (16, 12, 64, 64)  # an attention-probabilities shape: 786,432 draws


def _mask(seed, rate=0.1, shape=SHAPE):
    return np.asarray(jax.jit(dropout_keep_mask, static_argnums=(1, 2))(jax.random.PRNGKey(seed), shape, rate))


def _z_corr(a, b):
    """Correlation of two bool arrays, in units of its standard error under independence."""
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    return np.corrcoef(a, b)[0, 1] * np.sqrt(a.size)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9])
def test_keep_fraction_is_one_minus_rate(rate):
    for seed in range(3):
        kept = _mask(seed, rate)
        n = kept.size
        sigma = np.sqrt(rate * (1 - rate) / n)
        assert abs(kept.mean() - (1 - rate)) < 5 * sigma, (rate, seed, kept.mean())


def test_masks_are_uncorrelated_across_keys_and_positions():
    masks = [_mask(seed) for seed in range(4)]
    # Different keys (other dropout sites, other steps): independent masks.
    for i in range(4):
        for j in range(i + 1, 4):
            assert abs(_z_corr(masks[i], masks[j])) < 5
    # Nearby elements of one mask: along the last axis, the next row, the next head, the next example;
    # and the same position in the next block of 2**k elements (the counter's low bits).
    m = masks[0]
    flat = m.ravel()
    for axis in range(m.ndim):
        a = np.take(m, np.arange(m.shape[axis] - 1), axis=axis)
        b = np.take(m, np.arange(1, m.shape[axis]), axis=axis)
        assert abs(_z_corr(a, b)) < 5, axis
    for stride in (2, 4, 256, 4096, 65536):
        assert abs(_z_corr(flat[:-stride], flat[stride:])) < 5, stride
    # Each of the 4 quarters of the counter range keeps the same fraction (no drift along the array).
    for quarter in np.split(flat, 4):
        assert abs(quarter.mean() - 0.9) < 5 * np.sqrt(0.09 / quarter.size)


def test_runs_of_kept_elements_have_the_geometric_lengths_of_independent_draws():
    flat = _mask(7, rate=0.5).ravel()
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    # Independent fair draws: P(run length = L) = 2**-L.
    counts = np.bincount(runs, minlength=12)[1:11].astype(np.float64)
    expected = len(runs) * 0.5 ** np.arange(1, 11)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 30, (counts, expected)  # 9 degrees of freedom: P(chi2 > 30) ~ 4e-4


def test_the_same_key_gives_the_same_mask_and_another_key_another():
    np.testing.assert_array_equal(_mask(3), _mask(3))
    assert (_mask(3) != _mask(4)).mean() > 0.1


def test_dropout_module_scales_kept_values_and_is_off_when_deterministic():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 48)), jnp.float32)
    layer = Dropout(rate=0.25)
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
    key = jax.random.PRNGKey(5)
    y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": key}))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert 0.7 < kept.mean() < 0.8
    # The mask is the module's rng stream's: the same key, the same output.
    np.testing.assert_array_equal(y, layer.apply({}, x, deterministic=False, rngs={"dropout": key}))
    np.testing.assert_array_equal(Dropout(rate=1.0).apply({}, x, deterministic=False, rngs={"dropout": key}), 0)


SHARDED_MASK = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from bertgen_jax.modules import dropout_keep_mask
mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
key = jax.random.PRNGKey(9)
make = jax.jit(dropout_keep_mask, static_argnums=(1, 2))
whole = np.asarray(make(key, (8, 4, 16, 16), 0.2))
sharded = jax.jit(dropout_keep_mask, static_argnums=(1, 2),
                  out_shardings=NamedSharding(mesh, PartitionSpec("data", "model")))(key, (8, 4, 16, 16), 0.2)
assert len(sharded.addressable_shards) == 4
np.testing.assert_array_equal(np.asarray(sharded), whole)
print("SAME")
"""


def test_the_mask_is_the_same_whatever_the_sharding():
    """The mask is a function of the key and each element's position, so a sharded step drops the same
    elements as an unsharded one."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED_MASK], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "SAME" in proc.stdout, proc.stderr[-3000:]
