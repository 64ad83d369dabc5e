"""BERT and RoBERTa members of the bert2bert family (transformers 4.56.2 `modeling_bert.py`,
`modeling_roberta.py`): the modules `BertModel` / `BertLMHeadModel` / `RobertaModel` /
`RobertaForCausalLM` add to the BertGeneration stack, and the user-facing model classes.

They share the embeddings' word/position tables, the attention, the layers and the fixed-size
cache with BertGeneration (`modules.py`) and add:

- token-type embeddings (type 0 when none are given, as transformers' buffered zeros);
- absolute position embeddings only for `position_embedding_type="absolute"` (BertGeneration adds
  them for every type; BertEmbeddings/RobertaEmbeddings do not);
- RoBERTa positions counted over non-padding tokens from `pad_token_id + 1`
  (`create_position_ids_from_input_ids`), continuing from the cache length when decoding;
- the pooler (dense + tanh on the first token; kept and saved, unused by generation);
- the LM heads: BERT's `cls.predictions` (transform dense + act + LayerNorm, then the tied
  projection and bias) and RoBERTa's `lm_head` (dense + exact GELU + layer_norm, projection, bias).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from .activations import ACTIVATIONS, PReLU, XIELU
from .config import CONFIG_NAME, BertConfig, BertGenerationConfig, RobertaConfig, read_config_json
from .modules import BertGenerationModule, LayerStack, _dense, _layer_norm, _normal
from .quantization import QuantDense

FAMILY_MODEL_TYPES = ("bert", "roberta")


def is_family_config(config) -> bool:
    return getattr(config, "model_type", None) in FAMILY_MODEL_TYPES


def roberta_position_ids(input_ids, padding_idx: int, past_length=0):
    """transformers' create_position_ids_from_input_ids: non-padding tokens count from padding_idx + 1
    (plus the cached length); padding tokens sit at padding_idx."""
    mask = (input_ids != padding_idx).astype(jnp.int32)
    return ((jnp.cumsum(mask, axis=1) + past_length) * mask + padding_idx).astype(jnp.int32)


def max_sequence_length(config) -> int:
    """The longest input the position table allows (RoBERTa's positions start at pad_token_id + 1)."""
    return config.max_input_length


def _activation(config, param_dtype):
    if config.hidden_act == "prelu":
        return PReLU(param_dtype)
    if config.hidden_act == "xielu":
        return XIELU(param_dtype)
    return ACTIVATIONS[config.hidden_act]


# ----------------------------------------------------------------------------- stack pieces
class FamilyEmbeddings(nn.Module):
    """BertEmbeddings / RobertaEmbeddings: word + token type (+ absolute position), LayerNorm, dropout."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        embed = lambda rows: nn.Embed(rows, c.hidden_size, embedding_init=_normal(c), dtype=self.dtype,
                                      param_dtype=self.param_dtype)
        self.word_embeddings = embed(c.vocab_size)
        self.position_embeddings = embed(c.max_position_embeddings)
        self.token_type_embeddings = embed(c.type_vocab_size)
        self.LayerNorm = _layer_norm(c, self.dtype, self.param_dtype)
        self.dropout = nn.Dropout(rate=c.hidden_dropout_prob)

    def __call__(self, input_ids, position_ids, deterministic: bool = True, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        if self.config.position_embedding_type == "absolute":
            hidden = hidden + self.position_embeddings(position_ids)
        else:
            # Unused by relative types (as in transformers), but part of the checkpoint: create it.
            _ = self.position_embeddings.embedding
        hidden = self.LayerNorm(hidden)
        return self.dropout(hidden, deterministic=deterministic)


class Pooler(nn.Module):
    """`pooler`: tanh(dense(h[:, 0]))."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.dense = _dense(self.config, self.config.hidden_size, self.dtype, self.param_dtype)

    def __call__(self, hidden):
        return jnp.tanh(self.dense(hidden[:, 0]))


class FamilyModule(BertGenerationModule):
    """BertModel / RobertaModel: the shared stack with FamilyEmbeddings, RoBERTa positions and an
    optional pooler (`pooler_output` in the outputs)."""

    add_pooling_layer: bool = False

    def setup(self):
        self.embeddings = FamilyEmbeddings(self.config, self.dtype, self.param_dtype)
        self.encoder = LayerStack(self.config, self.dtype, self.param_dtype)
        if self.add_pooling_layer:
            self.pooler = Pooler(self.config, self.dtype, self.param_dtype)

    def default_position_ids(self, input_ids, query_positions, past):
        if self.config.model_type == "roberta":
            return roberta_position_ids(input_ids, self.config.pad_token_id, past)
        return query_positions[None, :]

    def __call__(self, input_ids, attention_mask=None, position_ids=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, head_mask=None, cache=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False, token_type_ids=None):
        outputs = super().__call__(input_ids, attention_mask, position_ids, encoder_hidden_states,
                                   encoder_attention_mask, head_mask, cache, deterministic, output_hidden_states,
                                   output_attentions, token_type_ids=token_type_ids)
        outputs["pooler_output"] = self.pooler(outputs["last_hidden_state"]) if self.add_pooling_layer else None
        return outputs


# ----------------------------------------------------------------------------- LM heads
def _output_projection(module, hidden, word_embeddings):
    if module.config.tie_word_embeddings:
        return jnp.einsum("bth,vh->btv", hidden, word_embeddings.astype(module.dtype))
    return module.decoder(hidden)


def _untied_decoder(module):
    c = module.config
    return QuantDense(c.vocab_size, use_bias=False, dtype=module.dtype, param_dtype=module.param_dtype,
                      kernel_init=_normal(c))


class BertPredictionHeadTransform(nn.Module):
    """`cls.predictions.transform`: dense, hidden_act, LayerNorm."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.dense = _dense(self.config, self.config.hidden_size, self.dtype, self.param_dtype)
        self.transform_act_fn = _activation(self.config, self.param_dtype)
        self.LayerNorm = _layer_norm(self.config, self.dtype, self.param_dtype)

    def __call__(self, hidden):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """`cls.predictions`: transform, then the (tied) projection plus `bias`."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.transform = BertPredictionHeadTransform(self.config, self.dtype, self.param_dtype)
        self.bias = self.param("bias", nn.initializers.zeros, (self.config.vocab_size,), self.param_dtype)
        if not self.config.tie_word_embeddings:
            self.decoder = _untied_decoder(self)

    def __call__(self, hidden, word_embeddings=None):
        logits = _output_projection(self, self.transform(hidden), word_embeddings)
        return logits + self.bias.astype(logits.dtype)


class BertOnlyMLMHead(nn.Module):
    """`cls`: holds `predictions`."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.predictions = BertLMPredictionHead(self.config, self.dtype, self.param_dtype)

    def __call__(self, hidden, word_embeddings=None):
        return self.predictions(hidden, word_embeddings)


class RobertaLMHead(nn.Module):
    """`lm_head`: dense, exact GELU (whatever hidden_act is), layer_norm, projection plus `bias`."""

    config: RobertaConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.dense = _dense(self.config, self.config.hidden_size, self.dtype, self.param_dtype)
        self.layer_norm = _layer_norm(self.config, self.dtype, self.param_dtype)
        self.bias = self.param("bias", nn.initializers.zeros, (self.config.vocab_size,), self.param_dtype)
        if not self.config.tie_word_embeddings:
            self.decoder = _untied_decoder(self)

    def __call__(self, hidden, word_embeddings=None):
        hidden = self.layer_norm(jax.nn.gelu(self.dense(hidden), approximate=False))
        logits = _output_projection(self, hidden, word_embeddings)
        return logits + self.bias.astype(logits.dtype)


# ----------------------------------------------------------------------------- decoders
class _CausalLMBase(nn.Module):
    """Shared body of BertLMHeadModel / RobertaForCausalLM: `stack` + `head` (names set by subclasses)."""

    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def init_cache(self, batch_size, max_length, encoder_hidden_states=None, encoder_attention_mask=None,
                   attention_mask=None):
        return self.stack.init_cache(batch_size, max_length, encoder_hidden_states, encoder_attention_mask,
                                     attention_mask)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, head_mask=None, cache=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False, token_type_ids=None):
        outputs = self.stack(input_ids, attention_mask, position_ids, encoder_hidden_states, encoder_attention_mask,
                             head_mask, cache, deterministic, output_hidden_states, output_attentions,
                             token_type_ids=token_type_ids)
        embedding = self.stack.embeddings.word_embeddings.embedding if self.config.tie_word_embeddings else None
        outputs["logits"] = self.head(outputs["last_hidden_state"], embedding)
        return outputs


class BertLMHeadModule(_CausalLMBase):
    """BertLMHeadModel: `bert` (no pooler) + `cls`."""

    def setup(self):
        self.bert = FamilyModule(self.config, self.dtype, self.param_dtype, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(self.config, self.dtype, self.param_dtype)

    @property
    def stack(self):
        return self.bert

    @property
    def head(self):
        return self.cls


class RobertaForCausalLMModule(_CausalLMBase):
    """RobertaForCausalLM: `roberta` (no pooler) + `lm_head`."""

    def setup(self):
        self.roberta = FamilyModule(self.config, self.dtype, self.param_dtype, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(self.config, self.dtype, self.param_dtype)

    @property
    def stack(self):
        return self.roberta

    @property
    def head(self):
        return self.lm_head


def decoder_base_name(config) -> str:
    """The decoder's stack attribute (transformers' base_model_prefix): bert or roberta."""
    return "roberta" if getattr(config, "model_type", None) == "roberta" else "bert"


def encoder_module_for(config, dtype, param_dtype):
    """The encoder stack transformers' AutoModel builds for this config (with BertModel's pooler)."""
    if is_family_config(config):
        return FamilyModule(config, dtype, param_dtype, add_pooling_layer=True)
    return BertGenerationModule(config, dtype, param_dtype)


def decoder_module_for(config, dtype, param_dtype):
    """The decoder transformers' AutoModelForCausalLM builds for this config."""
    if getattr(config, "model_type", None) == "bert":
        return BertLMHeadModule(config, dtype, param_dtype)
    if getattr(config, "model_type", None) == "roberta":
        return RobertaForCausalLMModule(config, dtype, param_dtype)
    from .modules import DecoderModule

    return DecoderModule(config, dtype, param_dtype)


# ----------------------------------------------------------------------------- user-facing models
from . import models as _models  # noqa: E402  (models imports this module lazily; no cycle at import time)


@flax.struct.dataclass
class BaseModelOutputWithPooling:
    last_hidden_state: Any
    pooler_output: Any = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


def _read_family_config(cls, directory, overrides):
    values = read_config_json(os.path.join(directory, CONFIG_NAME))
    return cls.config_class.from_dict(values, **overrides)


class BertModel(_models.BertGenerationEncoder):
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

    def _config_for_save(self):
        return self.config.copy(architectures=[type(self).__name__])

    def _forward(self, params, input_ids, attention_mask, position_ids, head_mask, dropout_rng, token_type_ids=None,
                 *, deterministic, output_hidden_states, output_attentions):
        out = self.module.apply({"params": self._module_params(params)}, input_ids, attention_mask, position_ids,
                                head_mask=head_mask, deterministic=deterministic,
                                output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                                token_type_ids=token_type_ids, rngs=_models._dropout_rngs(deterministic, dropout_rng))
        return BaseModelOutputWithPooling(out["last_hidden_state"], out["pooler_output"], out["hidden_states"],
                                          out["attentions"])

    def __call__(self, input_ids, attention_mask=None, position_ids=None, *, token_type_ids=None, params=None,
                 head_mask=None, output_hidden_states=False, output_attentions=False, deterministic=True,
                 dropout_rng=None):
        c = self.config
        input_ids = _models.check_token_ids(input_ids, "input_ids", c.vocab_size, max_sequence_length(c))
        attention_mask = _models.check_mask(attention_mask, "attention_mask", input_ids.shape, allow_3d=True)
        position_ids = _models.check_positions(position_ids, input_ids.shape, c.max_position_embeddings)
        token_type_ids = _check_token_types(token_type_ids, input_ids.shape, c)
        _models._dropout_rngs(deterministic, dropout_rng)
        fn = self._compiled_fn("_forward", deterministic=deterministic, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
        return fn(self.params if params is None else params, input_ids, attention_mask, position_ids, head_mask,
                  dropout_rng, token_type_ids)


class RobertaModel(BertModel):
    """transformers' RobertaModel: BertModel with positions counted from pad_token_id + 1."""

    config_class = RobertaConfig

    def _pad_id_for(self, path):
        return self.config.pad_token_id


class BertLMHeadModel(_models.BertGenerationDecoder):
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

    def _config_for_save(self):
        return self.config.copy(architectures=[type(self).__name__])

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
    "bert-generation": (_models.BertGenerationEncoder, _models.BertGenerationDecoder),
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
