"""Source/target text pairs from JSONL, CSV or TSV files -> tokenized, length-bucketed batches.

- Files: `.jsonl` / `.json` (one JSON object per line), `.csv`, `.tsv` (a header row names the
  columns), `.parquet`. Columns default to `source` and `target`. (For data larger than memory see
  `training.streaming`.)
- Bad data is a `DataError` (a ValueError) naming the file and line: a missing column, an empty
  file, invalid JSON, a value that is not text, or text that tokenizes to nothing.
- Batches: each epoch's order is a permutation drawn from (seed, epoch); the permutation is cut
  into pools of `pool_batches` batches, each pool is sorted by length and cut into batches (so
  similar lengths share a batch), and the batch order is shuffled again. The same seed gives the
  same batches on every host and after a restart; `BatchPosition` (epoch, batch index) resumes it.
- Arrays: `input_ids` / `attention_mask` [accum, batch, S] and `labels` [accum, batch, T] (-100 on
  padding), int32, lengths rounded up to a multiple of `pad_to_multiple_of` (fewer recompiles;
  long data gets coarser steps, see `bucket_length`). The last batch of an epoch is filled with
  empty rows (all labels -100), which add nothing to the loss or the gradient, so every example is
  used and every batch has the same size.
- Packing (`pack_rows` > 0, `training.packing`): each micro-batch's pairs go side by side into
  `pack_rows` rows of one length fixed for the run, with segment ids and per-pair positions; batches
  are then plain shuffles (no length grouping).
- Labels: the target's token ids without a leading `decoder_start_token_id` (BERT's [CLS]); the
  model prepends it when shifting labels right into decoder inputs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Iterator, Optional, Sequence

import numpy as np

from . import packing
from ..inputs import IGNORE_INDEX


class DataError(ValueError):
    """Bad training data; the message names the file and line."""


@dataclasses.dataclass
class Example:
    source: str
    target: str
    line: int  # 1-based line in the file where the record starts


def _format_of(path: str, file_format: Optional[str]) -> str:
    if file_format:
        return file_format.lower()
    ext = os.path.splitext(path)[1].lower()
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
               ".parquet": "parquet", ".pq": "parquet"}
    if ext not in formats:
        raise DataError(f"{path}: cannot tell the format from the extension {ext!r}; use .jsonl, .csv, .tsv "
                        "or .parquet")
    return formats[ext]


def _text(value, path, line, column) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path}, line {line}: column {column!r} must be text, got {type(value).__name__}")
    return value


def open_parquet(path: str, columns: Sequence[str]):
    """A pyarrow ParquetFile holding `columns` (DataError otherwise)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow.ArrowInvalid and friends
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    names = parquet.schema_arrow.names
    for column in columns:
        if column not in names:
            raise DataError(f"{path}: missing column {column!r} (has {names})")
    return parquet


def parquet_examples(parquet, path: str, columns: Sequence[str], row_group: int, first_row: int) -> list[Example]:
    """One row group's records as Examples (`line` is the 1-based row)."""
    table = parquet.read_row_group(row_group, columns=list(columns))
    examples = []
    sources, targets = (table.column(c).to_pylist() for c in columns)
    for i, (source, target) in enumerate(zip(sources, targets)):
        row = first_row + i + 1
        for column, value in zip(columns, (source, target)):
            if not isinstance(value, str):
                raise DataError(f"{path}, row {row}: column {column!r} must be text, got {type(value).__name__}")
        examples.append(Example(source, target, row))
    return examples


def read_examples(path: str, source_column: str = "source", target_column: str = "target",
                  file_format: Optional[str] = None) -> list[Example]:
    """Read (source, target) pairs; errors name the file and line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    fmt = _format_of(path, file_format)
    columns = (source_column, target_column)
    if fmt == "parquet":
        parquet = open_parquet(path, columns)
        return [e for group in range(parquet.num_row_groups)
                for e in parquet_examples(parquet, path, columns, group, sum(
                    parquet.metadata.row_group(g).num_rows for g in range(group)))]
    examples = []
    with open(path, encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}, line {line_no}: invalid JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {line_no}: expected a JSON object with {columns}")
                for column in columns:
                    if column not in record:
                        raise DataError(f"{path}, line {line_no}: missing column {column!r} "
                                        f"(has {sorted(record)})")
                examples.append(Example(_text(record[source_column], path, line_no, source_column),
                                        _text(record[target_column], path, line_no, target_column), line_no))
        elif fmt in ("csv", "tsv"):
            reader = csv.reader(handle, delimiter="," if fmt == "csv" else "\t")
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}: file is empty (expected a header row with {columns})") from None
            except csv.Error as err:
                raise DataError(f"{path}, line 1: {err}") from None
            for column in columns:
                if column not in header:
                    raise DataError(f"{path}, line 1: missing column {column!r} in the header {header}")
            src, tgt = header.index(source_column), header.index(target_column)
            start = reader.line_num + 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    raise DataError(f"{path}, line {start}: {err}") from None
                if row:
                    if len(row) != len(header):
                        raise DataError(f"{path}, line {start}: {len(row)} fields, the header has {len(header)}")
                    examples.append(Example(row[src], row[tgt], start))
                start = reader.line_num + 1
        else:
            raise DataError(f"{path}: unknown format {fmt!r}; use jsonl, csv or tsv")
    if not examples:
        raise DataError(f"{path}: file is empty (no examples)")
    return examples


@dataclasses.dataclass
class TokenizedData:
    """Token ids per example (sources with special tokens; labels without the decoder start token)."""

    path: str
    sources: list[np.ndarray]
    labels: list[np.ndarray]
    examples: list[Example]  # the texts, for generation-based evaluation

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def num_tokens(self) -> int:
        return int(sum(len(s) + len(t) for s, t in zip(self.sources, self.labels)))


def tokenize_examples(examples: Sequence[Example], tokenizer, *, path: str, max_source_length: int = 128,
                      max_target_length: int = 128, decoder_start_token_id: Optional[int] = None,
                      progress: bool = True, chunk_size: int = 1000) -> TokenizedData:
    """Tokenize with truncation (a progress bar over chunks); text with no real token is an error."""
    from tqdm.auto import tqdm

    special = set(tokenizer.all_special_ids)
    sources, labels = [], []
    bar = tqdm(total=len(examples), desc=f"tokenizing {os.path.basename(path)}", unit="ex", disable=not progress,
               leave=False)
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start:start + chunk_size]
        src = tokenizer([e.source for e in chunk], truncation=True, max_length=max_source_length)["input_ids"]
        # +1: the start token is dropped below, so the label budget stays max_target_length.
        tgt = tokenizer([e.target for e in chunk], truncation=True, max_length=max_target_length + 1)["input_ids"]
        for example, s, t in zip(chunk, src, tgt):
            for column, ids in (("source", s), ("target", t)):
                if not any(i not in special for i in ids):
                    raise DataError(f"{path}, line {example.line}: the {column} text tokenizes to nothing "
                                    f"({getattr(example, column)!r})")
            if decoder_start_token_id is not None and t and t[0] == decoder_start_token_id:
                t = t[1:]
            sources.append(np.asarray(s, np.int32))
            labels.append(np.asarray(t[:max_target_length], np.int32))
        bar.update(len(chunk))
    bar.close()
    return TokenizedData(path, sources, labels, list(examples))


def load_pairs(path: str, tokenizer, *, source_column="source", target_column="target", file_format=None,
               **tokenize_kwargs) -> TokenizedData:
    """`read_examples` + `tokenize_examples`."""
    examples = read_examples(path, source_column, target_column, file_format)
    return tokenize_examples(examples, tokenizer, path=path, **tokenize_kwargs)


@dataclasses.dataclass
class BatchPosition:
    """Where the loader is: the next batch is `batch` of `epoch`. JSON-able (saved in checkpoints)."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BatchPosition":
        return cls(int(values["epoch"]), int(values["batch"]))


def bucket_length(n: int, multiple: int = 8) -> int:
    """Padded length for `n` tokens: a multiple of `multiple` up to 4x it, then a quarter of the next
    power of two (..., 32, 48, 64, 96, 128, 192, 256, ...), so long data compiles few shapes."""
    if multiple <= 1:
        return n
    granularity = max(multiple, (1 << max(0, (n - 1).bit_length())) // 4)
    return -(-n // granularity) * granularity


class BatchLoader:
    """Deterministic, length-bucketed, resumable batches over `TokenizedData`.

    Each batch holds `accum * batch_size` examples shaped [accum, batch_size, length].
    `shuffle=False` keeps file order (for evaluation).
    """

    def __init__(self, data: TokenizedData, *, batch_size: int, pad_token_id: int, accum: int = 1, seed: int = 0,
                 shuffle: bool = True, pool_batches: int = 50, pad_to_multiple_of: int = 8, pack_rows: int = 0,
                 pack_epochs: int = 1):
        if batch_size <= 0 or accum <= 0:
            raise ValueError(f"batch_size and accum must be positive, got {batch_size} and {accum}")
        if not 0 <= pack_rows <= batch_size:
            raise ValueError(f"pack_rows must be between 1 and the batch size {batch_size} (0: no packing), "
                             f"got {pack_rows}")
        self.data = data
        self.batch_size, self.accum = batch_size, accum
        self.pad_token_id = pad_token_id
        self.seed, self.shuffle = seed, shuffle
        # Packing replaces length grouping: batches of mixed lengths pack tighter than sorted ones.
        self.pool_batches = 1 if pack_rows else pool_batches
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pack_rows, self.pack_epochs = pack_rows, max(1, pack_epochs)
        self._packed_lengths: Optional[tuple[int, int]] = None
        # Padding never goes past the longest example (which fits the model's positions).
        self._max_lengths = (max(map(len, data.sources)), max(map(len, data.labels)))

    @property
    def examples_per_batch(self) -> int:
        return self.batch_size * self.accum

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.data) // self.examples_per_batch)

    def epoch_order(self, epoch: int) -> list[np.ndarray]:
        """The example indices of each batch of `epoch`."""
        n, size = len(self.data), self.examples_per_batch
        if not self.shuffle:
            return [np.arange(i, min(i + size, n)) for i in range(0, n, size)]
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        lengths = np.asarray([max(len(s), len(t)) for s, t in zip(self.data.sources, self.data.labels)])
        batches = []
        pool = size * self.pool_batches
        for i in range(0, n, pool):
            chunk = order[i:i + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches.extend(chunk[j:j + size] for j in range(0, len(chunk), size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _micro_batches(self, indices: np.ndarray) -> list[np.ndarray]:
        return [indices[i:i + self.batch_size] for i in range(0, self.examples_per_batch, self.batch_size)]

    def _pairs(self, indices: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [self.data.sources[i] for i in indices], [self.data.labels[i] for i in indices]

    def _assign(self, sources, labels) -> list[list[int]]:
        # No pairs (the empty second micro-batch of a short last batch): `pack_rows` empty rows.
        return packing.assign_rows(list(map(len, sources)), list(map(len, labels)), self.pack_rows)

    @property
    def packed_lengths(self) -> tuple[int, int]:
        """(source, target) row lengths of packed batches: the fullest packed row over every batch of the
        first `pack_epochs` epochs (one shape for the whole run: one compiled step)."""
        if self._packed_lengths is None:
            longest = (1, 1)
            for epoch in range(self.pack_epochs):
                for indices in self.epoch_order(epoch):
                    for micro in self._micro_batches(indices):
                        pairs = self._pairs(micro)
                        lengths = packing.row_lengths(*pairs, self._assign(*pairs))
                        longest = (max(longest[0], lengths[0]), max(longest[1], lengths[1]))
            self._packed_lengths = longest
        return self._packed_lengths

    def _packed_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        source_length, target_length = self.packed_lengths
        micro_batches = []
        for micro in self._micro_batches(indices):
            pairs = self._pairs(micro)
            micro_batches.append(packing.pack(*pairs, self._assign(*pairs), source_length, target_length,
                                              self.pad_token_id))
        return {key: np.stack([m[key] for m in micro_batches]) for key in micro_batches[0]}

    def _padded_lengths(self, indices: np.ndarray) -> tuple[int, int]:
        """(source, target) lengths of an unpacked batch: its longest, bucketed, capped at the data's longest."""
        longest = (max(len(self.data.sources[i]) for i in indices), max(len(self.data.labels[i]) for i in indices))
        return tuple(min(bucket_length(n, self.pad_to_multiple_of), cap) for n, cap in zip(longest, self._max_lengths))

    def planned_cost(self, batches: int, hidden_size: int) -> float:
        """The relative compute of the first `batches` batches (`packing.row_cost` summed over their rows,
        both sides): what `packing.choose_pack_rows` compares."""
        def cost(lengths, rows):
            return rows * sum(packing.row_cost(n, hidden_size) for n in lengths)

        if self.pack_rows:  # every batch has the same packed shape
            return batches * cost(self.packed_lengths, self.accum * self.pack_rows)
        total, done, epoch = 0.0, 0, 0
        while done < batches:
            for indices in self.epoch_order(epoch)[: batches - done]:
                total += cost(self._padded_lengths(indices), self.examples_per_batch)
                done += 1
            epoch += 1
        return total

    def make_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Pad the examples at `indices` (plus empty rows up to the batch size) into arrays; with
        `pack_rows`, pack each micro-batch's examples into that many rows (`training.packing`)."""
        if self.pack_rows:
            return self._packed_batch(indices)
        sources, labels = self._pairs(indices)
        src_len, tgt_len = self._padded_lengths(indices)
        rows = self.examples_per_batch
        input_ids = np.full((rows, src_len), self.pad_token_id, np.int32)
        attention_mask = np.zeros((rows, src_len), np.int32)
        label_ids = np.full((rows, tgt_len), IGNORE_INDEX, np.int32)
        for row, (s, t) in enumerate(zip(sources, labels)):
            input_ids[row, :len(s)] = s
            attention_mask[row, :len(s)] = 1
            label_ids[row, :len(t)] = t
        shape = (self.accum, self.batch_size)
        return {"input_ids": input_ids.reshape(shape + (src_len,)),
                "attention_mask": attention_mask.reshape(shape + (src_len,)),
                "labels": label_ids.reshape(shape + (tgt_len,))}

    def batches(self, position: Optional[BatchPosition] = None,
                epochs: Optional[int] = None) -> Iterator[tuple[BatchPosition, dict[str, np.ndarray]]]:
        """Yield (position after this batch, batch) from `position` on, forever or for `epochs` epochs."""
        position = position or BatchPosition()
        epoch, index = position.epoch, position.batch
        while epochs is None or epoch < epochs:
            order = self.epoch_order(epoch)
            while index < len(order):
                batch = self.make_batch(order[index])
                index += 1
                yield (BatchPosition(epoch, index) if index < len(order) else BatchPosition(epoch + 1, 0)), batch
            epoch, index = epoch + 1, 0


def count_tokens(batch: dict[str, np.ndarray]) -> int:
    """Real (non-padding) source + target tokens in a batch."""
    return int(batch["attention_mask"].sum() + (batch["labels"] != IGNORE_INDEX).sum())
