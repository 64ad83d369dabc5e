"""`AutoTokenizer`: picks the tokenizer for a checkpoint the way transformers' AutoTokenizer would."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from .base import SPIECE_FILE, TokenizerFileError, _kind_from_directory_files, _kind_from_files, _resolve
from .fast import FastTokenizer
from .sentencepiece import BertGenerationTokenizer


# --------------------------------------------------------------------------------------------------
# AutoTokenizer
# --------------------------------------------------------------------------------------------------


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

