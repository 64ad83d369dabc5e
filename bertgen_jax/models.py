"""User-facing models: BertGenerationEncoder, BertGenerationDecoder, EncoderDecoderModel.

Each wraps a linen module (`.module`), a plain params dict (`.params`) and a config (`.config`).
Calls validate inputs on the host (a JAX gather clamps out-of-range ids silently), then run a
jit-compiled apply, compiled once per set of static flags and input shapes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from converters import checkpoint_io
from converters.layouts import decoder_layout, encoder_decoder_layout, encoder_layout, expand_tied_encoder
from converters.mapping import ConversionReport, flatten, load_into_tree, tree_to_state_dict, unflatten

from .config import CONFIG_NAME, BertGenerationConfig, EncoderDecoderConfig, read_config_json
from .flax_format import FLAX_WEIGHTS_NAME, load_flax_params
from .generation_api import (GENERATION_CONFIG_NAME, decoder_generate, encoder_decoder_generate,
                             read_generation_config)
from .hub import resolve_model_dir
from .modules import BertGenerationModule, DecoderModule, EncoderDecoderModule

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- outputs
@flax.struct.dataclass
class EncoderOutput:
    last_hidden_state: Any
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


@flax.struct.dataclass
class CausalLMOutput:
    logits: Any
    loss: Any = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    cache: Any = None


@flax.struct.dataclass
class Seq2SeqLMOutput:
    logits: Any
    loss: Any = None
    encoder_last_hidden_state: Any = None
    encoder_hidden_states: Optional[tuple] = None
    encoder_attentions: Optional[tuple] = None
    decoder_hidden_states: Optional[tuple] = None
    decoder_attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None


# ----------------------------------------------------------------------------- host-side checks
def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_token_ids(ids, name: str, vocab_size: int, max_positions: Optional[int] = None,
                    allow_ignore_index: bool = False):
    """Validate an id matrix [B, T] on the host; returns it as an int32 array."""
    if ids is None:
        return None
    if _is_traced(ids):
        if ids.ndim != 2:
            raise ValueError(f"{name} must be 2-D [batch, length], got shape {tuple(ids.shape)}")
        return ids
    array = np.asarray(ids)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, length], got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {array.dtype}")
    if array.shape[1] == 0:
        raise ValueError(f"{name} is empty (length 0)")
    if max_positions is not None and array.shape[1] > max_positions:
        raise ValueError(f"{name} has length {array.shape[1]}, longer than max_position_embeddings={max_positions}")
    valid = (array >= 0) & (array < vocab_size)
    if allow_ignore_index:
        valid |= array == IGNORE_INDEX
    if not valid.all():
        bad = array[~valid]
        raise ValueError(
            f"{name} holds token id {int(bad.flat[0])} outside [0, {vocab_size}) (vocab_size={vocab_size})"
            + (f"; only {IGNORE_INDEX} may be used to ignore positions" if allow_ignore_index else "")
        )
    return jnp.asarray(array, jnp.int32)


def check_mask(mask, name: str, like_shape, *, allow_3d: bool = False):
    if mask is None:
        return None
    shape = tuple(mask.shape)
    if len(shape) == 3 and allow_3d:
        if shape[0] != like_shape[0] or shape[1] != like_shape[1]:
            raise ValueError(f"{name} has shape {shape}; expected [{like_shape[0]}, {like_shape[1]}, keys]")
    elif shape != tuple(like_shape):
        raise ValueError(f"{name} has shape {shape}, which does not match the ids' shape {tuple(like_shape)}")
    return mask if _is_traced(mask) else jnp.asarray(np.asarray(mask), jnp.int32)


def check_positions(position_ids, input_shape, max_positions: int, name: str = "position_ids"):
    if position_ids is None:
        return None
    if _is_traced(position_ids):
        return position_ids
    array = np.asarray(position_ids)
    if array.ndim == 1:
        array = array[None, :]
    if array.shape[-1] != input_shape[1] or array.shape[0] not in (1, input_shape[0]):
        raise ValueError(f"{name} has shape {array.shape}; expected [1 or {input_shape[0]}, {input_shape[1]}]")
    if array.size and (array.min() < 0 or array.max() >= max_positions):
        raise ValueError(f"{name} holds position {int(array.max() if array.max() >= max_positions else array.min())}"
                         f" outside [0, {max_positions}) (max_position_embeddings)")
    return jnp.asarray(array, jnp.int32)


# ----------------------------------------------------------------------------- losses
def cross_entropy(logits, labels):
    """Mean token cross-entropy over labels != -100 (torch CrossEntropyLoss(ignore_index=-100)).

    Computed in float32; with every label ignored the result is NaN, as in torch.
    """
    logits = logits.astype(jnp.float32)
    valid = labels != IGNORE_INDEX
    safe = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)


def causal_lm_loss(logits, labels):
    """transformers' ForCausalLMLoss: position t predicts label t+1."""
    return cross_entropy(logits[:, :-1], labels[:, 1:])


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
    """transformers' shift_tokens_right: prepend the start token, replace -100 by pad."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id must be set to build decoder_input_ids from labels")
    if pad_token_id is None:
        raise ValueError("config.pad_token_id must be set to build decoder_input_ids from labels")
    shifted = jnp.concatenate([jnp.full((labels.shape[0], 1), decoder_start_token_id, labels.dtype), labels[:, :-1]],
                              axis=1)
    return jnp.where(shifted == IGNORE_INDEX, pad_token_id, shifted)


# ----------------------------------------------------------------------------- decoding steps
def _decoder_step(module, module_params, params, token_ids, cache):
    """One cached step of a decoder-only model. Absolute positions follow transformers' generate:
    cumsum(attention_mask) - 1 (1 on padding), so left-padded prompts get the same positions."""
    index = cache["index"]
    positions = jnp.cumsum(cache["mask"], axis=1) - 1
    position = jnp.where(cache["mask"][:, index] > 0, positions[:, index], 1)
    out = module.apply({"params": module_params(params)}, token_ids, position_ids=position[:, None].astype(jnp.int32),
                       cache=cache)
    return out["logits"][:, -1, :], out["cache"]


def _encoder_decoder_step(module, module_params, params, token_ids, cache):
    out = module.apply({"params": module_params(params)}, token_ids, cache=cache, method=EncoderDecoderModule.decode)
    return out["logits"][:, -1, :], out["cache"]


# ----------------------------------------------------------------------------- base
def _dropout_rngs(deterministic, dropout_rng):
    if deterministic:
        return {}
    if dropout_rng is None:
        raise ValueError("deterministic=False needs dropout_rng (a jax.random key) for dropout")
    return {"dropout": dropout_rng}


def _has_only_flax_weights(directory) -> bool:
    if not os.path.isfile(os.path.join(directory, FLAX_WEIGHTS_NAME)):
        return False
    try:
        checkpoint_io.find_weights_files(directory)
    except FileNotFoundError:
        return True
    return False


def _resolve_dir(path_or_repo_id, revision, cache_dir, local_files_only):
    return resolve_model_dir(path_or_repo_id, revision=revision, cache_dir=cache_dir,
                             local_files_only=local_files_only)


class _FlaxModel:
    """Shared plumbing: config, module, params, jit cache, from_pretrained / save_pretrained."""

    def __init__(self, config, params=None, *, dtype=jnp.float32, param_dtype=None, seed: int = 0):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype or jnp.float32)
        self.module = self._make_module()
        self._compiled: dict = {}
        self.generation_config: dict = {}
        self.params = params if params is not None else self.init_params(seed)

    # --- subclasses provide
    def _make_module(self):
        raise NotImplementedError

    def _init_args(self):
        raise NotImplementedError

    def _layout(self, state_dict, report):
        raise NotImplementedError

    def _export_tree(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # --- params
    quantization = None  # a QuantizationConfig when the stored kernels are int8/int4 (see quantization.py)

    def _module_params(self, params):
        """The tree the linen module sees, built inside the jitted function: quantized kernels are
        dequantized here (so only the small integers are stored), tied weights expanded."""
        if self.quantization is not None:
            from .quantization import dequantize_tree

            # Dense kernels stay quantized: QuantDense dequantizes each at its call, so the while_loop
            # of generate never holds float copies of all kernels at once.
            params = dequantize_tree(params, self.dtype, keep_kernels=True)
        return params

    def param_shapes(self) -> dict:
        """The params tree as jax.ShapeDtypeStruct leaves (no memory allocated)."""
        shapes = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), *self._init_args())["params"])
        return self._strip_tied(shapes)

    def _strip_tied(self, tree):
        return tree

    def init_params(self, seed: int = 0) -> dict:
        """Random init as transformers does: normal(0, initializer_range), zero biases, LayerNorm ones,
        and the word-embedding row of `pad_token_id` zeroed."""
        params = jax.jit(lambda key: self.module.init(key, *self._init_args())["params"])(jax.random.PRNGKey(seed))
        params = jax.tree_util.tree_map(lambda x: x, flax.core.unfreeze(params))
        return self._strip_tied(self._zero_padding_rows(params))

    def _zero_padding_rows(self, params):
        flat = flatten(params)
        for path, value in flat.items():
            if path[-2:] == ("word_embeddings", "embedding"):
                pad = self._pad_id_for(path)
                if pad is not None and 0 <= pad < value.shape[0]:
                    flat[path] = value.at[pad].set(0)
        return unflatten(flat)

    def _pad_id_for(self, path):
        return self.config.pad_token_id

    @property
    def num_parameters(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.params)))

    # --- compiled apply
    def _compiled_fn(self, name: str, **static):
        key = (name, tuple(sorted(static.items())))
        if key not in self._compiled:
            self._compiled[key] = jax.jit(functools.partial(getattr(self, name), **static))
        return self._compiled[key]

    # --- loading
    @classmethod
    def from_config(cls, config, *, seed: int = 0, dtype=jnp.float32, param_dtype=None):
        return cls(config, None, dtype=dtype, param_dtype=param_dtype, seed=seed)

    @classmethod
    def _read_config(cls, directory, overrides):
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path_or_repo_id, *, dtype=jnp.float32, param_dtype=None, quantization=None,
                        revision=None, local_files_only=False, cache_dir=None, config=None, seed: int = 0,
                        **config_overrides):
        """Load a checkpoint written by transformers' or this project's `save_pretrained`, or a hub repo id."""
        from . import quantization as quant

        if quantization is not None:
            quantization = quant.QuantizationConfig.coerce(quantization)  # bad values fail before loading
        directory = _resolve_dir(path_or_repo_id, revision, cache_dir, local_files_only)
        if config is None:
            config = cls._read_config(directory, config_overrides)
        elif config_overrides:
            config = config.copy(**config_overrides)
        saved_quantization = quant.saved_quantization(directory)
        if saved_quantization is not None:  # written by save_pretrained of a quantized model
            model = quant.load_quantized(cls, directory, config, saved_quantization, dtype=dtype,
                                         param_dtype=param_dtype, requested=quantization)
        else:
            # To be quantized: load the float weights into host memory, so only the integers reach the device.
            with quant.host_device() if quantization is not None else contextlib.nullcontext():
                if _has_only_flax_weights(directory):
                    model = cls.from_flax_file(os.path.join(directory, FLAX_WEIGHTS_NAME), config, dtype=dtype,
                                               param_dtype=param_dtype)
                else:
                    state_dict = checkpoint_io.load_state_dict(directory)
                    model = cls.from_state_dict(state_dict, config, dtype=dtype, param_dtype=param_dtype, seed=seed,
                                                source=str(path_or_repo_id))
                    del state_dict  # freed before the trim below
            if quantization is not None:
                model = quant.quantize_model(model, quantization)
        checkpoint_io.release_freed_host_memory()
        model.generation_config = read_generation_config(directory)
        return model

    @classmethod
    def from_flax_file(cls, path, config, *, dtype=jnp.float32, param_dtype=None):
        """Build the model from this project's flax_model.msgpack."""
        model = cls(config, {}, dtype=dtype, param_dtype=param_dtype)
        model.params = jax.tree_util.tree_map(jnp.asarray, load_flax_params(path, model.param_shapes()))
        return model

    @classmethod
    def from_state_dict(cls, state_dict, config, *, dtype=jnp.float32, param_dtype=None, seed: int = 0,
                        source: str = "state_dict"):
        """Build the model from a PyTorch-layout {name: array} dict (see `converters`)."""
        model = cls.__new__(cls)
        model.config = config
        model.dtype = jnp.dtype(dtype)
        model.param_dtype = jnp.dtype(param_dtype or jnp.float32)
        model.module = model._make_module()
        model._compiled = {}
        model.generation_config = {}
        report = ConversionReport()
        layout_sd, may_initialize = model._layout(state_dict, report)
        params, report = load_into_tree(layout_sd, model.param_shapes(), source=source,
                                        may_initialize=may_initialize,
                                        initializer_range=model._initializer_range(), seed=seed, report=report,
                                        finalize=jnp.asarray)
        if report.initialized:
            logger.warning("%s: some weights were not in the checkpoint and are newly initialised: %s",
                           source, ", ".join(report.initialized[:6]) + (" ..." if len(report.initialized) > 6 else ""))
        model.conversion_report = report
        model.params = jax.tree_util.tree_map(jnp.asarray, params)
        return model

    def _initializer_range(self):
        return self.config.initializer_range

    # --- saving
    def state_dict(self) -> dict[str, np.ndarray]:
        """PyTorch-layout state dict (names as transformers saves them; a quantized model gives its
        integers and scales, see quantization.py)."""
        if self.quantization is not None:
            from .quantization import quantized_state_dict

            return quantized_state_dict(self)
        return self._export_tree()

    def save_pretrained(self, directory: str, *, max_shard_size=None) -> None:
        """Write config.json and model.safetensors (transformers layout, loadable by transformers)."""
        os.makedirs(directory, exist_ok=True)
        config, metadata = self._config_for_save(), None
        if self.quantization is not None:  # this project's int8/int4 format, see quantization.py
            config = config.copy(quantization_config=self.quantization.to_dict())
            metadata = {"format": self.quantization.SAFETENSORS_FORMAT}  # transformers refuses this format
        checkpoint_io.save_state_dict(self.state_dict(), directory, max_shard_size=max_shard_size, metadata=metadata)
        config.save_pretrained(directory)
        if self.generation_config:
            checkpoint_io.atomic_write_text(os.path.join(directory, GENERATION_CONFIG_NAME),
                                            json.dumps(self.generation_config, indent=2, sort_keys=True) + "\n")

    # --- generation plumbing: one stable step function per module, so compiled loops are reused
    @property
    def tokens_to_logits(self):
        cached = self.__dict__.get("_step_fn")
        if cached is None or cached[0] is not self.module:
            cached = (self.module, functools.partial(self._step_function(), self.module, self._module_params))
            self.__dict__["_step_fn"] = cached
        return cached[1]

    def _step_function(self):
        raise NotImplementedError

    def _config_for_save(self):
        return self.config


def _architectures(config, name):
    return config.copy(architectures=[name])


# ----------------------------------------------------------------------------- encoder
class BertGenerationEncoder(_FlaxModel):
    """transformers' BertGenerationEncoder: the bidirectional BertGeneration stack."""

    def _make_module(self):
        return BertGenerationModule(self.config, self.dtype, self.param_dtype)

    def _init_args(self):
        return (jnp.ones((1, 1), jnp.int32),)

    @classmethod
    def _read_config(cls, directory, overrides):
        values = read_config_json(os.path.join(directory, CONFIG_NAME))
        return BertGenerationConfig.from_dict(values, **overrides)

    def _layout(self, state_dict, report):
        return encoder_layout(state_dict, self.config, report)

    def _export_tree(self):
        return tree_to_state_dict(self.params)

    def _config_for_save(self):
        return _architectures(self.config, "BertGenerationEncoder")

    def _forward(self, params, input_ids, attention_mask, position_ids, head_mask, dropout_rng, *,
                 deterministic, output_hidden_states, output_attentions):
        out = self.module.apply({"params": self._module_params(params)}, input_ids, attention_mask, position_ids,
                                head_mask=head_mask,
                                deterministic=deterministic, output_hidden_states=output_hidden_states,
                                output_attentions=output_attentions, rngs=_dropout_rngs(deterministic, dropout_rng))
        return EncoderOutput(out["last_hidden_state"], out["hidden_states"], out["attentions"])

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, params=None, head_mask=None,
                 output_hidden_states=False, output_attentions=False, deterministic=True, dropout_rng=None):
        c = self.config
        input_ids = check_token_ids(input_ids, "input_ids", c.vocab_size, c.max_input_length)
        attention_mask = check_mask(attention_mask, "attention_mask", input_ids.shape, allow_3d=True)
        position_ids = check_positions(position_ids, input_ids.shape, c.max_position_embeddings)
        _dropout_rngs(deterministic, dropout_rng)
        fn = self._compiled_fn("_forward", deterministic=deterministic, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
        return fn(self.params if params is None else params, input_ids, attention_mask, position_ids, head_mask,
                  dropout_rng)


# ----------------------------------------------------------------------------- decoder
class BertGenerationDecoder(_FlaxModel):
    """transformers' BertGenerationDecoder: BertGeneration stack + LM head (causal when is_decoder)."""

    def _make_module(self):
        return DecoderModule(self.config, self.dtype, self.param_dtype)

    def _init_args(self):
        c = self.config
        states = jnp.ones((1, 1, c.hidden_size), self.dtype) if c.add_cross_attention else None
        return (jnp.ones((1, 1), jnp.int32), None, None, states)

    @classmethod
    def _read_config(cls, directory, overrides):
        values = read_config_json(os.path.join(directory, CONFIG_NAME))
        return BertGenerationConfig.from_dict(values, **overrides)

    def _layout(self, state_dict, report):
        return decoder_layout(state_dict, self.config, report)

    def _export_tree(self):
        return tree_to_state_dict(self.params)

    def _config_for_save(self):
        return _architectures(self.config, "BertGenerationDecoder")

    def _forward(self, params, input_ids, attention_mask, position_ids, encoder_hidden_states,
                 encoder_attention_mask, labels, head_mask, cache, dropout_rng, *, deterministic,
                 output_hidden_states, output_attentions):
        out = self.module.apply({"params": self._module_params(params)}, input_ids, attention_mask, position_ids,
                                encoder_hidden_states,
                                encoder_attention_mask, head_mask, cache, deterministic, output_hidden_states,
                                output_attentions, rngs=_dropout_rngs(deterministic, dropout_rng))
        loss = None if labels is None else causal_lm_loss(out["logits"], labels)
        return CausalLMOutput(out["logits"], loss, out["hidden_states"], out["attentions"], out["cross_attentions"],
                              out["cache"])

    def __call__(self, input_ids, attention_mask=None, position_ids=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, labels=None, *, params=None, head_mask=None, cache=None,
                 output_hidden_states=False, output_attentions=False, deterministic=True, dropout_rng=None):
        """Logits [B, T, V] (and `.loss` with labels). With `cache` (from `init_cache`), `input_ids`
        are the next tokens at `cache["index"]` and `.cache` is the updated cache."""
        c = self.config
        input_ids = check_token_ids(input_ids, "input_ids", c.vocab_size, c.max_input_length)
        if cache is None:
            attention_mask = check_mask(attention_mask, "attention_mask", input_ids.shape, allow_3d=True)
        labels = check_token_ids(labels, "labels", c.vocab_size, allow_ignore_index=True)
        if labels is not None and tuple(labels.shape) != tuple(input_ids.shape):
            raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(input_ids.shape)}")
        position_ids = check_positions(position_ids, input_ids.shape, c.max_position_embeddings)
        if encoder_hidden_states is not None:
            encoder_hidden_states = jnp.asarray(encoder_hidden_states)
            if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != input_ids.shape[0]:
                raise ValueError(f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}; "
                                 f"expected [{input_ids.shape[0]}, source_length, hidden]")
            encoder_attention_mask = check_mask(encoder_attention_mask, "encoder_attention_mask",
                                                encoder_hidden_states.shape[:2])
        if cache is not None and not _is_traced(cache["index"]):
            end = int(cache["index"]) + input_ids.shape[1]
            capacity = cache["self"][0]["key"].shape[2]
            if end > capacity:
                raise ValueError(f"cache holds {capacity} positions; writing {input_ids.shape[1]} token(s) at index "
                                 f"{int(cache['index'])} overflows it")
        fn = self._compiled_fn("_forward", deterministic=deterministic, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
        _dropout_rngs(deterministic, dropout_rng)
        return fn(self.params if params is None else params, input_ids, attention_mask, position_ids,
                  encoder_hidden_states, encoder_attention_mask, labels, head_mask, cache, dropout_rng)

    def _step_function(self):
        return _decoder_step

    def _generation_cache(self, params, attention_mask, *, max_length):
        return self.module.apply({"params": self._module_params(params)}, attention_mask.shape[0], max_length, None,
                                 None, attention_mask,
                                 method=DecoderModule.init_cache)

    def generate(self, input_ids, attention_mask=None, *, params=None, prng_key=None, **kwargs):
        """Continue the prompts `input_ids` [B, P] (transformers' `generate` semantics; see API.md).

        Returns `.sequences` [B * num_return_sequences, L] (prompt first, pad after EOS) and, for beam
        search, `.sequences_scores`. The decode is one compiled `lax.while_loop`.
        """
        return decoder_generate(self, input_ids, attention_mask, params=params, prng_key=prng_key, **kwargs)

    def init_cache(self, batch_size: int, max_length: int, encoder_hidden_states=None, encoder_attention_mask=None,
                   attention_mask=None, *, params=None):
        """A fixed-size decoding cache (self-attention K/V for `max_length` positions; cross-attention
        K/V of `encoder_hidden_states` computed once)."""
        if max_length > self.config.max_input_length:
            raise ValueError(f"max_length={max_length} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        return self.module.apply({"params": self._module_params(self.params if params is None else params)},
                                 batch_size, max_length,
                                 encoder_hidden_states, encoder_attention_mask, attention_mask,
                                 method=DecoderModule.init_cache)


# ----------------------------------------------------------------------------- encoder-decoder
class EncoderDecoderModel(_FlaxModel):
    """transformers' EncoderDecoderModel over BertGeneration encoder and decoder (bert2bert, roberta2roberta).

    With `config.tie_encoder_decoder` the params tree has no `encoder` entry: the encoder runs on the
    decoder's `bert` weights (as transformers ties them), so gradients reach one shared copy.
    """

    def __init__(self, config: Optional[EncoderDecoderConfig] = None, params=None, *, encoder=None, decoder=None,
                 dtype=None, param_dtype=None, seed: int = 0):
        if encoder is not None or decoder is not None:
            if encoder is None or decoder is None or config is not None:
                raise ValueError("pass both encoder= and decoder= models (and no config) to combine them")
            config = EncoderDecoderConfig.from_encoder_decoder_configs(
                encoder.config, decoder.config, decoder_start_token_id=decoder.config.decoder_start_token_id,
                pad_token_id=decoder.config.pad_token_id)
            dtype = dtype or decoder.dtype
            param_dtype = param_dtype or decoder.param_dtype
            dec_params = decoder.params
            if not decoder.config.add_cross_attention:
                raise ValueError("the decoder needs add_cross_attention=True and is_decoder=True to be combined")
            params = {"encoder": encoder.params, "decoder": dec_params}
            if config.needs_enc_to_dec_proj:
                shapes = EncoderDecoderModel(config, {}, dtype=dtype, param_dtype=param_dtype).param_shapes()
                rng = np.random.default_rng(seed)
                proj = shapes["enc_to_dec_proj"]
                params["enc_to_dec_proj"] = {
                    "kernel": jnp.asarray(rng.standard_normal(proj["kernel"].shape) * config.decoder.initializer_range,
                                          proj["kernel"].dtype),
                    "bias": jnp.zeros(proj["bias"].shape, proj["bias"].dtype)}
        if config is None:
            raise ValueError("EncoderDecoderModel needs a config or encoder= and decoder= models")
        super().__init__(config, params, dtype=dtype or jnp.float32,
                         param_dtype=param_dtype, seed=seed)

    def _make_module(self):
        c = self.config
        return EncoderDecoderModule(c.encoder, c.decoder, c.needs_enc_to_dec_proj, self.dtype, self.param_dtype)

    def _init_args(self):
        ids = jnp.ones((1, 1), jnp.int32)
        return (ids, None, ids)

    def _strip_tied(self, tree):
        if self.config.tie_encoder_decoder:
            out = {k: v for k, v in tree.items() if k != "encoder"}
            untied = {k: v for k, v in tree.get("encoder", {}).items() if k not in ("embeddings", "encoder")}
            if untied:  # BertModel's pooler: the decoder has none to share
                out["encoder"] = untied
            return out
        return tree

    def _pad_id_for(self, path):
        return (self.config.encoder if path[0] == "encoder" else self.config.decoder).pad_token_id

    def _initializer_range(self):
        return self.config.decoder.initializer_range

    def _module_params(self, params):
        params = super()._module_params(params)
        return expand_tied_encoder(params) if self.config.tie_encoder_decoder else params

    @classmethod
    def _read_config(cls, directory, overrides):
        values = read_config_json(os.path.join(directory, CONFIG_NAME))
        return EncoderDecoderConfig.from_dict(values, **overrides)

    def _layout(self, state_dict, report):
        return encoder_decoder_layout(state_dict, self.config, report)

    def _export_tree(self):
        return tree_to_state_dict(self._module_params(self.params))

    def _config_for_save(self):
        return self.config.copy(architectures=["EncoderDecoderModel"])

    # --- forward pieces
    def _apply(self, params, *args, method=None, deterministic=True, dropout_rng=None, **kwargs):
        return self.module.apply({"params": self._module_params(params)}, *args, method=method,
                                 rngs=_dropout_rngs(deterministic, dropout_rng), **kwargs)

    def _forward(self, params, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels,
                 head_mask, decoder_head_mask, dropout_rng, *, deterministic, output_hidden_states,
                 output_attentions):
        c = self.config
        if decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(labels, c.pad_token_id, c.decoder_start_token_id)
            if decoder_attention_mask is None:
                decoder_attention_mask = (decoder_input_ids != c.pad_token_id).astype(jnp.int32)
        encoded, decoded = self._apply(params, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                                       None, None, head_mask, decoder_head_mask, deterministic, output_hidden_states,
                                       output_attentions, deterministic=deterministic, dropout_rng=dropout_rng)
        loss = None if labels is None else cross_entropy(decoded["logits"], labels)
        return Seq2SeqLMOutput(
            logits=decoded["logits"], loss=loss, encoder_last_hidden_state=encoded["last_hidden_state"],
            encoder_hidden_states=encoded["hidden_states"], encoder_attentions=encoded["attentions"],
            decoder_hidden_states=decoded["hidden_states"], decoder_attentions=decoded["attentions"],
            cross_attentions=decoded["cross_attentions"])

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 labels=None, *, params=None, head_mask=None, decoder_head_mask=None, output_hidden_states=False,
                 output_attentions=False, deterministic=True, dropout_rng=None):
        """Seq2seq forward: `.logits` [B, T, V]; `.loss` with labels (shifted right with
        decoder_start_token_id to make decoder_input_ids when those are not given; -100 ignored)."""
        enc, dec = self.config.encoder, self.config.decoder
        input_ids = check_token_ids(input_ids, "input_ids", enc.vocab_size, enc.max_input_length)
        attention_mask = check_mask(attention_mask, "attention_mask", input_ids.shape)
        labels = check_token_ids(labels, "labels", dec.vocab_size, dec.max_input_length, allow_ignore_index=True)
        decoder_input_ids = check_token_ids(decoder_input_ids, "decoder_input_ids", dec.vocab_size,
                                            dec.max_input_length)
        if decoder_input_ids is None and labels is None:
            raise ValueError("pass decoder_input_ids or labels (decoder_input_ids are then labels shifted right)")
        if decoder_input_ids is None:
            shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)  # checks ids
        ref_shape = (decoder_input_ids if decoder_input_ids is not None else labels).shape
        if labels is not None and tuple(labels.shape) != tuple(ref_shape):
            raise ValueError(f"labels has shape {tuple(labels.shape)}, decoder_input_ids has {tuple(ref_shape)}")
        decoder_attention_mask = check_mask(decoder_attention_mask, "decoder_attention_mask", ref_shape, allow_3d=True)
        _dropout_rngs(deterministic, dropout_rng)
        fn = self._compiled_fn("_forward", deterministic=deterministic, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
        return fn(self.params if params is None else params, input_ids, attention_mask, decoder_input_ids,
                  decoder_attention_mask, labels, head_mask, decoder_head_mask, dropout_rng)

    def encode(self, input_ids, attention_mask=None, *, params=None):
        """Encoder output (`last_hidden_state` [B, S, H_enc])."""
        enc = self.config.encoder
        input_ids = check_token_ids(input_ids, "input_ids", enc.vocab_size, enc.max_input_length)
        attention_mask = check_mask(attention_mask, "attention_mask", input_ids.shape)
        fn = self._compiled_fn("_encode")
        return fn(self.params if params is None else params, input_ids, attention_mask)

    def _encode(self, params, input_ids, attention_mask):
        out = self._apply(params, input_ids, attention_mask, method=EncoderDecoderModule.encode)
        return EncoderOutput(out["last_hidden_state"])

    def _step_function(self):
        return _encoder_decoder_step

    def _generation_cache(self, params, input_ids, attention_mask, *, max_length):
        # The encoder runs once; cross-attention keys/values are computed once, into the cache.
        states = self._apply(params, input_ids, attention_mask, method=EncoderDecoderModule.encode)["last_hidden_state"]
        return self._apply(params, input_ids.shape[0], max_length, states, attention_mask,
                           method=EncoderDecoderModule.init_cache)

    def generate(self, input_ids, attention_mask=None, *, params=None, prng_key=None, **kwargs):
        """Generate from `input_ids` [B, S] with transformers' `generate` semantics (API.md lists the
        options; defaults come from generation_config.json or the config).

        Returns `.sequences` int32 [B * num_return_sequences, L] starting with the decoder start token,
        padded with pad_token_id after EOS, and `.sequences_scores` for beam search.
        """
        return encoder_decoder_generate(self, input_ids, attention_mask, params=params, prng_key=prng_key, **kwargs)

    def init_cache(self, batch_size, max_length, encoder_hidden_states, encoder_attention_mask=None, *, params=None):
        """Decoder cache with cross-attention K/V of `encoder_hidden_states` computed once."""
        if max_length > self.config.decoder.max_input_length:
            raise ValueError(f"max_length={max_length} exceeds the decoder's max_position_embeddings="
                             f"{self.config.decoder.max_position_embeddings}")
        return self._apply(self.params if params is None else params, batch_size, max_length, encoder_hidden_states,
                           encoder_attention_mask, method=EncoderDecoderModule.init_cache)

    def decode(self, decoder_input_ids, cache, *, params=None, output_attentions=False):
        """One cached decoder step (or several tokens): returns CausalLMOutput with `.cache`."""
        dec = self.config.decoder
        decoder_input_ids = check_token_ids(decoder_input_ids, "decoder_input_ids", dec.vocab_size,
                                            dec.max_input_length)
        fn = self._compiled_fn("_decode", output_attentions=output_attentions)
        return fn(self.params if params is None else params, decoder_input_ids, cache)

    def _decode(self, params, decoder_input_ids, cache, *, output_attentions=False):
        out = self._apply(params, decoder_input_ids, cache=cache, output_attentions=output_attentions,
                          method=EncoderDecoderModule.decode)
        return CausalLMOutput(out["logits"], None, None, out["attentions"], out["cross_attentions"], out["cache"])

    @classmethod
    def from_encoder_decoder_pretrained(cls, encoder_pretrained_model_name_or_path, decoder_pretrained_model_name_or_path,
                                        *, dtype=jnp.float32, param_dtype=None, quantization=None, seed: int = 0,
                                        **kwargs):
        """Warm-start from two checkpoints as transformers' method of the same name does: the classes
        follow each checkpoint's model_type (BERT -> BertModel + BertLMHeadModel, RoBERTa -> RobertaModel +
        RobertaForCausalLM, bert-generation -> the BertGeneration pair); the decoder gets is_decoder=True
        and add_cross_attention=True with new cross-attention (and missing LM-head) weights, listed in
        `model.conversion_report`.

        Keyword arguments prefixed `encoder_` / `decoder_` go to that side's config (`encoder_model=` /
        `decoder_model=` pass ready models, `encoder_model_class=` / `decoder_model_class=` pick classes);
        others (pad_token_id, tie_encoder_decoder) go to the top-level config. As in transformers' docs,
        special ids can be set on `model.config` afterwards; `decoder_start_token_id=` is also taken here
        as the top-level id (transformers passes it to the decoder as `start_token_id` and fails).
        `quantization` ("int8", "int4" or a QuantizationConfig) quantizes the warm-started model.
        """
        from . import quantization as quant

        if quantization is not None:
            quantization = quant.QuantizationConfig.coerce(quantization)  # bad values fail before loading
        enc_kwargs = {k[len("encoder_"):]: v for k, v in kwargs.items() if k.startswith("encoder_")}
        dec_kwargs = {k[len("decoder_"):]: v for k, v in kwargs.items()
                      if k.startswith("decoder_") and k != "decoder_start_token_id"}
        top = {k: v for k, v in kwargs.items() if not k.startswith(("encoder_", "decoder_")) or
               k == "decoder_start_token_id"}
        enc_kwargs.update(is_decoder=False, add_cross_attention=False)
        dec_kwargs.update(is_decoder=True, add_cross_attention=True)
        # As transformers' AutoModel / AutoModelForCausalLM: the checkpoints' model_type picks the classes
        # (bert -> BertModel + BertLMHeadModel, roberta -> RobertaModel + RobertaForCausalLM,
        # bert-generation -> the BertGeneration pair); `encoder_model=` / `decoder_model=` pass ready models.
        from .bert_family import auto_classes_for

        # `encoder_model_class=` / `decoder_model_class=` (not in transformers) pick the classes explicitly,
        # e.g. the BertGeneration pair for BERT checkpoints.
        encoder = enc_kwargs.pop("model", None)
        decoder = dec_kwargs.pop("model", None)
        encoder_cls, decoder_cls = enc_kwargs.pop("model_class", None), dec_kwargs.pop("model_class", None)
        if encoder is None:
            encoder_cls = encoder_cls or auto_classes_for(encoder_pretrained_model_name_or_path)[0]
            encoder = encoder_cls.from_pretrained(encoder_pretrained_model_name_or_path, dtype=dtype,
                                                  param_dtype=param_dtype, seed=seed, **enc_kwargs)
        if decoder is None:
            decoder_cls = decoder_cls or auto_classes_for(decoder_pretrained_model_name_or_path)[1]
            decoder = decoder_cls.from_pretrained(decoder_pretrained_model_name_or_path, dtype=dtype,
                                                  param_dtype=param_dtype, seed=seed + 1, **dec_kwargs)
        model = cls(encoder=encoder, decoder=decoder, seed=seed)
        model.conversion_report = _warm_start_report(encoder, decoder)
        if top:
            model.config = model.config.copy(**top)
            model.module = model._make_module()
            model._compiled = {}
            if model.config.tie_encoder_decoder:
                model.params = model._strip_tied(model.params)
        if quantization is not None:
            model = quant.quantize_model(model, quantization)
        return model


def _warm_start_report(encoder, decoder) -> ConversionReport:
    """The encoder's and decoder's conversion reports as one, in the EncoderDecoderModel's names."""
    report = ConversionReport()
    for prefix, part in (("encoder", encoder), ("decoder", decoder)):
        part_report = getattr(part, "conversion_report", None)
        if part_report is None:
            continue
        report.dropped += [(f"{prefix}.{key}", reason) for key, reason in part_report.dropped]
        report.tied += [(f"{prefix}.{a}", f"{prefix}.{b}") for a, b in part_report.tied]
        report.initialized += [f"{prefix}/{path}" for path in part_report.initialized]
    return report
