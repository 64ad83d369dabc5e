"""`BertGenerationTokenizer`: SentencePiece (`spiece.model`), a port of transformers' slow tokenizer."""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Optional, Sequence, Union

from tokenizers import AddedToken

from .base import (
    ADDED_TOKENS_FILE, SPIECE_FILE, TokenizerFileError, TokenLike, _atomic_write, _content, _load_init_kwargs,
    _make_save_directory, _resolve, _to_added_token, _to_id_list, _TokenizerBase, _write_json,
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
        save_directory = _make_save_directory(save_directory)
        config = self._common_config()
        config["tokenizer_class"] = "BertGenerationTokenizer"
        files = self._save_config_files(save_directory, config, self._added_decoder)
        # Legacy file kept for older readers: tokens placed after the SentencePiece pieces.
        extra = {t: i for t, i in self.added_tokens_encoder.items() if i >= self.vocab_size}
        if extra:
            files += (_write_json(os.path.join(save_directory, ADDED_TOKENS_FILE), extra),)
        return files + self.save_vocabulary(save_directory)
