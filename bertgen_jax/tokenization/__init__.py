"""Tokenizers with transformers 4.56.2 parity, without depending on transformers.

Two implementations share one calling convention (`_TokenizerBase`):

- `BertGenerationTokenizer`: SentencePiece (`spiece.model`), a port of transformers' slow
  `BertGenerationTokenizer` including the added-token splitting and decode rules of its
  `PreTrainedTokenizer` base class. It adds no special tokens (no BOS/EOS/CLS).
- `FastTokenizer`: a `tokenizers.Tokenizer` backend, built from `tokenizer.json`, or (like
  transformers' slow->fast converters) from BERT `vocab.txt` or RoBERTa `vocab.json` + `merges.txt`.

`AutoTokenizer.from_pretrained` picks one the way transformers' AutoTokenizer would.

Modules: `base` (shared calling convention, config files), `sentencepiece`, `fast`, `auto`. The package
imports neither flax nor the model code (a server can tokenize without them).

Deliberate differences from transformers (documented, not accidental):
- `return_tensors="np"` gives int32 arrays (transformers gives int64); int32 is what JAX uses by default.
- `padding="max_length"` with neither `max_length` nor a `model_max_length` raises ValueError
  (transformers logs a warning and silently does not pad).
- A single text that encodes to no tokens is padded like any other (transformers' slow tokenizer
  returns it unpadded, because its `pad()` mistakes the empty list for an empty batch).
- Only single texts or batches of texts; no text pairs, no pre-tokenized input, no "pt"/"tf" tensors.
"""

from .auto import AutoTokenizer
from .base import BatchEncoding, TokenizerFileError
from .fast import FastTokenizer
from .sentencepiece import BertGenerationTokenizer

__all__ = [
    "AutoTokenizer",
    "BatchEncoding",
    "BertGenerationTokenizer",
    "FastTokenizer",
    "TokenizerFileError",
]
