"""The calling convention every tokenizer here shares (`_TokenizerBase`: padding, truncation, `__call__`,
decode, special tokens), `BatchEncoding`, and reading / writing transformers' tokenizer config files."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional, Sequence, Union

import numpy as np
from tokenizers import AddedToken

from converters.files import atomic_write_bytes

from ..hub import resolve_model_dir

logger = logging.getLogger(__name__)


SPIECE_FILE = "spiece.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_FILE = "tokenizer.json"
BERT_VOCAB_FILE = "vocab.txt"
BPE_VOCAB_FILE = "vocab.json"
BPE_MERGES_FILE = "merges.txt"
BPE_FILES = (BPE_VOCAB_FILE, BPE_MERGES_FILE)

# The same sentinels transformers uses: above LARGE_INTEGER a model_max_length means "no limit".
LARGE_INTEGER = int(1e20)
VERY_LARGE_INTEGER = int(1e30)

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Only the tokenizer files: hub resolution must not download model weights.
TOKENIZER_PATTERNS = ("*.json", "*.model", "*.txt")


class TokenizerFileError(FileNotFoundError, ValueError):
    """A tokenizer file is missing. Both a FileNotFoundError and a ValueError, so either `except` works."""


TokenLike = Union[str, AddedToken]


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _atomic_write(path: str, data: Union[str, bytes]) -> str:
    """Write `data` to `path` atomically (readers never see half a file); returns the path."""
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _write_json(path: str, obj: Any) -> str:
    # Same formatting transformers uses, so diffs against its files stay small.
    return _atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _make_save_directory(path: Union[str, os.PathLike]) -> str:
    """The directory save_pretrained writes into, created if missing; a file there is an error."""
    path = os.fspath(path)
    if os.path.isfile(path):
        raise NotADirectoryError(f"{path!r} is a file; save_pretrained needs a directory")
    os.makedirs(path, exist_ok=True)
    return path


def _to_added_token(value: Any, special: Optional[bool] = None) -> Any:
    """Turn a serialized AddedToken dict (with or without "__type") into an AddedToken; leave others alone."""
    if isinstance(value, dict) and "content" in value:
        fields = {k: v for k, v in value.items() if k != "__type"}
        if special is not None:
            fields["special"] = special
        return AddedToken(**fields)
    return value


def _added_token_state(token: AddedToken) -> dict:
    return {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
        "special": token.special,
    }


def _to_id_list(token_ids: Any) -> Union[int, list]:
    """Accept an int, a list, or numpy/jax/torch arrays; return an int or a (nested) list of ints."""
    if isinstance(token_ids, (int, np.integer)):
        return int(token_ids)
    if hasattr(token_ids, "shape") and hasattr(token_ids, "dtype"):
        array = np.asarray(token_ids)
        return int(array) if array.ndim == 0 else array.tolist()
    return [_to_id_list(t) for t in token_ids]


def _max_length_is_set(value: Optional[int]) -> bool:
    return value is not None and value <= LARGE_INTEGER


class BatchEncoding(dict):
    """The result of calling a tokenizer: a plain dict with attribute access (`enc.input_ids`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; fields: {sorted(self)}") from None


# --------------------------------------------------------------------------------------------------
# Shared calling convention
# --------------------------------------------------------------------------------------------------


class _TokenizerBase:
    """Special-token attributes, `__call__` (padding/truncation), decode plumbing, shared by both tokenizers."""

    model_input_names = ["input_ids", "attention_mask"]

    def _init_common(
        self,
        special_tokens: dict,
        additional_special_tokens: Optional[Sequence[TokenLike]],
        model_max_length: Optional[int],
        padding_side: str,
        truncation_side: str,
        clean_up_tokenization_spaces: bool,
        split_special_tokens: bool,
        name_or_path: str,
    ) -> None:
        # Special tokens keep the AddedToken (if one was given) so its strip flags survive.
        self._special: dict[str, Optional[TokenLike]] = {name: special_tokens.get(name) for name in SPECIAL_TOKEN_NAMES}
        self._additional: list[TokenLike] = list(additional_special_tokens or [])
        self.model_max_length = model_max_length if model_max_length is not None else VERY_LARGE_INTEGER
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.split_special_tokens = bool(split_special_tokens)
        self.name_or_path = name_or_path

    # ---- special tokens -------------------------------------------------------------------------

    def _special_str(self, name: str) -> Optional[str]:
        value = self._special[name]
        return None if value is None else str(value.content if isinstance(value, AddedToken) else value)

    def _set_special(self, name: str, value: Optional[TokenLike]) -> None:
        # Like transformers: only the attribute changes; the token is not added to the vocabulary.
        if value is not None and not isinstance(value, (str, AddedToken)):
            raise ValueError(f"{name} must be a string or None, got {type(value).__name__}")
        self._special[name] = value

    @property
    def additional_special_tokens(self) -> list[str]:
        return [t.content if isinstance(t, AddedToken) else str(t) for t in self._additional]

    @property
    def special_tokens_map(self) -> dict:
        """Set special tokens by attribute name, as strings (what `special_tokens_map.json` holds)."""
        result: dict[str, Any] = {name: self._special_str(name) for name in SPECIAL_TOKEN_NAMES if self._special[name]}
        if self._additional:
            result["additional_special_tokens"] = self.additional_special_tokens
        return result

    def _all_special_tokens_extended(self) -> list[TokenLike]:
        """Unique special tokens in transformers' order: bos, eos, unk, sep, pad, cls, mask, additional."""
        seen: set[str] = set()
        result: list[TokenLike] = []
        for value in [self._special[n] for n in SPECIAL_TOKEN_NAMES] + self._additional:
            if value is None:
                continue
            text = value.content if isinstance(value, AddedToken) else str(value)
            if text and text not in seen:
                seen.add(text)
                result.append(value)
        return result

    @property
    def all_special_tokens(self) -> list[str]:
        return [t.content if isinstance(t, AddedToken) else str(t) for t in self._all_special_tokens_extended()]

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    # ---- abstract pieces ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def convert_tokens_to_ids(self, tokens):  # pragma: no cover - overridden
        raise NotImplementedError

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):  # pragma: no cover - overridden
        raise NotImplementedError

    def tokenize(self, text: str) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _num_special_tokens_to_add(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _encode_texts(
        self, texts: list[str], add_special_tokens: bool, truncate_to: Optional[int]
    ) -> list[tuple[list[int], list[int]]]:  # pragma: no cover - overridden
        """Return (input_ids, token_type_ids) per text, truncated so the result fits `truncate_to`."""
        raise NotImplementedError

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    # ---- encoding -------------------------------------------------------------------------------

    def _strategies(self, padding, truncation, max_length):
        """Mirror transformers' `_get_padding_truncation_strategies` for single sequences."""
        # transformers' backward-compatible rule: max_length alone switches truncation on.
        if max_length is not None and padding is False and truncation is None:
            truncation = True

        if padding in (False, None, "do_not_pad"):
            pad_mode = None
        elif padding in (True, "longest"):
            pad_mode = "longest"
        elif padding == "max_length":
            pad_mode = "max_length"
        else:
            raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")

        if truncation in (False, None, "do_not_truncate"):
            truncate = False
        elif truncation in (True, "longest_first", "only_first"):
            truncate = True
        else:
            raise ValueError(f"truncation must be False, True, 'longest_first' or 'only_first', got {truncation!r}")

        if max_length is None:
            has_model_max = _max_length_is_set(self.model_max_length)
            if pad_mode == "max_length":
                if not has_model_max:
                    raise ValueError(
                        "padding='max_length' needs max_length=..., and this tokenizer has no model_max_length"
                    )
                max_length = self.model_max_length
            if truncate:
                if has_model_max:
                    max_length = self.model_max_length
                else:  # transformers: warn and do not truncate
                    logger.warning("truncation=True but no max_length and no model_max_length: not truncating")
                    truncate = False
        elif max_length <= 0:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")

        if pad_mode is not None and (self.pad_token is None or self.pad_token_id is None or self.pad_token_id < 0):
            raise ValueError(
                "padding was requested but the tokenizer has no pad token; pass pad_token=... "
                "(for example pad_token=tokenizer.eos_token) when loading it"
            )
        return pad_mode, truncate, max_length

    def __call__(
        self,
        text: Union[str, Sequence[str]],
        padding: Union[bool, str] = False,
        truncation: Union[bool, str, None] = None,
        max_length: Optional[int] = None,
        add_special_tokens: bool = True,
        return_tensors: Optional[str] = None,
        return_attention_mask: bool = True,
        return_token_type_ids: bool = False,
        pad_to_multiple_of: Optional[int] = None,
        padding_side: Optional[str] = None,
    ) -> BatchEncoding:
        """Encode one text (flat lists) or a batch of texts (lists of lists), like transformers' `__call__`.

        `truncation=None` (the default) behaves as in transformers: it is switched on when only
        `max_length` is given. `return_tensors`: None, "np" (int32 numpy) or "jax" (int32 jax arrays);
        with tensors a single text gets a leading batch axis of 1.
        """
        single = isinstance(text, str)
        if single:
            texts = [text]
        elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            texts = list(text)
        else:
            raise ValueError(
                f"text must be a string or a list/tuple of strings, got {type(text).__name__}"
                + (" containing non-strings" if isinstance(text, (list, tuple)) else "")
            )
        if return_tensors not in (None, "np", "jax"):
            raise ValueError(f"return_tensors must be None, 'np' or 'jax', got {return_tensors!r}")
        side = padding_side if padding_side is not None else self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")

        pad_mode, truncate, max_length = self._strategies(padding, truncation, max_length)
        if truncate and pad_mode and pad_to_multiple_of and max_length % pad_to_multiple_of:
            raise ValueError(
                f"truncation and padding are both on, but max_length={max_length} is not a multiple of "
                f"pad_to_multiple_of={pad_to_multiple_of}"
            )
        encoded = self._encode_texts(texts, add_special_tokens, max_length if truncate else None)

        if pad_mode == "longest":
            target = max((len(ids) for ids, _ in encoded), default=0)
        elif pad_mode == "max_length":
            target = max_length
        else:
            target = None
        if target is not None and pad_to_multiple_of and target % pad_to_multiple_of:
            target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of

        fields: dict[str, list] = {"input_ids": []}
        if return_token_type_ids:
            fields["token_type_ids"] = []
        if return_attention_mask:
            fields["attention_mask"] = []
        for ids, type_ids in encoded:
            mask = [1] * len(ids)
            missing = target - len(ids) if target is not None else 0
            if missing > 0:
                pad_ids, zeros = [self.pad_token_id] * missing, [0] * missing
                if side == "right":
                    ids, type_ids, mask = ids + pad_ids, type_ids + zeros, mask + zeros
                else:
                    ids, type_ids, mask = pad_ids + ids, zeros + type_ids, zeros + mask
            fields["input_ids"].append(ids)
            if return_token_type_ids:
                fields["token_type_ids"].append(type_ids)
            if return_attention_mask:
                fields["attention_mask"].append(mask)

        if return_tensors is None:
            return BatchEncoding({k: v[0] if single else v for k, v in fields.items()})
        lengths = {len(row) for row in fields["input_ids"]}
        if len(lengths) > 1:
            raise ValueError(
                f"cannot make a {return_tensors!r} tensor from sequences of different lengths {sorted(lengths)}; "
                "pass padding=True (and truncation=True if needed)"
            )
        arrays = {k: np.asarray(v, dtype=np.int32).reshape(len(v), -1) for k, v in fields.items()}
        if return_tensors == "jax":
            import jax.numpy as jnp

            arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
        return BatchEncoding(arrays)

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        padding: Union[bool, str] = False,
        truncation: Union[bool, str, None] = None,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
    ):
        """Ids of one text (a list, or a [1, L] array with `return_tensors`)."""
        if not isinstance(text, str):
            raise ValueError(f"encode() takes one string, got {type(text).__name__}; call the tokenizer for batches")
        return self(
            text,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            add_special_tokens=add_special_tokens,
            return_tensors=return_tensors,
            return_attention_mask=False,
        )["input_ids"]

    # ---- decoding -------------------------------------------------------------------------------

    def decode(
        self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: Optional[bool] = None
    ) -> str:
        """Ids (list, numpy or jax array, or one int) -> text, with transformers' rules for this tokenizer."""
        ids = _to_id_list(token_ids)
        ids = [ids] if isinstance(ids, int) else ids
        if ids and isinstance(ids[0], list):
            raise ValueError("decode() takes one sequence of ids; use batch_decode() for a batch")
        text = self._decode(ids, skip_special_tokens)
        clean = clean_up_tokenization_spaces
        if clean is None:
            clean = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean else text

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: Optional[bool] = None
    ) -> list[str]:
        rows = _to_id_list(sequences)
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in rows]

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """transformers' English detokenization clean-up (spaces before punctuation and contractions)."""
        return (
            text.replace(" .", ".")
            .replace(" ?", "?")
            .replace(" !", "!")
            .replace(" ,", ",")
            .replace(" ' ", "'")
            .replace(" n't", "n't")
            .replace(" 'm", "'m")
            .replace(" 's", "'s")
            .replace(" 've", "'ve")
            .replace(" 're", "'re")
        )

    # ---- saving ---------------------------------------------------------------------------------

    def _common_config(self) -> dict:
        config = dict(self.init_kwargs)
        config.update(self.special_tokens_map)
        config.update(
            {
                "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                "model_max_length": self.model_max_length,
                "extra_special_tokens": {},
            }
        )
        # Only written when not the default, as transformers only saves what was passed in.
        for name, default in (("padding_side", "right"), ("truncation_side", "right"), ("split_special_tokens", False)):
            value = getattr(self, name)
            if value != default or name in self.init_kwargs:
                config[name] = value
        return config

    def _save_config_files(self, directory: str, config: dict, added_tokens: dict[int, AddedToken]) -> tuple:
        config["added_tokens_decoder"] = {str(i): _added_token_state(t) for i, t in sorted(added_tokens.items())}
        return (
            _write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), config),
            _write_json(os.path.join(directory, SPECIAL_TOKENS_MAP_FILE), self.special_tokens_map),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"len={len(self)}, special_tokens={self.special_tokens_map})"
        )


def _special_token_property(name: str) -> property:
    return property(lambda self: self._special_str(name), lambda self, value: self._set_special(name, value))


def _special_id_property(name: str) -> property:
    def getter(self):
        token = self._special_str(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    return property(getter)


for _name in SPECIAL_TOKEN_NAMES:
    setattr(_TokenizerBase, _name, _special_token_property(_name))
    setattr(_TokenizerBase, _name + "_id", _special_id_property(_name))
del _name


# --------------------------------------------------------------------------------------------------
# Reading tokenizer_config.json / special_tokens_map.json / added_tokens.json like transformers
# --------------------------------------------------------------------------------------------------

# Keys of tokenizer_config.json that are bookkeeping, not constructor arguments (`backend`: transformers 5
# names the library behind the tokenizer, "tokenizers" or "sentencepiece").
_DROP_CONFIG_KEYS = ("tokenizer_class", "auto_map", "name_or_path", "tokenizer_file", "special_tokens_map_file",
                     "init_inputs", "vocab_file", "merges_file", "processor_class", "chat_template", "backend")


def _load_init_kwargs(directory: str, user_kwargs: dict) -> dict:
    """Constructor kwargs from the saved files, following transformers' `_from_pretrained` precedence.

    tokenizer_config.json, then the caller's kwargs; the legacy special_tokens_map.json and
    added_tokens.json are only read when the config has no `added_tokens_decoder`.
    """
    config_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    kwargs = _read_json(config_path) if os.path.isfile(config_path) else {}
    for key in _DROP_CONFIG_KEYS:
        kwargs.pop(key, None)
    kwargs.update(user_kwargs)

    added: dict[int, AddedToken] = {}
    if "added_tokens_decoder" in kwargs:
        for index, token in kwargs["added_tokens_decoder"].items():
            added[int(index)] = token if isinstance(token, AddedToken) else _to_added_token(token)
    else:
        map_path = os.path.join(directory, SPECIAL_TOKENS_MAP_FILE)
        if os.path.isfile(map_path):
            for key, value in _read_json(map_path).items():
                if user_kwargs.get(key):  # the caller's value wins over the file
                    continue
                if key == "additional_special_tokens" and isinstance(value, list):
                    merged = list(kwargs.get("additional_special_tokens") or [])
                    for token in value:
                        token = _to_added_token(token, special=True)
                        if token not in merged:
                            merged.append(token)
                    value = merged
                else:
                    value = _to_added_token(value, special=True)
                kwargs[key] = value
        added_path = os.path.join(directory, ADDED_TOKENS_FILE)
        if os.path.isfile(added_path):
            specials = {str(_content(kwargs[k])) for k in SPECIAL_TOKEN_NAMES if kwargs.get(k) is not None}
            specials.update(str(_content(t)) for t in kwargs.get("additional_special_tokens") or [])
            for text, index in _read_json(added_path).items():
                special = text in specials
                added[int(index)] = AddedToken(
                    text, lstrip=False, rstrip=False, normalized=not special, special=special
                )
        # A tokenizer.json's added tokens, for a config saved before added_tokens_decoder existed.
        tokenizer_json = os.path.join(directory, TOKENIZER_FILE)
        if os.path.isfile(tokenizer_json):
            for entry in _read_json(tokenizer_json).get("added_tokens", []):
                entry = dict(entry)
                index = int(entry.pop("id"))
                added[index] = AddedToken(**entry)
    kwargs["added_tokens_decoder"] = added

    # Special tokens saved as AddedToken dicts; and reuse the added token's flags for a special token.
    by_content = {t.content: t for t in added.values()}
    for key in SPECIAL_TOKEN_NAMES:
        value = _to_added_token(kwargs.get(key))
        if value is not None and by_content:
            value = by_content.get(_content(value), value)
        if key in kwargs:
            kwargs[key] = value
    if kwargs.get("additional_special_tokens"):
        kwargs["additional_special_tokens"] = [_to_added_token(t) for t in kwargs["additional_special_tokens"]]
    return kwargs


def _content(token: Any) -> Any:
    return token.content if isinstance(token, AddedToken) else token


def _resolve(path_or_repo_id, revision, cache_dir, local_files_only) -> str:
    return resolve_model_dir(
        path_or_repo_id,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        allow_patterns=TOKENIZER_PATTERNS,
    )


# Which tokenizer a checkpoint directory holds (AutoTokenizer and FastTokenizer.from_pretrained decide by it).
_CLASS_KIND = {
    "BertGenerationTokenizer": "sentencepiece",
    "BertTokenizer": "bert",
    "RobertaTokenizer": "roberta",
    "PreTrainedTokenizer": "generic",
}
_MODEL_TYPE_KIND = {"bert-generation": "sentencepiece", "bert": "bert", "roberta": "roberta"}


def _kind_from_files(directory: str) -> Optional[str]:
    """What the checkpoint says: tokenizer_config's tokenizer_class, else config.json (the encoder's
    model_type for an encoder-decoder), as transformers' AutoTokenizer decides."""
    config_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    tokenizer_class = _read_json(config_path).get("tokenizer_class") if os.path.isfile(config_path) else None
    model_config_path = os.path.join(directory, "config.json")
    model_config = _read_json(model_config_path) if os.path.isfile(model_config_path) else {}
    tokenizer_class = tokenizer_class or model_config.get("tokenizer_class")
    if tokenizer_class:
        return _CLASS_KIND.get(tokenizer_class.removesuffix("Fast"), "generic")
    if model_config.get("model_type") == "encoder-decoder" or "encoder" in model_config:
        model_config = model_config.get("encoder") or {}
    return _MODEL_TYPE_KIND.get(model_config.get("model_type"))


def _kind_from_directory_files(directory: str) -> str:
    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(directory, name))

    if has(TOKENIZER_FILE):
        return "generic"
    if has(BERT_VOCAB_FILE):
        return "bert"
    if has(BPE_VOCAB_FILE) and has(BPE_MERGES_FILE):
        return "roberta"
    raise TokenizerFileError(
        f"no tokenizer files in {directory!r}: expected {SPIECE_FILE}, {TOKENIZER_FILE}, {BERT_VOCAB_FILE} "
        f"or {BPE_VOCAB_FILE} + {BPE_MERGES_FILE}"
    )
