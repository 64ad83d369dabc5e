"""Tokenizers with transformers 4.56.2 parity, without depending on transformers.

Two implementations share one calling convention (`_TokenizerBase`):

- `BertGenerationTokenizer`: SentencePiece (`spiece.model`), a port of transformers' slow
  `BertGenerationTokenizer` including the added-token splitting and decode rules of its
  `PreTrainedTokenizer` base class. It adds no special tokens (no BOS/EOS/CLS).
- `FastTokenizer`: a `tokenizers.Tokenizer` backend, built from `tokenizer.json`, or (like
  transformers' slow->fast converters) from BERT `vocab.txt` or RoBERTa `vocab.json` + `merges.txt`.

`AutoTokenizer.from_pretrained` picks one the way transformers' AutoTokenizer would.

Deliberate differences from transformers (documented, not accidental):
- `return_tensors="np"` gives int32 arrays (transformers gives int64); int32 is what JAX uses by default.
- `padding="max_length"` with neither `max_length` nor a `model_max_length` raises ValueError
  (transformers logs a warning and silently does not pad).
- A single text that encodes to no tokens is padded like any other (transformers' slow tokenizer
  returns it unpadded, because its `pad()` mistakes the empty list for an empty batch).
- Only single texts or batches of texts; no text pairs, no pre-tokenized input, no "pt"/"tf" tensors.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
from tokenizers import AddedToken

from converters.files import atomic_write_bytes

from .hub import resolve_model_dir

logger = logging.getLogger(__name__)

__all__ = [
    "AutoTokenizer",
    "BatchEncoding",
    "BertGenerationTokenizer",
    "FastTokenizer",
    "TokenizerFileError",
]

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


# --------------------------------------------------------------------------------------------------
# SentencePiece: BertGenerationTokenizer
# --------------------------------------------------------------------------------------------------


class BertGenerationTokenizer(_TokenizerBase):
    """SentencePiece tokenizer with the ids, special tokens and decode output of transformers 4.56.2.

    Special tokens that are not pieces of `spiece.model` (often `<::::>`) get ids after the last
    piece, as transformers does. Text is split on special/added tokens first, and each remaining
    span is encoded by SentencePiece on its own. No BOS/EOS is ever added.
    """

    vocab_files_names = {"vocab_file": SPIECE_FILE}

    def __init__(
        self,
        vocab_file: str,
        bos_token: Optional[TokenLike] = "<s>",
        eos_token: Optional[TokenLike] = "</s>",
        unk_token: Optional[TokenLike] = "<unk>",
        pad_token: Optional[TokenLike] = "<pad>",
        sep_token: Optional[TokenLike] = "<::::>",
        cls_token: Optional[TokenLike] = None,
        mask_token: Optional[TokenLike] = None,
        additional_special_tokens: Optional[Sequence[TokenLike]] = None,
        sp_model_kwargs: Optional[dict] = None,
        model_max_length: Optional[int] = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        split_special_tokens: bool = False,
        added_tokens_decoder: Optional[dict] = None,
        name_or_path: str = "",
        **kwargs: Any,
    ) -> None:
        import sentencepiece as spm

        if not os.path.isfile(vocab_file):
            raise TokenizerFileError(f"SentencePiece model file {vocab_file!r} does not exist")
        self.vocab_file = vocab_file
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(vocab_file)
        # Unrecognised kwargs (do_lower_case, ...) are kept only to be written back by save_pretrained.
        self.init_kwargs = {k: v for k, v in kwargs.items() if k not in ("model_input_names",)}
        self.init_kwargs["sp_model_kwargs"] = self.sp_model_kwargs

        specials = dict(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                        sep_token=sep_token, cls_token=cls_token, mask_token=mask_token)
        self._init_common(specials, additional_special_tokens, model_max_length, padding_side, truncation_side,
                          clean_up_tokenization_spaces, split_special_tokens, name_or_path)

        self._added_decoder: dict[int, AddedToken] = {}
        for index, token in (added_tokens_decoder or {}).items():
            token = token if isinstance(token, AddedToken) else _to_added_token(token)
            self._added_decoder[int(index)] = token
        self._added_encoder: dict[str, int] = {t.content: i for i, t in self._added_decoder.items()}
        # Special tokens become added tokens too (existing pieces keep their id), as in PreTrainedTokenizer.
        self._add_tokens([t for t in self._all_special_tokens_extended() if _content(t) not in self._added_encoder])

    def __getstate__(self) -> dict:
        # The SentencePiece processor cannot be pickled (e.g. for data-loader workers): keep its bytes.
        state = self.__dict__.copy()
        state["sp_model"] = self.sp_model.serialized_model_proto()
        return state

    def __setstate__(self, state: dict) -> None:
        import sentencepiece as spm

        proto = state.pop("sp_model")
        self.__dict__.update(state)
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(proto)

    # ---- vocabulary -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of SentencePiece pieces (without tokens added after them)."""
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.IdToPiece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def __len__(self) -> int:
        return self._total_size

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self._added_decoder.items())}

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self._added_decoder.items()))

    def _add_tokens(self, tokens: Iterable[TokenLike]) -> None:
        """transformers' `PreTrainedTokenizer._add_tokens(special_tokens=True)`."""
        vocab = self.get_vocab()
        next_id = len(vocab)
        for token in tokens:
            if isinstance(token, str):
                if not token or token in self._added_encoder:
                    continue
                token = AddedToken(token, lstrip=False, rstrip=False, normalized=False, special=True)
            else:
                if not token.content:
                    continue
                token = AddedToken(token.content, single_word=token.single_word, lstrip=token.lstrip,
                                   rstrip=token.rstrip, normalized=token.normalized, special=True)
            if token.content in vocab:
                index = vocab[token.content]
            else:
                index = next_id
                next_id += 1
                vocab[token.content] = index
            self._added_decoder[index] = token
            self._added_encoder[token.content] = index
        self._total_size = len(self.get_vocab())
        # Longest first, so a longer added token wins where two could start at the same place.
        contents = sorted(self._added_encoder, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        if tokens is None:
            return None
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        if token in self._added_encoder:
            return self._added_encoder[token]
        return self.sp_model.piece_to_id(token)

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False):
        ids = _to_id_list(ids)
        if isinstance(ids, int):
            return self._id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(i) for i in ids if i not in skip]

    def _id_to_token(self, index: int) -> str:
        if index in self._added_decoder:
            return self._added_decoder[index].content
        if not 0 <= index < self.vocab_size:
            raise IndexError(f"token id {index} is out of range: the vocabulary has {len(self)} tokens")
        return self.sp_model.IdToPiece(index)

    # ---- encoding -------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Pieces of `text`; added/special tokens are kept whole (transformers' `PreTrainedTokenizer.tokenize`)."""
        if self.split_special_tokens or self._split_re is None:
            parts, is_token = [text], [False]
        else:
            # re.split with one group alternates text, token, text, ...
            parts = self._split_re.split(text)
            is_token = [i % 2 == 1 for i in range(len(parts))]
        for i, part in enumerate(parts):
            if not is_token[i]:
                continue
            token = self._added_decoder[self._added_encoder[part]]
            left = parts[i - 1] if i > 0 else None
            right = parts[i + 1] if i < len(parts) - 1 else None
            if token.rstrip and right:  # the token eats the spaces on its right
                parts[i + 1] = right.lstrip()
            if token.lstrip and left:
                parts[i - 1] = left.rstrip()
            if token.single_word and left and left[-1] != " ":
                parts[i - 1] += part
                parts[i] = ""
                is_token[i] = False
            elif token.single_word and right and right[0] != " ":
                parts[i + 1] = part + parts[i + 1]
                parts[i] = ""
                is_token[i] = False
        pieces: list[str] = []
        for part, whole in zip(parts, is_token):
            if not part:
                continue
            if whole:
                pieces.append(part)
            else:
                pieces.extend(self.sp_model.encode(part, out_type=str))
        return pieces

    def _num_special_tokens_to_add(self) -> int:
        return 0

    def _encode_texts(self, texts, add_special_tokens, truncate_to):
        # add_special_tokens changes nothing: BertGeneration adds no special tokens.
        result = []
        for text in texts:
            ids = self.convert_tokens_to_ids(self.tokenize(text))
            if truncate_to is not None and len(ids) > truncate_to:
                ids = ids[:truncate_to] if self.truncation_side == "right" else ids[len(ids) - truncate_to:]
            result.append((ids, [0] * len(ids)))
        return result

    # ---- decoding -------------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """SentencePiece-decode runs of ordinary pieces; special tokens go in verbatim; then strip."""
        specials = set(self.all_special_tokens)
        out, run = "", []
        for token in tokens:
            if token in specials:
                out += self.sp_model.decode(run) + token
                run = []
            else:
                run.append(token)
        out += self.sp_model.decode(run)
        return out.strip()

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        # transformers' PreTrainedTokenizer._decode: non-special added tokens (and additional special
        # tokens appended after the pieces) are joined with spaces around the decoded runs.
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        specials = set(self.all_special_tokens)
        legacy = (set(self._added_encoder) - specials) | {
            t for t in self.additional_special_tokens if self._token_to_id(t) >= self.vocab_size
        }
        texts, run = [], []
        for token in tokens:
            if skip_special_tokens and token in specials:
                continue
            if token in legacy:
                if run:
                    piece = self.convert_tokens_to_string(run)
                    if piece:
                        texts.append(piece)
                    run = []
                texts.append(token)
            else:
                run.append(token)
        if run:
            texts.append(self.convert_tokens_to_string(run))
        return " ".join(texts)

    # ---- loading and saving ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: Union[str, os.PathLike],
        revision: Optional[str] = None,
        local_files_only: bool = False,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        **kwargs: Any,
    ) -> "BertGenerationTokenizer":
        """Load `spiece.model` (+ tokenizer_config.json, special_tokens_map.json, added_tokens.json)
        from a directory or a hub repo id; kwargs override the saved settings."""
        directory = _resolve(path_or_repo_id, revision, cache_dir, local_files_only)
        vocab_file = os.path.join(directory, SPIECE_FILE)
        if not os.path.isfile(vocab_file):
            raise TokenizerFileError(f"no {SPIECE_FILE} in {directory!r} (needed by BertGenerationTokenizer)")
        init_kwargs = _load_init_kwargs(directory, kwargs)
        init_kwargs.setdefault("name_or_path", os.fspath(path_or_repo_id))
        return cls(vocab_file, **init_kwargs)

    def save_vocabulary(self, save_directory: Union[str, os.PathLike], filename_prefix: Optional[str] = None) -> tuple:
        """Write `spiece.model` (the original file's bytes when it still exists)."""
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + SPIECE_FILE)
        if os.path.abspath(out) != os.path.abspath(self.vocab_file):
            if os.path.isfile(self.vocab_file):
                with open(self.vocab_file, "rb") as handle:
                    data = handle.read()
            else:
                data = self.sp_model.serialized_model_proto()
            _atomic_write(out, data)
        return (out,)

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> tuple:
        """Write the files transformers' `BertGenerationTokenizer.from_pretrained` reads back identically."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"{save_directory!r} is a file; save_pretrained needs a directory")
        os.makedirs(save_directory, exist_ok=True)
        config = self._common_config()
        config["tokenizer_class"] = "BertGenerationTokenizer"
        files = self._save_config_files(save_directory, config, self._added_decoder)
        # Legacy file kept for older readers: tokens placed after the SentencePiece pieces.
        extra = {t: i for t, i in self.added_tokens_encoder.items() if i >= self.vocab_size}
        if extra:
            files += (_write_json(os.path.join(save_directory, ADDED_TOKENS_FILE), extra),)
        return files + self.save_vocabulary(save_directory)


# --------------------------------------------------------------------------------------------------
# tokenizers library: tokenizer.json, BERT WordPiece, RoBERTa byte-level BPE
# --------------------------------------------------------------------------------------------------

def _kind_defaults(kind: str) -> dict:
    """Special-token defaults of the transformers class each kind stands for (fresh objects each call)."""
    if kind == "bert":  # BertTokenizerFast.__init__
        return dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    if kind == "roberta":  # RobertaTokenizerFast.__init__; its mask token eats the space on its left
        return dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                    pad_token="<pad>", mask_token="<mask>")
    return {}


_KIND_CLASS = {"bert": "BertTokenizer", "roberta": "RobertaTokenizer", "generic": "PreTrainedTokenizerFast"}


def _load_wordpiece_vocab(path: str) -> dict[str, int]:
    """transformers' `load_vocab`: one token a line, id = line number (a repeated token keeps its last id)."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    return {line.rstrip("\n"): index for index, line in enumerate(lines)}


def _load_bpe_merges(path: str) -> list[tuple[str, ...]]:
    # transformers' RobertaTokenizer drops the first line (the "#version" header) and the last
    # element (empty after the final newline) unconditionally; we do the same so ids match.
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1:-1]
    merges = [tuple(line.split()) for line in lines]
    return list(dict.fromkeys(m for m in merges if m))


class FastTokenizer(_TokenizerBase):
    """A `tokenizers.Tokenizer` with transformers' PreTrainedTokenizerFast behaviour.

    `kind` selects the class-specific rules transformers applies on load: "bert" (BertTokenizerFast),
    "roberta" (RobertaTokenizerFast) or "generic" (PreTrainedTokenizerFast).
    """

    def __init__(
        self,
        backend,
        kind: str = "generic",
        bos_token: Optional[TokenLike] = None,
        eos_token: Optional[TokenLike] = None,
        unk_token: Optional[TokenLike] = None,
        sep_token: Optional[TokenLike] = None,
        pad_token: Optional[TokenLike] = None,
        cls_token: Optional[TokenLike] = None,
        mask_token: Optional[TokenLike] = None,
        additional_special_tokens: Optional[Sequence[TokenLike]] = None,
        model_max_length: Optional[int] = None,
        padding_side: Optional[str] = None,
        truncation_side: Optional[str] = None,
        clean_up_tokenization_spaces: bool = False,
        split_special_tokens: bool = False,
        added_tokens_decoder: Optional[dict] = None,
        name_or_path: str = "",
        **kwargs: Any,
    ) -> None:
        if kind not in _KIND_CLASS:
            raise ValueError(f"kind must be one of {sorted(_KIND_CLASS)}, got {kind!r}")
        if kind == "roberta" and isinstance(mask_token, str):
            mask_token = AddedToken(mask_token, lstrip=True, rstrip=False, normalized=False)
        self.kind = kind
        self._backend = backend
        # transformers turns the file's padding/truncation into defaults, then drives both per call.
        file_padding, file_truncation = backend.padding, backend.truncation
        if padding_side is None:
            padding_side = file_padding["direction"] if file_padding else "right"
        if truncation_side is None:
            truncation_side = file_truncation["direction"] if file_truncation else "right"
        if pad_token is None and file_padding and kind == "generic":
            pad_token = file_padding["pad_token"]
        backend.no_padding()
        backend.no_truncation()
        self.init_kwargs = dict(kwargs)

        specials = dict(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                        sep_token=sep_token, cls_token=cls_token, mask_token=mask_token)
        self._init_common(specials, additional_special_tokens, model_max_length, padding_side, truncation_side,
                          clean_up_tokenization_spaces, split_special_tokens, name_or_path)
        backend.encode_special_tokens = self.split_special_tokens

        # PreTrainedTokenizerFast.__init__: register saved added tokens, then any special token the
        # backend does not know yet (existing vocabulary entries keep their ids).
        to_add: list[AddedToken] = []
        for _, token in sorted((added_tokens_decoder or {}).items()):
            to_add.append(token if isinstance(token, AddedToken) else _to_added_token(token))
        known = {t.content for t in backend.get_added_tokens_decoder().values()} | {t.content for t in to_add}
        for token in self._all_special_tokens_extended():
            # As in transformers, an AddedToken is always (re-)registered so its strip flags apply;
            # a plain string only when the backend does not know it yet.
            if isinstance(token, AddedToken):
                to_add.append(AddedToken(token.content, single_word=token.single_word, lstrip=token.lstrip,
                                         rstrip=token.rstrip, normalized=token.normalized, special=True))
            elif token not in known:
                to_add.append(AddedToken(token, special=True))
        special_texts = set(self.all_special_tokens)
        for token in to_add:
            token.special = token.special or token.content in special_texts
        if to_add:
            backend.add_tokens(to_add)
        self._apply_class_rules(kwargs)

    def _apply_class_rules(self, kwargs: dict) -> None:
        """The normalizer / pre-tokenizer / post-processor fix-ups transformers' fast classes do in __init__."""
        from tokenizers import normalizers, pre_tokenizers, processors

        backend = self._backend
        add_prefix_space = kwargs.get("add_prefix_space", False)
        if self.kind == "bert" and backend.normalizer is not None:
            state = json.loads(backend.normalizer.__getstate__())
            wanted = {
                "lowercase": kwargs.get("do_lower_case", True),
                "strip_accents": kwargs.get("strip_accents"),
                "handle_chinese_chars": kwargs.get("tokenize_chinese_chars", True),
            }
            if any(state.get(k, v) != v for k, v in wanted.items()):
                normalizer_class = getattr(normalizers, state.pop("type"))
                state.update(wanted)
                backend.normalizer = normalizer_class(**state)
        if self.kind == "roberta" and backend.post_processor is not None:
            state = json.loads(backend.post_processor.__getstate__())
            trim_offsets = kwargs.get("trim_offsets", True)
            changed = False
            for key, value in (("add_prefix_space", add_prefix_space), ("trim_offsets", trim_offsets)):
                if state.get(key, value) != value:
                    state[key] = value
                    changed = True
            if changed:
                for key in ("sep", "cls"):
                    if key in state:
                        state[key] = tuple(state[key])
                backend.post_processor = getattr(processors, state.pop("type"))(**state)
        # Every fast tokenizer: the pre-tokenizer's add_prefix_space follows the kwarg (default False).
        if backend.pre_tokenizer is not None:
            try:
                state = json.loads(backend.pre_tokenizer.__getstate__())
            except Exception:  # custom pre-tokenizers cannot be serialized; transformers skips them too
                state = {}
            if "add_prefix_space" in state and state["add_prefix_space"] != add_prefix_space:
                state["add_prefix_space"] = add_prefix_space
                backend.pre_tokenizer = getattr(pre_tokenizers, state.pop("type"))(**state)

    # ---- builders for the files transformers converts -------------------------------------------

    @staticmethod
    def _build_wordpiece(vocab_file: str, kwargs: dict):
        """BertConverter: BertNormalizer, BertPreTokenizer, WordPiece, [CLS] A [SEP] template."""
        from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece

        vocab = _load_wordpiece_vocab(vocab_file)
        cls_token, sep_token = str(_content(kwargs["cls_token"])), str(_content(kwargs["sep_token"]))
        backend = Tokenizer(WordPiece(vocab, unk_token=str(_content(kwargs["unk_token"]))))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=kwargs.get("tokenize_chinese_chars", True),
            strip_accents=kwargs.get("strip_accents"),
            lowercase=kwargs.get("do_lower_case", True),
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        ids = FastTokenizer._slow_special_ids(vocab, kwargs)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0",
            pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, ids[cls_token]), (sep_token, ids[sep_token])],
        )
        return backend

    @staticmethod
    def _build_bpe(vocab_file: str, merges_file: str, kwargs: dict):
        """RobertaConverter: byte-level BPE with <s> A </s> post-processing."""
        from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
        from tokenizers.models import BPE

        vocab = _read_json(vocab_file)
        add_prefix_space = kwargs.get("add_prefix_space", False)
        backend = Tokenizer(BPE(vocab=vocab, merges=_load_bpe_merges(merges_file), dropout=None,
                                continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        backend.decoder = decoders.ByteLevel()
        ids = FastTokenizer._slow_special_ids(vocab, kwargs)
        sep, cls = str(_content(kwargs["sep_token"])), str(_content(kwargs["cls_token"]))
        backend.post_processor = processors.RobertaProcessing(
            sep=(sep, ids[sep]), cls=(cls, ids[cls]), add_prefix_space=add_prefix_space, trim_offsets=True
        )
        return backend

    @staticmethod
    def _slow_special_ids(vocab: dict[str, int], kwargs: dict) -> dict[str, int]:
        """Ids the slow tokenizer gives special tokens: vocab entries, else appended in attribute order."""
        ids: dict[str, int] = {}
        next_id = len(vocab)
        saved = {_content(t): int(i) for i, t in kwargs.get("added_tokens_decoder", {}).items()}
        for name in SPECIAL_TOKEN_NAMES:
            token = kwargs.get(name)
            if token is None:
                continue
            text = str(_content(token))
            if text in vocab:
                ids[text] = vocab[text]
            elif text in saved:
                ids[text] = saved[text]
            elif text not in ids:
                ids[text] = next_id
                next_id += 1
        return ids

    # ---- vocabulary -----------------------------------------------------------------------------

    @property
    def backend_tokenizer(self):
        """The `tokenizers.Tokenizer` doing the work."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self._backend.get_added_tokens_decoder().items()))

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        if tokens is None:
            return None
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> Optional[int]:
        index = self._backend.token_to_id(token)
        if index is None:
            unk = self._special_str("unk_token")
            return None if unk is None else self._backend.token_to_id(unk)
        return index

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False):
        ids = _to_id_list(ids)
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(i) for i in ids if i not in skip]

    # ---- encoding / decoding --------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        return self._backend.encode(text, add_special_tokens=False).tokens

    def _num_special_tokens_to_add(self) -> int:
        return self._backend.num_special_tokens_to_add(False)

    def _encode_texts(self, texts, add_special_tokens, truncate_to):
        # Encode bare, truncate, then add the special tokens: what the Rust side does when
        # transformers sets truncation on the backend, without mutating the backend per call.
        budget = None
        if truncate_to is not None:
            budget = truncate_to - (self._num_special_tokens_to_add() if add_special_tokens else 0)
            if budget < 0:
                raise ValueError(
                    f"max_length={truncate_to} is too small for the {self._num_special_tokens_to_add()} "
                    "special tokens this tokenizer adds"
                )
        result = []
        for encoding in self._backend.encode_batch(texts, add_special_tokens=False):
            if budget is not None and len(encoding.ids) > budget:
                encoding.truncate(budget, direction=self.truncation_side)
            if add_special_tokens:
                encoding = self._backend.post_process(encoding, None, True)
            result.append((list(encoding.ids), list(encoding.type_ids)))
        return result

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        decoder = self._backend.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- loading and saving ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: Union[str, os.PathLike],
        revision: Optional[str] = None,
        local_files_only: bool = False,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        kind: Optional[str] = None,
        **kwargs: Any,
    ) -> "FastTokenizer":
        """Load `tokenizer.json`, else `vocab.txt` (BERT WordPiece), else `vocab.json` + `merges.txt`
        (RoBERTa BPE), with tokenizer_config.json settings; kwargs override them."""
        directory = _resolve(path_or_repo_id, revision, cache_dir, local_files_only)
        if kind is None:
            kind = _kind_from_files(directory)
            if kind in (None, "sentencepiece"):
                kind = _kind_from_directory_files(directory)
        return cls._from_directory(directory, kind, os.fspath(path_or_repo_id), kwargs)

    @classmethod
    def _from_directory(cls, directory: str, kind: str, name: str, user_kwargs: dict) -> "FastTokenizer":
        from tokenizers import Tokenizer

        kwargs = {**_kind_defaults(kind), **_load_init_kwargs(directory, user_kwargs)}
        tokenizer_json = os.path.join(directory, TOKENIZER_FILE)
        if os.path.isfile(tokenizer_json):
            backend = Tokenizer.from_file(tokenizer_json)
        elif kind == "bert" and os.path.isfile(os.path.join(directory, BERT_VOCAB_FILE)):
            backend = cls._build_wordpiece(os.path.join(directory, BERT_VOCAB_FILE), kwargs)
            # The slow BertTokenizer transformers converts from defaults to cleaning up spaces.
            kwargs.setdefault("clean_up_tokenization_spaces", True)
        elif kind == "roberta" and all(os.path.isfile(os.path.join(directory, f)) for f in BPE_FILES):
            backend = cls._build_bpe(*(os.path.join(directory, f) for f in BPE_FILES), kwargs)
        else:
            wanted = {"bert": f"{TOKENIZER_FILE} or {BERT_VOCAB_FILE}",
                      "roberta": f"{TOKENIZER_FILE} or {BPE_VOCAB_FILE} + {BPE_MERGES_FILE}"}.get(kind, TOKENIZER_FILE)
            raise TokenizerFileError(f"no tokenizer files in {directory!r}: expected {wanted}")
        kwargs.setdefault("name_or_path", name)
        return cls(backend, kind=kind, **kwargs)

    def save_vocabulary(self, save_directory: Union[str, os.PathLike], filename_prefix: Optional[str] = None) -> tuple:
        """Write the model's own vocabulary files (vocab.txt, or vocab.json + merges.txt)."""
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        # The Rust side writes in place; write into a scratch dir first, then move each file atomically.
        written = []
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".tmp-vocab-") as scratch:
            for path in self._backend.model.save(scratch, filename_prefix):
                target = os.path.join(save_directory, os.path.basename(path))
                os.replace(path, target)
                written.append(target)
        return tuple(written)

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> tuple:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and the vocabulary files,
        which transformers' AutoTokenizer loads back with the same ids."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"{save_directory!r} is a file; save_pretrained needs a directory")
        os.makedirs(save_directory, exist_ok=True)
        config = self._common_config()
        config["tokenizer_class"] = _KIND_CLASS[self.kind]
        files = self._save_config_files(save_directory, config, self.added_tokens_decoder)
        files += (_atomic_write(os.path.join(save_directory, TOKENIZER_FILE), self._backend.to_str()),)
        try:
            files += self.save_vocabulary(save_directory)
        except Exception as err:  # some models (e.g. Unigram) have no separate vocabulary format
            logger.info("no separate vocabulary files written: %s", err)
        return files


# --------------------------------------------------------------------------------------------------
# AutoTokenizer
# --------------------------------------------------------------------------------------------------

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


class AutoTokenizer:
    """Pick and load the right tokenizer for a checkpoint directory or hub repo id."""

    def __init__(self) -> None:
        raise TypeError("use AutoTokenizer.from_pretrained(path_or_repo_id)")

    @staticmethod
    def from_pretrained(
        path_or_repo_id: Union[str, os.PathLike],
        revision: Optional[str] = None,
        local_files_only: bool = False,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        **kwargs: Any,
    ) -> Union[BertGenerationTokenizer, FastTokenizer]:
        """SentencePiece (`spiece.model` / BertGenerationTokenizer) or the `tokenizers` library.

        Order: tokenizer_config.json's `tokenizer_class`, config.json (encoder model_type for an
        encoder-decoder), then the files present: spiece.model, tokenizer.json, vocab.txt,
        vocab.json + merges.txt. kwargs (e.g. `pad_token="<pad>"`) override saved settings.
        """
        # transformers' switches that pick implementations we do not have: ids are the same anyway.
        kwargs.pop("use_fast", None)
        kwargs.pop("trust_remote_code", None)
        directory = _resolve(path_or_repo_id, revision, cache_dir, local_files_only)
        name = os.fspath(path_or_repo_id)
        kind = _kind_from_files(directory)
        has_spiece = os.path.isfile(os.path.join(directory, SPIECE_FILE))
        if kind == "sentencepiece" or (kind is None and has_spiece):
            if not has_spiece:
                raise TokenizerFileError(f"no {SPIECE_FILE} in {directory!r} (needed by BertGenerationTokenizer)")
            return BertGenerationTokenizer.from_pretrained(directory, name_or_path=name, **kwargs)
        if kind is None:
            kind = _kind_from_directory_files(directory)
        return FastTokenizer._from_directory(directory, kind, name, kwargs)
