"""Configs that read and write transformers' `config.json` (transformers 4.56.2 semantics).

`BertGenerationConfig` holds every field of transformers' BertGenerationConfig plus the inherited
fields this model reads (`is_decoder`, `add_cross_attention`, `tie_word_embeddings`, ...).
`EncoderDecoderConfig` wraps an encoder and a decoder sub-config. Unknown keys of a config.json are
kept as attributes and written back, as transformers does, so a round trip loses nothing.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Optional

from converters.files import atomic_write_text

from .activations import validate_activation

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")
# Model types whose config.json describes the same encoder stack (used for warm starts).
COMPATIBLE_MODEL_TYPES = ("bert-generation", "bert", "roberta")


class _ConfigFile:
    """config.json in and out, shared by both config classes (subclasses give to_dict / from_dict)."""

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        atomic_write_text(os.path.join(directory, CONFIG_NAME), self.to_json_string())

    @classmethod
    def from_pretrained(cls, path_or_repo_id, *, revision=None, cache_dir=None, local_files_only=False,
                        **overrides: Any):
        directory = _resolve(path_or_repo_id, revision, cache_dir, local_files_only)
        return cls.from_dict(read_config_json(os.path.join(directory, CONFIG_NAME)), **overrides)


class BertGenerationConfig(_ConfigFile):
    """Configuration of BertGenerationEncoder / BertGenerationDecoder (defaults as transformers')."""

    model_type = "bert-generation"

    defaults: dict[str, Any] = {
        "vocab_size": 50358,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "position_embedding_type": "absolute",
        "use_cache": True,
        # Inherited from transformers' PretrainedConfig; they change what this model computes.
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "decoder_start_token_id": None,
        "tie_encoder_decoder": False,
        "cross_attention_hidden_size": None,
        "chunk_size_feed_forward": 0,
    }

    def __init__(self, **kwargs: Any):
        values = dict(self.defaults)
        values.update(kwargs)
        # transformers writes `model_type` into config.json; it is a class attribute here.
        source_type = values.pop("model_type", self.model_type)
        self.source_model_type = source_type
        for key, value in values.items():
            setattr(self, key, value)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "max_position_embeddings"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; expected one of "
                f"{', '.join(POSITION_EMBEDDING_TYPES)}"
            )
        validate_activation(self.hidden_act)
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, field)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{field} must be in [0, 1], got {value!r}")
        if not float(self.layer_norm_eps) > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if self.cross_attention_hidden_size is not None and self.cross_attention_hidden_size <= 0:
            raise ValueError(f"cross_attention_hidden_size must be positive, got {self.cross_attention_hidden_size!r}")

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_input_length(self) -> int:
        """The longest token sequence the position table holds (RoBERTa overrides it)."""
        return self.max_position_embeddings

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in vars(self).items() if k != "source_model_type"}
        out["model_type"] = self.model_type
        return out

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "BertGenerationConfig":
        values = dict(config_dict)
        model_type = values.get("model_type", cls.model_type)
        if model_type == "encoder-decoder":
            raise ValueError(
                "this config.json describes an EncoderDecoderModel (model_type 'encoder-decoder'); "
                "load it with EncoderDecoderModel / EncoderDecoderConfig"
            )
        if model_type not in COMPATIBLE_MODEL_TYPES:
            raise ValueError(
                f"config model_type {model_type!r} is not a BertGeneration-compatible model "
                f"(expected one of {', '.join(COMPATIBLE_MODEL_TYPES)})"
            )
        if model_type != cls.model_type:
            # As transformers does: load it, but say that the types differ (BERT has no bos/eos, so
            # the BertGeneration defaults 2/1 apply unless given explicitly).
            logger.warning("loading a config of model_type %r into BertGenerationConfig", model_type)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str, **overrides: Any) -> "BertGenerationConfig":
        return cls.from_dict(read_config_json(path), **overrides)

    def copy(self, **changes: Any) -> "BertGenerationConfig":
        values = self.to_dict()
        values.update(changes)
        return type(self)(**values)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


class BertConfig(BertGenerationConfig):
    """transformers' BertConfig (BertModel / BertLMHeadModel): token types, no bos/eos by default."""

    model_type = "bert"

    defaults: dict[str, Any] = {
        **BertGenerationConfig.defaults,
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "type_vocab_size": 2,
        "pad_token_id": 0,
        "bos_token_id": None,
        "eos_token_id": None,
        "classifier_dropout": None,
    }

    def validate(self) -> None:
        super().validate()
        value = self.type_vocab_size
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"type_vocab_size must be a positive integer, got {value!r}")


class RobertaConfig(BertConfig):
    """transformers' RobertaConfig (RobertaModel / RobertaForCausalLM): positions start at pad_token_id + 1."""

    model_type = "roberta"

    defaults: dict[str, Any] = {
        **BertConfig.defaults,
        "vocab_size": 50265,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }

    @property
    def max_input_length(self) -> int:
        # Positions run from pad_token_id + 1 (create_position_ids_from_input_ids).
        return self.max_position_embeddings - self.pad_token_id - 1

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.pad_token_id, int) or not 0 <= self.pad_token_id < self.max_position_embeddings - 1:
            raise ValueError(f"RoBERTa positions start at pad_token_id + 1: pad_token_id={self.pad_token_id!r} must be "
                             f"in [0, max_position_embeddings - 1)")


# model_type -> config class (transformers' AutoConfig for the family this project runs).
CONFIG_CLASSES: dict[str, type] = {"bert-generation": BertGenerationConfig, "bert": BertConfig,
                                   "roberta": RobertaConfig}


class EncoderDecoderConfig(_ConfigFile):
    """transformers' EncoderDecoderConfig: an encoder and a decoder sub-config plus top-level ids."""

    model_type = "encoder-decoder"

    def __init__(self, encoder: BertGenerationConfig | dict, decoder: BertGenerationConfig | dict, *,
                 decoder_start_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                 tie_encoder_decoder: bool = False, **kwargs: Any):
        self.encoder = encoder if isinstance(encoder, BertGenerationConfig) else _sub_config(encoder, "encoder")
        self.decoder = decoder if isinstance(decoder, BertGenerationConfig) else _sub_config(decoder, "decoder")
        self.decoder_start_token_id = decoder_start_token_id
        self.pad_token_id = pad_token_id
        self.tie_encoder_decoder = bool(tie_encoder_decoder)
        kwargs.pop("model_type", None)
        kwargs.pop("is_encoder_decoder", None)
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.validate()

    @property
    def is_encoder_decoder(self) -> bool:
        return True

    def validate(self) -> None:
        self.encoder.validate()
        self.decoder.validate()
        if not self.decoder.is_decoder or not self.decoder.add_cross_attention:
            raise ValueError(
                "the decoder sub-config of an EncoderDecoderConfig needs is_decoder=True and "
                "add_cross_attention=True"
            )
        if self.tie_encoder_decoder:
            shared = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "max_position_embeddings", "position_embedding_type", "hidden_act")
            for field in shared:
                if getattr(self.encoder, field) != getattr(self.decoder, field):
                    raise ValueError(
                        f"tie_encoder_decoder=True needs equal encoder and decoder {field} "
                        f"({getattr(self.encoder, field)!r} != {getattr(self.decoder, field)!r})"
                    )

    @property
    def needs_enc_to_dec_proj(self) -> bool:
        # transformers adds `enc_to_dec_proj` only in this case (modeling_encoder_decoder.py).
        return (self.encoder.hidden_size != self.decoder.hidden_size
                and self.decoder.cross_attention_hidden_size is None)

    @classmethod
    def from_encoder_decoder_configs(cls, encoder: BertGenerationConfig, decoder: BertGenerationConfig,
                                     **kwargs: Any) -> "EncoderDecoderConfig":
        decoder = decoder.copy(is_decoder=True, add_cross_attention=True)
        return cls(encoder, decoder, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in vars(self).items() if k not in ("encoder", "decoder")}
        out["encoder"] = self.encoder.to_dict()
        out["decoder"] = self.decoder.to_dict()
        out["model_type"] = self.model_type
        out["is_encoder_decoder"] = True
        return out

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> "EncoderDecoderConfig":
        values = dict(config_dict)
        model_type = values.get("model_type")
        if model_type != cls.model_type:
            raise ValueError(
                f"config model_type {model_type!r} is not an encoder-decoder config (expected 'encoder-decoder')"
            )
        for side in ("encoder", "decoder"):
            if not isinstance(values.get(side), dict):
                raise ValueError(f"encoder-decoder config.json has no {side!r} sub-config")
        values.update(overrides)
        encoder = values.pop("encoder")
        decoder = values.pop("decoder")
        return cls(encoder, decoder, **values)

    def copy(self, **changes: Any) -> "EncoderDecoderConfig":
        values = self.to_dict()
        values.update(changes)
        return EncoderDecoderConfig.from_dict(values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncoderDecoderConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"EncoderDecoderConfig {self.to_json_string()}"


def _sub_config(values: dict[str, Any], side: str) -> BertGenerationConfig:
    model_type = values.get("model_type", "bert-generation")
    if model_type not in CONFIG_CLASSES:
        raise ValueError(
            f"the {side} sub-config has model_type {model_type!r}; supported: {', '.join(CONFIG_CLASSES)}"
        )
    return CONFIG_CLASSES[model_type](**values)


def read_config_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} does not hold a JSON object")
    return values


def load_config(path_or_repo_id, **kwargs: Any) -> BertGenerationConfig | EncoderDecoderConfig:
    """Read a config.json as whichever config class its `model_type` names."""
    hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "local_files_only") if k in kwargs}
    directory = _resolve(path_or_repo_id, hub_kwargs.get("revision"), hub_kwargs.get("cache_dir"),
                         hub_kwargs.get("local_files_only", False))
    values = read_config_json(os.path.join(directory, CONFIG_NAME))
    if values.get("model_type") == "encoder-decoder":
        return EncoderDecoderConfig.from_dict(values, **kwargs)
    return CONFIG_CLASSES.get(values.get("model_type"), BertGenerationConfig).from_dict(values, **kwargs)


def _resolve(path_or_repo_id, revision, cache_dir, local_files_only) -> str:
    from .hub import resolve_model_dir

    return resolve_model_dir(path_or_repo_id, revision=revision, cache_dir=cache_dir,
                             local_files_only=local_files_only)
