"""User-facing models: BertGenerationEncoder, BertGenerationDecoder, EncoderDecoderModel.

Each wraps a linen module (`.module`), a plain params dict (`.params`) and a config (`.config`).
Calls validate inputs on the host (a JAX gather clamps out-of-range ids silently), then run a
jit-compiled apply, compiled once per set of static flags and input shapes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from converters import checkpoint_io
from converters.layouts import decoder_layout, encoder_decoder_layout, encoder_layout, expand_tied_encoder
from converters.mapping import ConversionReport, flatten, load_into_tree, tree_to_state_dict, unflatten
from converters.checkpoint_io import release_freed_host_memory  # noqa: F401  (for training, which sees only models)
from converters.files import atomic_write_bytes, atomic_write_text  # noqa: F401  (the one atomic-write helper, for training)
from converters.quantized import qweight_hook, quantized_state_dict

from .bert_family import (BertLMHeadModule, EncoderDecoderModule, FamilyModule, RobertaForCausalLMModule,
                          first_position_id, max_sequence_length)
from .config import CONFIG_NAME, BertConfig, BertGenerationConfig, EncoderDecoderConfig, RobertaConfig, read_config_json
from .flax_format import FLAX_WEIGHTS_NAME, load_flax_params
from .generation.options import (decoder_generate, encoder_decoder_generate, read_generation_config,
                                 write_generation_config)
from .hub import resolve_model_dir
from .inputs import (IGNORE_INDEX, causal_lm_loss, check_mask, check_positions, check_token_ids,  # noqa: F401
                     cross_entropy, is_packed, is_traced, labelled_lm_loss, packed_attention_masks,
                     packed_decoder_input_ids, shift_tokens_right, token_losses)
from .modules import BertGenerationModule, DecoderModule
from .quantization import QuantizationConfig, dequantize_tree, is_quantized_leaf, quantize_params

logger = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- quantized models
def _with_params(model, params, quantization):
    """A shallow copy of `model` holding `params` (compiled functions are not shared)."""
    new = copy.copy(model)
    new.__dict__.pop("_step_fn", None)  # bound to the old model's _module_params
    new._compiled = {}
    new.params = params
    new.quantization = quantization
    return new


def quantize_model(model, config="int8"):
    """A new model whose selected kernels are int8/int4 (scales in `model.dtype`); `model` is unchanged.

    The float weights are read to the host, quantized with numpy and only the result is put on the
    default device.
    """
    config = QuantizationConfig.coerce(config)
    if getattr(model, "quantization", None) is not None:
        raise ValueError(f"this model is already quantized ({model.quantization.mode}); quantize the float model")
    host = jax.tree_util.tree_map(np.asarray, model.params)
    params = quantize_params(host, config, scale_dtype=model.dtype)
    if not any(is_quantized_leaf(v) for v in _leaf_dicts(params)):
        raise ValueError(f"quantization {config}: no weight matched include/exclude")
    return _with_params(model, jax.device_put(params), config)


def _leaf_dicts(tree):
    for value in tree.values():
        if is_quantized_leaf(value):
            yield value
        elif isinstance(value, Mapping):
            yield from _leaf_dicts(value)


def dequantize_model(model, dtype=None):
    """A float model with the dequantized weights (in `dtype`, default the model's param_dtype), for
    export to transformers (`bertgen convert`) or fine-tuning."""
    if getattr(model, "quantization", None) is None:
        return model
    dtype = jnp.dtype(dtype or model.param_dtype)
    params = jax.tree_util.tree_map(np.asarray, jax.jit(dequantize_tree, static_argnums=1)(model.params, dtype))
    return _with_params(model, jax.device_put(params), None)


def host_device():
    """Context in which freshly loaded float weights land in host memory (quantized before the device)."""
    try:
        return jax.default_device(jax.devices("cpu")[0])
    except RuntimeError:  # no CPU backend in this process
        return contextlib.nullcontext()


def saved_quantization(directory: str) -> Optional[dict]:
    """The `quantization_config` of a checkpoint directory's config.json, if it has one."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    values = read_config_json(path)
    return values.get("quantization_config") if isinstance(values, dict) else None


def load_quantized(cls, directory: str, config, saved, *, dtype=jnp.float32, param_dtype=None, requested=None):
    """Restore a model written by `save_pretrained` of a quantized model (same integers, same scales)."""
    qconfig = QuantizationConfig.from_dict(saved)
    if requested is not None and QuantizationConfig.coerce(requested) != qconfig:
        raise ValueError(f"{directory} is already quantized ({qconfig.mode}); load it without quantization= "
                         f"or load the float checkpoint to quantize it as {requested!r}")
    config = config.copy()
    config.__dict__.pop("quantization_config", None)  # held by model.quantization, written back on save
    model = cls(config, {}, dtype=dtype, param_dtype=param_dtype)
    params, _ = load_into_tree(checkpoint_io.load_state_dict(directory), model.param_shapes(),
                               source=f"quantized checkpoint {directory}",
                               leaf_hook=qweight_hook(model.dtype, directory))
    return _with_params(model, jax.device_put(params), qconfig)


# ----------------------------------------------------------------------------- base
def _dropout_rngs(deterministic, dropout_rng):
    if deterministic:
        return {}
    if dropout_rng is None:
        raise ValueError("deterministic=False needs dropout_rng (a jax.random key) for dropout")
    return {"dropout": dropout_rng}


def _training_inputs(batch, config) -> dict:
    """The EncoderDecoderModule call arguments of a training batch (labels -> decoder inputs and masks, as
    transformers' EncoderDecoderModel builds them). A packed batch (`inputs.is_packed`: several pairs per
    row) gets per-pair [B, Lq, Lk] masks and per-pair position ids instead of padding masks."""
    labels, pad, start = batch["labels"], config.pad_token_id, config.decoder_start_token_id
    if not is_packed(batch):
        decoder_input_ids = shift_tokens_right(labels, pad, start)
        return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=decoder_input_ids,
                    decoder_attention_mask=(decoder_input_ids != pad).astype(jnp.int32))
    decoder_input_ids = packed_decoder_input_ids(labels, batch["target_positions"], batch["target_segment_ids"],
                                                 pad, start)
    encoder_mask, decoder_mask, cross_mask = packed_attention_masks(
        batch["source_segment_ids"], batch["target_segment_ids"], decoder_input_ids, pad)
    return dict(input_ids=batch["input_ids"], attention_mask=encoder_mask, decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_mask,
                position_ids=batch["source_positions"] + first_position_id(config.encoder),
                decoder_position_ids=batch["target_positions"] + first_position_id(config.decoder),
                cross_attention_mask=cross_mask)


def _lm_head_inputs(module, deterministic, **inputs):
    """(an EncoderDecoderModule method; `inputs` as `_training_inputs` makes them) What the decoder's LM
    head projects: the hidden states after the head's own transform (BERT: dense, activation, LayerNorm;
    RoBERTa: dense, GELU, layer_norm; BertGeneration: none), the projection matrix (tied word embeddings
    [vocab, H], else the head's `decoder` kernel [H, vocab]), its bias, and whether the matrix is
    vocabulary-major. The decoder's own logits are left unused, so XLA drops that projection."""
    _, decoded = module(**inputs, deterministic=deterministic)
    decoder, hidden = module.decoder, decoded["last_hidden_state"]
    if isinstance(decoder, BertLMHeadModule):
        stack, head = decoder.bert, decoder.cls.predictions
        hidden = head.transform(hidden)
    elif isinstance(decoder, RobertaForCausalLMModule):
        stack, head = decoder.roberta, decoder.lm_head
        hidden = head.layer_norm(jax.nn.gelu(head.dense(hidden), approximate=False))  # RobertaLMHead's transform
    else:
        stack, head = decoder.bert, decoder.lm_head
    if decoder.config.tie_word_embeddings:
        return hidden, stack.embeddings.word_embeddings.embedding, head.bias, True
    kernel = head.decoder.variables["params"]["kernel"]
    if is_quantized_leaf(kernel):
        raise ValueError("cannot train a quantized model (its LM head kernel is quantized); dequantize it first")
    return hidden, kernel, head.bias, False


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
        if quantization is not None:
            quantization = QuantizationConfig.coerce(quantization)  # bad values fail before loading
        directory = _resolve_dir(path_or_repo_id, revision, cache_dir, local_files_only)
        if config is None:
            config = cls._read_config(directory, config_overrides)
        elif config_overrides:
            config = config.copy(**config_overrides)
        saved = saved_quantization(directory)
        if saved is not None:  # written by save_pretrained of a quantized model
            model = load_quantized(cls, directory, config, saved, dtype=dtype, param_dtype=param_dtype,
                                   requested=quantization)
        else:
            # To be quantized: load the float weights into host memory, so only the integers reach the device.
            with host_device() if quantization is not None else contextlib.nullcontext():
                if _has_only_flax_weights(directory):
                    model = cls.from_flax_file(os.path.join(directory, FLAX_WEIGHTS_NAME), config, dtype=dtype,
                                               param_dtype=param_dtype)
                else:
                    state_dict = checkpoint_io.load_state_dict(directory)
                    model = cls.from_state_dict(state_dict, config, dtype=dtype, param_dtype=param_dtype, seed=seed,
                                                source=str(path_or_repo_id))
                    del state_dict  # freed before the trim below
            if quantization is not None:
                model = quantize_model(model, quantization)
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
            return quantized_state_dict(self.params)
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
        write_generation_config(directory, self.generation_config)

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

    def _build_generation_cache(self, params, *arrays_and_max_length):
        """The cache builder handed to generation: `(params, *arrays, max_length) -> cache`."""
        *arrays, max_length = arrays_and_max_length
        return self._compiled_fn("_generation_cache", max_length=max_length)(params, *arrays)

    def _config_for_save(self):
        # As transformers' save_pretrained: the saving class's own name (BertModel, EncoderDecoderModel, ...).
        return self.config.copy(architectures=[type(self).__name__])


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
        if cache is not None and not is_traced(cache["index"]):
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

    def generate(self, input_ids, attention_mask=None, *, params=None, prng_key=None, seed=None, **kwargs):
        """Continue the prompts `input_ids` [B, P] (transformers' `generate` semantics; see API.md).

        Returns `.sequences` [B * num_return_sequences, L] (prompt first, pad after EOS) and, for beam
        search, `.sequences_scores`. The decode is one compiled `lax.while_loop`.
        Sampling (`do_sample=True`) draws from `prng_key`, or from `jax.random.PRNGKey(seed)` with `seed=`,
        or, with neither, from a fresh random key each call (as transformers draws from torch's global
        generator): pass one of them for reproducible samples.
        """
        return decoder_generate(self.tokens_to_logits, self._build_generation_cache,
                                self.params if params is None else params, self.config, input_ids, attention_mask,
                                generation_config=self.generation_config, prng_key=prng_key, seed=seed, **kwargs)

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

    def loss_function(self, *, label_smoothing: float = 0.0, deterministic: bool = True, compute_dtype=None,
                      labelled_only: bool = False, row_groups: int = 1):
        """`loss_sum(params, batch, dropout_rng) -> (sum of token losses, number of label tokens)` for one
        batch {"input_ids", "attention_mask", "labels"} (leaves [B, T]): transformers' seq2seq loss
        (labels shifted right into decoder inputs, decoder mask `!= pad_token_id`, -100 ignored), summed
        so that micro-batches add up. Pure and jit-able; handles tied encoder/decoder params.
        `compute_dtype` (e.g. bfloat16) runs the modules in it while params stay as they are.

        `labelled_only`: the LM head and the cross-entropy run only on labelled positions
        (`inputs.labelled_lm_loss`: the [B, T, vocab] logits are never formed; the same loss and
        gradients); `row_groups` splits the batch into that many groups of rows (the batch shards of a
        data-parallel mesh) that each gather their own. It pays when many positions of the padded
        targets carry no label; with tightly bucketed batches (most positions labelled) the plain
        head is as fast or faster on CPU."""
        c = self.config
        module = self.module
        if compute_dtype is not None and jnp.dtype(compute_dtype) != self.dtype:
            module = EncoderDecoderModule(c.encoder, c.decoder, c.needs_enc_to_dec_proj, jnp.dtype(compute_dtype),
                                          self.param_dtype)
        module_params = self._module_params

        def loss_sum(params, batch, dropout_rng):
            labels = batch["labels"]
            inputs = _training_inputs(batch, c)
            if not labelled_only:
                _, decoded = module.apply({"params": module_params(params)}, **inputs, deterministic=deterministic,
                                          rngs=_dropout_rngs(deterministic, dropout_rng))
                losses, valid = token_losses(decoded["logits"], labels, label_smoothing)
                return jnp.sum(losses), jnp.sum(valid).astype(jnp.float32)
            hidden, weight, bias, vocab_major = module.apply(
                {"params": module_params(params)}, **inputs, deterministic=deterministic, method=_lm_head_inputs,
                rngs=_dropout_rngs(deterministic, dropout_rng))
            return labelled_lm_loss(hidden, weight, bias, labels, label_smoothing=label_smoothing,
                                    groups=row_groups, weight_is_vocab_major=vocab_major)

        return loss_sum

    def encode(self, input_ids, attention_mask=None, *, params=None):
        """Encoder output (`last_hidden_state` [B, S, H_enc]); `generate(encoder_outputs=...)` decodes from it."""
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

    def _generation_cache_from_states(self, params, encoder_hidden_states, attention_mask, *, max_length):
        return self._apply(params, encoder_hidden_states.shape[0], max_length, encoder_hidden_states, attention_mask,
                           method=EncoderDecoderModule.init_cache)

    def _build_generation_cache_from_states(self, params, states, attention_mask, max_length):
        return self._compiled_fn("_generation_cache_from_states", max_length=max_length)(params, states,
                                                                                         attention_mask)

    def generate(self, input_ids=None, attention_mask=None, *, encoder_outputs=None, params=None, prng_key=None,
                 seed=None, **kwargs):
        """Generate from `input_ids` [B, S] with transformers' `generate` semantics (API.md lists the
        options; defaults come from generation_config.json or the config).

        `encoder_outputs` (what `encode()` returns) instead of `input_ids` decodes from an encoder pass
        already made, with `attention_mask` the source mask (all ones if not given), as transformers'
        `generate(encoder_outputs=...)`: sample many times or try several decoding settings from one
        encoder pass; the encoder does not run again.

        Returns `.sequences` int32 [B * num_return_sequences, L] starting with the decoder start token,
        padded with pad_token_id after EOS, and `.sequences_scores` for beam search.
        Sampling (`do_sample=True`) draws from `prng_key`, or from `jax.random.PRNGKey(seed)` with `seed=`,
        or, with neither, from a fresh random key each call (as transformers draws from torch's global
        generator): pass one of them for reproducible samples.
        """
        return encoder_decoder_generate(self.tokens_to_logits, self._build_generation_cache,
                                        self.params if params is None else params, self.config, input_ids,
                                        attention_mask, encoder_outputs=encoder_outputs,
                                        build_cache_from_states=self._build_generation_cache_from_states,
                                        generation_config=self.generation_config,
                                        prng_key=prng_key, seed=seed, **kwargs)

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
        if quantization is not None:
            quantization = QuantizationConfig.coerce(quantization)  # bad values fail before loading
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
            model = quantize_model(model, quantization)
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


# ----------------------------------------------------------------------------- BERT / RoBERTa family models
# transformers' BertModel, BertLMHeadModel, RobertaModel, RobertaForCausalLM (their modules: bert_family.py).


@flax.struct.dataclass
class BaseModelOutputWithPooling:
    last_hidden_state: Any
    pooler_output: Any = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


def _read_family_config(cls, directory, overrides):
    values = read_config_json(os.path.join(directory, CONFIG_NAME))
    return cls.config_class.from_dict(values, **overrides)


class BertModel(BertGenerationEncoder):
    """transformers' BertModel (token types, pooler): `__call__` also takes `token_type_ids` and the
    output has `.pooler_output`."""

    config_class = BertConfig

    def _make_module(self):
        return FamilyModule(self.config, self.dtype, self.param_dtype, add_pooling_layer=True)

    @classmethod
    def _read_config(cls, directory, overrides):
        return _read_family_config(cls, directory, overrides)

    def _layout(self, state_dict, report):
        from converters.family_layouts import family_encoder_layout

        return family_encoder_layout(state_dict, self.config, report)

    def _forward(self, params, input_ids, attention_mask, position_ids, head_mask, dropout_rng, token_type_ids=None,
                 *, deterministic, output_hidden_states, output_attentions):
        out = self.module.apply({"params": self._module_params(params)}, input_ids, attention_mask, position_ids,
                                head_mask=head_mask, deterministic=deterministic,
                                output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                                token_type_ids=token_type_ids, rngs=_dropout_rngs(deterministic, dropout_rng))
        return BaseModelOutputWithPooling(out["last_hidden_state"], out["pooler_output"], out["hidden_states"],
                                          out["attentions"])

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, token_type_ids=None, params=None,
                 head_mask=None, output_hidden_states=False, output_attentions=False, deterministic=True,
                 dropout_rng=None):
        c = self.config
        input_ids = check_token_ids(input_ids, "input_ids", c.vocab_size, max_sequence_length(c))
        attention_mask = check_mask(attention_mask, "attention_mask", input_ids.shape, allow_3d=True)
        position_ids = check_positions(position_ids, input_ids.shape, c.max_position_embeddings)
        token_type_ids = _check_token_types(token_type_ids, input_ids.shape, c)
        _dropout_rngs(deterministic, dropout_rng)
        fn = self._compiled_fn("_forward", deterministic=deterministic, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
        return fn(self.params if params is None else params, input_ids, attention_mask, position_ids, head_mask,
                  dropout_rng, token_type_ids)


class RobertaModel(BertModel):
    """transformers' RobertaModel: BertModel with positions counted from pad_token_id + 1."""

    config_class = RobertaConfig

    def _pad_id_for(self, path):
        return self.config.pad_token_id


class BertLMHeadModel(BertGenerationDecoder):
    """transformers' BertLMHeadModel: `bert` stack + `cls.predictions` head (transform, tied projection)."""

    config_class = BertConfig

    def _make_module(self):
        return BertLMHeadModule(self.config, self.dtype, self.param_dtype)

    @classmethod
    def _read_config(cls, directory, overrides):
        return _read_family_config(cls, directory, overrides)

    def _layout(self, state_dict, report):
        from converters.family_layouts import family_decoder_layout

        return family_decoder_layout(state_dict, self.config, report)

    def _generation_cache(self, params, attention_mask, *, max_length):
        return self.module.apply({"params": self._module_params(params)}, attention_mask.shape[0], max_length, None,
                                 None, attention_mask, method=type(self.module).init_cache)

    def init_cache(self, batch_size: int, max_length: int, encoder_hidden_states=None, encoder_attention_mask=None,
                   attention_mask=None, *, params=None):
        """A fixed-size decoding cache (see BertGenerationDecoder.init_cache)."""
        if max_length > max_sequence_length(self.config):
            raise ValueError(f"max_length={max_length} exceeds the {max_sequence_length(self.config)} positions "
                             f"the position table holds (max_position_embeddings="
                             f"{self.config.max_position_embeddings})")
        return self.module.apply({"params": self._module_params(self.params if params is None else params)},
                                 batch_size, max_length, encoder_hidden_states, encoder_attention_mask, attention_mask,
                                 method=type(self.module).init_cache)


class RobertaForCausalLM(BertLMHeadModel):
    """transformers' RobertaForCausalLM: `roberta` stack + `lm_head` (dense, GELU, layer_norm, tied projection)."""

    config_class = RobertaConfig

    def _make_module(self):
        return RobertaForCausalLMModule(self.config, self.dtype, self.param_dtype)


def _check_token_types(token_type_ids, shape, config):
    if token_type_ids is None:
        return None
    import numpy as np

    array = np.asarray(token_type_ids)
    if array.shape != tuple(shape):
        raise ValueError(f"token_type_ids has shape {array.shape}, which does not match the ids' shape {tuple(shape)}")
    if array.size and (array.min() < 0 or array.max() >= config.type_vocab_size):
        raise ValueError(f"token_type_ids holds a type outside [0, {config.type_vocab_size}) (type_vocab_size)")
    return jnp.asarray(array, jnp.int32)


# model_type -> (AutoModel class, AutoModelForCausalLM class), as transformers' auto mappings pick them.
AUTO_CLASSES = {
    "bert-generation": (BertGenerationEncoder, BertGenerationDecoder),
    "bert": (BertModel, BertLMHeadModel),
    "roberta": (RobertaModel, RobertaForCausalLM),
}


def auto_classes_for(path_or_repo_id, **hub_kwargs):
    """(encoder class, decoder class) for a checkpoint, from its config.json's model_type."""
    from .hub import resolve_model_dir

    directory = resolve_model_dir(path_or_repo_id, **hub_kwargs)
    model_type = read_config_json(os.path.join(directory, CONFIG_NAME)).get("model_type")
    if model_type not in AUTO_CLASSES:
        raise ValueError(f"{path_or_repo_id}: config model_type {model_type!r} is not a supported encoder/decoder "
                         f"part (expected one of {', '.join(AUTO_CLASSES)})")
    return AUTO_CLASSES[model_type]


def describe_pair(config) -> str:
    """'BertModel + BertLMHeadModel' etc.: the transformers classes an EncoderDecoderConfig's parts are."""
    encoder_cls = AUTO_CLASSES[config.encoder.model_type][0]
    decoder_cls = AUTO_CLASSES[config.decoder.model_type][1]
    return f"{encoder_cls.__name__} + {decoder_cls.__name__}"
