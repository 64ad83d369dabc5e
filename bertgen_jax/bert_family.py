"""BERT and RoBERTa members of the bert2bert family (transformers 4.56.2 `modeling_bert.py`,
`modeling_roberta.py`): the linen modules `BertModel` / `BertLMHeadModel` / `RobertaModel` /
`RobertaForCausalLM` add to the BertGeneration stack, and `EncoderDecoderModule`, which pairs any two
of the family as transformers' AutoModel / AutoModelForCausalLM pick them. The user-facing classes are
in `models.py`.

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

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .activations import ACTIVATIONS, PReLU, XIELU
from .config import BertConfig, BertGenerationConfig, RobertaConfig
from .modules import (BertGenerationModule, DecoderModule, Dropout, LayerStack, _dense, _layer_norm, _normal,
                      output_projection, untied_decoder)

FAMILY_MODEL_TYPES = ("bert", "roberta")


def is_family_config(config) -> bool:
    return getattr(config, "model_type", None) in FAMILY_MODEL_TYPES


def roberta_position_ids(input_ids, padding_idx: int, past_length=0):
    """transformers' create_position_ids_from_input_ids: non-padding tokens count from padding_idx + 1
    (plus the cached length); padding tokens sit at padding_idx."""
    mask = (input_ids != padding_idx).astype(jnp.int32)
    return ((jnp.cumsum(mask, axis=1) + past_length) * mask + padding_idx).astype(jnp.int32)


def first_position_id(config) -> int:
    """The position id of a sequence's first token: pad_token_id + 1 for RoBERTa, else 0."""
    if getattr(config, "model_type", None) == "roberta":
        return int(config.pad_token_id) + 1
    return 0


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
        self.dropout = Dropout(rate=c.hidden_dropout_prob)

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
            self.decoder = untied_decoder(self)

    def __call__(self, hidden, word_embeddings=None):
        logits = output_projection(self, self.transform(hidden), word_embeddings)
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
            self.decoder = untied_decoder(self)

    def __call__(self, hidden, word_embeddings=None):
        hidden = self.layer_norm(jax.nn.gelu(self.dense(hidden), approximate=False))
        logits = output_projection(self, hidden, word_embeddings)
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
    return DecoderModule(config, dtype, param_dtype)


class EncoderDecoderModule(nn.Module):
    """EncoderDecoderModel: `encoder` (BertGeneration stack), `decoder` (with LM head), and
    `enc_to_dec_proj` when the hidden sizes differ."""

    encoder_config: BertGenerationConfig
    decoder_config: BertGenerationConfig
    use_enc_to_dec_proj: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        # BertGeneration, BERT or RoBERTa parts, as transformers' AutoModel / AutoModelForCausalLM pick them.
        self.encoder = encoder_module_for(self.encoder_config, self.dtype, self.param_dtype)
        self.decoder = decoder_module_for(self.decoder_config, self.dtype, self.param_dtype)
        if self.use_enc_to_dec_proj:
            self.enc_to_dec_proj = _dense(self.decoder_config, self.decoder_config.hidden_size, self.dtype,
                                          self.param_dtype)

    def encode(self, input_ids, attention_mask=None, position_ids=None, head_mask=None, deterministic=True,
               output_hidden_states=False, output_attentions=False):
        return self.encoder(input_ids, attention_mask, position_ids, head_mask=head_mask,
                            deterministic=deterministic, output_hidden_states=output_hidden_states,
                            output_attentions=output_attentions)

    def project_encoder_states(self, encoder_hidden_states):
        if self.use_enc_to_dec_proj:
            return self.enc_to_dec_proj(encoder_hidden_states)
        return encoder_hidden_states

    def init_cache(self, batch_size, max_length, encoder_hidden_states, encoder_attention_mask=None):
        states = self.project_encoder_states(encoder_hidden_states)
        return self.decoder.init_cache(batch_size, max_length, states, encoder_attention_mask)

    def decode(self, decoder_input_ids, encoder_hidden_states=None, encoder_attention_mask=None,
               decoder_attention_mask=None, decoder_position_ids=None, decoder_head_mask=None, cache=None,
               deterministic=True, output_hidden_states=False, output_attentions=False):
        states = None if encoder_hidden_states is None else self.project_encoder_states(encoder_hidden_states)
        return self.decoder(decoder_input_ids, decoder_attention_mask, decoder_position_ids, states,
                            encoder_attention_mask, decoder_head_mask, cache, deterministic,
                            output_hidden_states, output_attentions)

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 position_ids=None, decoder_position_ids=None, head_mask=None, decoder_head_mask=None,
                 deterministic=True, output_hidden_states=False, output_attentions=False, cross_attention_mask=None):
        """`cross_attention_mask` [B, T, S]: which source positions each target position attends to
        (packed batches); by default the source `attention_mask`, as transformers."""
        encoded = self.encode(input_ids, attention_mask, position_ids, head_mask, deterministic,
                              output_hidden_states, output_attentions)
        if cross_attention_mask is None:
            cross_attention_mask = attention_mask
        decoded = self.decode(decoder_input_ids, encoded["last_hidden_state"], cross_attention_mask,
                              decoder_attention_mask, decoder_position_ids, decoder_head_mask, None,
                              deterministic, output_hidden_states, output_attentions)
        return encoded, decoded
