"""`FastTokenizer`: a `tokenizers.Tokenizer` backend from tokenizer.json, BERT vocab.txt or RoBERTa
vocab.json + merges.txt."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Optional, Sequence, Union

from tokenizers import AddedToken

from .base import (
    BERT_VOCAB_FILE, BPE_FILES, BPE_MERGES_FILE, BPE_VOCAB_FILE, SPECIAL_TOKEN_NAMES, TOKENIZER_FILE,
    TokenizerFileError, TokenLike, _atomic_write, _content, _kind_from_directory_files, _kind_from_files,
    _load_init_kwargs, _make_save_directory, _read_json, _resolve, _to_added_token, _to_id_list, _TokenizerBase,
)

logger = logging.getLogger(__name__)


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
        save_directory = _make_save_directory(save_directory)
        config = self._common_config()
        config["tokenizer_class"] = _KIND_CLASS[self.kind]
        files = self._save_config_files(save_directory, config, self.added_tokens_decoder)
        files += (_atomic_write(os.path.join(save_directory, TOKENIZER_FILE), self._backend.to_str()),)
        try:
            files += self.save_vocabulary(save_directory)
        except Exception as err:  # some models (e.g. Unigram) have no separate vocabulary format
            logger.info("no separate vocabulary files written: %s", err)
        return files
