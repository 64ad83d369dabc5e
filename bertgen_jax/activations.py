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
        alpha_p = jax.nn.softplus(alpha_p.astype(x.dtype))
        alpha_n = beta.astype(x.dtype) + jax.nn.softplus(alpha_n.astype(x.dtype))
        beta = beta.astype(x.dtype)
        return jnp.where(
            x > 0,
            alpha_p * x * x + beta * x,
            (jnp.expm1(jnp.minimum(x, eps.astype(x.dtype))) - x) * alpha_n + beta * x,
        )


def validate_activation(name: str) -> None:
    if name not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={name!r} is not supported; expected one of {', '.join(SUPPORTED_ACTIVATIONS)}"
        )
