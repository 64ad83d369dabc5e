"""Activations named as transformers' `ACT2FN` names them (transformers 4.56.2, `activations.py`).

Each entry is a pure function of `x`; `prelu` and `xielu` carry learnable parameters in PyTorch
(`intermediate.intermediate_act_fn.*`), so they are linen modules with the same parameter names.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _gelu_exact(x):
    # transformers' "gelu" is torch's erf GELU; JAX's default is the tanh approximation.
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3.0))))


def _gelu_fast(x):
    return 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _laplace(x, mu=0.707107, sigma=0.282095):
    return 0.5 * (1.0 + jax.scipy.special.erf((x - mu) / (sigma * math.sqrt(2.0))))


ACTIVATIONS = {
    "gelu": _gelu_exact,
    "gelu_python": _gelu_exact,
    "gelu_10": lambda x: jnp.clip(_gelu_exact(x), -10.0, 10.0),
    "gelu_new": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": _gelu_fast,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "laplace": _laplace,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "linear": lambda x: x,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

# Activations whose PyTorch module owns parameters.
PARAMETRIC_ACTIVATIONS = ("prelu", "xielu")
SUPPORTED_ACTIVATIONS = tuple(sorted(ACTIVATIONS)) + PARAMETRIC_ACTIVATIONS


class PReLU(nn.Module):
    """torch.nn.PReLU() with one shared slope (`weight` [1], initialised to 0.25)."""

    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.constant(0.25), (1,), self.param_dtype)
        weight = weight.astype(x.dtype)
        return jnp.where(x >= 0, x, weight * x)


class XIELU(nn.Module):
    """transformers' XIELUActivation (python path): alpha_p, alpha_n parameters, beta/eps buffers."""

    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        def softplus_inverse(value):
            return math.log(math.expm1(value))

        alpha_p = self.param("alpha_p", nn.initializers.constant(softplus_inverse(0.8)), (1,), self.param_dtype)
        alpha_n = self.param("alpha_n", nn.initializers.constant(softplus_inverse(0.8 - 0.5)), (1,), self.param_dtype)
        beta = self.param("beta", nn.initializers.constant(0.5), (), self.param_dtype)
        eps = self.param("eps", nn.initializers.constant(-1e-6), (), self.param_dtype)
        # transformers keeps these in bfloat16 and takes softplus there. Round the same way, with
        # reduce_precision because XLA may skip bf16 round trips under jit (excess precision).
        def bf16(value):
            return jax.lax.reduce_precision(value.astype(jnp.float32), exponent_bits=8, mantissa_bits=7)

        beta = bf16(beta)
        alpha_p = bf16(jax.nn.softplus(bf16(alpha_p))).astype(x.dtype)
        alpha_n = bf16(beta + bf16(jax.nn.softplus(bf16(alpha_n)))).astype(x.dtype)
        eps = bf16(eps).astype(x.dtype)
        beta = beta.astype(x.dtype)
        return jnp.where(
            x > 0,
            alpha_p * x * x + beta * x,
            (jnp.expm1(jnp.minimum(x, eps)) - x) * alpha_n + beta * x,
        )


def validate_activation(name: str) -> None:
    if name not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={name!r} is not supported; expected one of {', '.join(SUPPORTED_ACTIVATIONS)}"
        )
