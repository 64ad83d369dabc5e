"""Streaming training data: records read and tokenized lazily, memory flat in the file size.

Why Grain: every global batch here is a pure function of (seed, batch number), so the pipeline is a
Grain `MapDataset` over batch numbers, made an `IterDataset` with worker threads and a prefetch
buffer (`ReadOptions`). Grain is made for exactly this (deterministic, random-access, checkpointable
input pipelines for JAX; what MaxText uses) and adds nothing we would not use, where Hugging Face
`datasets` would first convert the whole file into an Arrow cache on disk (a full read of the data
before the first step) or, streaming, lose random access and with it O(1) resume.

The file is never held in memory:

- An index of *blocks* is built in one pass at start-up: JSONL / CSV / TSV: the byte offset (and
  line number) of every 64th record, quoted multi-line CSV fields respected; Parquet: its row groups
  (memory is bounded by the largest row group, so write Parquet with row groups of at most ~64k rows).
  The index is 16 bytes per 64 records.
- Epoch e shuffles the blocks (seeded by seed, e), cuts the records in that order into windows of
  `window_records` (rounded up to a whole number of batches), shuffles each window's records, cuts them into pools of
  `pool_batches` batches sorted by length (characters, a proxy for tokens: bucketing as the in-memory
  loader does, within a window instead of the whole epoch) and shuffles the window's batch order.
  Batch g of the run is therefore found from g alone: resume is O(1), and the data position saved
  in checkpoints is the same `BatchPosition` as for in-memory data.
- Each process reads only the rows of each global batch that its own devices hold (`local_rows`),
  and tokenizes only those. Windows are read in full by every process (cheap: raw text), at most two
  at a time are cached.
- Padded lengths must be the same on every process: `LocalBatch.lengths` are this process's, the
  trainer takes the maximum over processes (in the per-step agreement that also carries the stop
  flag) and pads with `LocalBatch.arrays`.

Bad records are `DataError`s naming the file and line (row for Parquet), raised when the batch that
holds them is built.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import threading
from collections import OrderedDict
from typing import Iterator, Optional, Sequence

import numpy as np

from .data import (IGNORE_INDEX, BatchPosition, DataError, Example, _format_of, bucket_length, open_parquet,
                   parquet_examples)

BLOCK_RECORDS = 64


@dataclasses.dataclass
class Block:
    start: int  # record number of the block's first record
    count: int
    offset: int  # byte offset (text) or row group (Parquet)
    line: int  # 1-based line number of the first record (text); unused for Parquet


class PairSource:
    """Random access to the blocks of a JSONL / CSV / TSV / Parquet file of (source, target) pairs."""

    def __init__(self, path: str, source_column: str = "source", target_column: str = "target",
                 file_format: Optional[str] = None):
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        self.path, self.columns = path, (source_column, target_column)
        self.format = _format_of(path, file_format)
        if self.format == "parquet":
            self.blocks = self._index_parquet()
        elif self.format in ("jsonl", "csv", "tsv"):
            self.blocks = self._index_text()
        else:
            raise DataError(f"{path}: unknown format {self.format!r}; use jsonl, csv, tsv or parquet")
        self.num_records = sum(b.count for b in self.blocks)
        if not self.num_records:
            raise DataError(f"{path}: file is empty (no examples)")
        self._local = threading.local()

    # ------------------------------------------------------------------ index
    def _index_text(self) -> list[Block]:
        blocks, count, start_offset, start_line = [], 0, None, 0
        quote = ord('"')
        with open(self.path, "rb") as handle:
            offset, line_no = 0, 0
            if self.format != "jsonl":
                header = handle.readline()
                line_no, offset = 1, len(header)
                if not header.strip():
                    raise DataError(f"{self.path}: file is empty (expected a header row with {self.columns})")
                self._header = next(csv.reader([header.decode("utf-8")], delimiter=self._delimiter))
                for column in self.columns:
                    if column not in self._header:
                        raise DataError(f"{self.path}, line 1: missing column {column!r} in the header {self._header}")
            record_offset, record_line, open_quotes = None, 0, 0
            for raw in handle:
                line_no += 1
                if record_offset is None:
                    if not raw.strip():
                        offset += len(raw)
                        continue
                    record_offset, record_line = offset, line_no
                offset += len(raw)
                if self.format != "jsonl":
                    open_quotes ^= raw.count(quote) & 1
                    if open_quotes:  # a quoted field goes on to the next line
                        continue
                if count == 0:
                    start_offset, start_line = record_offset, record_line
                count += 1
                record_offset = None
                if count == BLOCK_RECORDS:
                    blocks.append(Block(len(blocks) * BLOCK_RECORDS, count, start_offset, start_line))
                    count = 0
            if record_offset is not None:  # an unterminated quoted field at the end: let csv report it
                if count == 0:
                    start_offset, start_line = record_offset, record_line
                count += 1
            if count:
                blocks.append(Block(len(blocks) * BLOCK_RECORDS, count, start_offset, start_line))
        return blocks

    @property
    def _delimiter(self) -> str:
        return "," if self.format == "csv" else "\t"

    def _index_parquet(self) -> list[Block]:
        meta = open_parquet(self.path, self.columns)
        blocks, start = [], 0
        for group in range(meta.num_row_groups):
            rows = meta.metadata.row_group(group).num_rows
            if rows:
                blocks.append(Block(start, rows, group, 0))
                start += rows
        return blocks

    # ------------------------------------------------------------------ reading
    def read_block(self, index: int) -> list[Example]:
        """The block's records as Examples (line = file line, or row for Parquet)."""
        block = self.blocks[index]
        if self.format == "parquet":
            return self._read_parquet(block)
        handle = getattr(self._local, "handle", None)
        if handle is None:  # one handle per reader thread
            handle = self._local.handle = open(self.path, "rb")
        handle.seek(block.offset)
        lines, records, open_quotes = [], 0, 0
        while records < block.count:  # the same record boundaries as the index pass
            raw = handle.readline()
            if not raw:
                break
            lines.append(raw)
            if self.format == "jsonl":
                records += bool(raw.strip())
                continue
            if not open_quotes and not raw.strip():
                continue
            open_quotes ^= raw.count(b'"') & 1
            records += not open_quotes
        if self.format == "jsonl":
            return self._parse_jsonl(lines, block.line)
        return list(self._csv_rows(lines, block.line))

    def _parse_jsonl(self, lines: list[bytes], first_line: int) -> list[Example]:
        examples = []
        for line_no, raw in enumerate(lines, first_line):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataError(f"{self.path}, line {line_no}: invalid JSON ({getattr(err, 'msg', err)})") from None
            if not isinstance(record, dict):
                raise DataError(f"{self.path}, line {line_no}: expected a JSON object with {self.columns}")
            values = []
            for column in self.columns:
                if column not in record:
                    raise DataError(f"{self.path}, line {line_no}: missing column {column!r} (has {sorted(record)})")
                if not isinstance(record[column], str):
                    raise DataError(f"{self.path}, line {line_no}: column {column!r} must be text, got "
                                    f"{type(record[column]).__name__}")
                values.append(record[column])
            examples.append(Example(values[0], values[1], line_no))
        return examples

    def _csv_rows(self, lines: list[bytes], first_line: int) -> Iterator[Example]:
        text = b"".join(lines).decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self._delimiter)
        src, tgt = self._header.index(self.columns[0]), self._header.index(self.columns[1])
        start = first_line
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(f"{self.path}, line {start}: {err}") from None
            if row:
                if len(row) != len(self._header):
                    raise DataError(f"{self.path}, line {start}: {len(row)} fields, the header has "
                                    f"{len(self._header)}")
                yield Example(row[src], row[tgt], start)
            start = first_line + reader.line_num

    def _read_parquet(self, block: Block) -> list[Example]:
        handle = getattr(self._local, "parquet", None)
        if handle is None:
            handle = self._local.parquet = open_parquet(self.path, self.columns)
        return parquet_examples(handle, self.path, self.columns, block.offset, block.start)

    def fingerprint(self) -> str:
        """Identifies the data (size, record count, first and last block): a resumed run checks it."""
        digest = hashlib.sha256(f"{os.path.getsize(self.path)}:{self.num_records}:{len(self.blocks)}".encode())
        return digest.hexdigest()[:16]


@dataclasses.dataclass
class LocalBatch:
    """This process's rows of one global batch, tokenized and not yet padded.

    `rows[k][j]` is the example in micro-batch k at the j-th of this process's batch rows
    (None: a filler row past the end of the data)."""

    sources: list[list[Optional[np.ndarray]]]
    labels: list[list[Optional[np.ndarray]]]

    @property
    def lengths(self) -> tuple[int, int]:
        """Longest source and label here (0 when this process has only filler rows)."""
        src = max((len(s) for row in self.sources for s in row if s is not None), default=0)
        tgt = max((len(t) for row in self.labels for t in row if t is not None), default=0)
        return src, tgt

    @property
    def num_tokens(self) -> int:
        return int(sum(len(s) for row in self.sources for s in row if s is not None)
                   + sum(len(t) for row in self.labels for t in row if t is not None))

    def arrays(self, src_len: int, tgt_len: int, pad_token_id: int) -> dict[str, np.ndarray]:
        accum, rows = len(self.sources), len(self.sources[0])
        input_ids = np.full((accum, rows, src_len), pad_token_id, np.int32)
        attention_mask = np.zeros((accum, rows, src_len), np.int32)
        labels = np.full((accum, rows, tgt_len), IGNORE_INDEX, np.int32)
        for k in range(accum):
            for j, (s, t) in enumerate(zip(self.sources[k], self.labels[k])):
                if s is not None:
                    input_ids[k, j, :len(s)] = s
                    attention_mask[k, j, :len(s)] = 1
                    labels[k, j, :len(t)] = t
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class StreamingLoader:
    """Deterministic, resumable, length-bucketed batches streamed from a `PairSource`.

    `local_rows`: the batch rows (of `batch_size`) this process reads; default all (one process).
    Yields (position after the batch, `LocalBatch`) like `BatchLoader.batches`."""

    def __init__(self, source: PairSource, tokenizer, *, batch_size: int, pad_token_id: int, accum: int = 1,
                 seed: int = 0, shuffle: bool = True, pool_batches: int = 50, window_records: int = 8192,
                 pad_to_multiple_of: int = 8, max_source_length: int = 128, max_target_length: int = 128,
                 decoder_start_token_id: Optional[int] = None, local_rows: Optional[Sequence[int]] = None,
                 num_threads: int = 2, prefetch: int = 8):
        if batch_size <= 0 or accum <= 0:
            raise ValueError(f"batch_size and accum must be positive, got {batch_size} and {accum}")
        self.source, self.tokenizer = source, tokenizer
        self.batch_size, self.accum, self.seed, self.shuffle = batch_size, accum, seed, shuffle
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of
        self.pool_batches, self.window_records = pool_batches, window_records
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.decoder_start_token_id = decoder_start_token_id
        self.local_rows = list(range(batch_size)) if local_rows is None else sorted(local_rows)
        self.num_threads, self.prefetch = num_threads, prefetch
        self._special = set(tokenizer.all_special_ids)
        self._windows: "OrderedDict[tuple, list[np.ndarray]]" = OrderedDict()  # (epoch, window) -> batches
        self._window_examples: "OrderedDict[tuple, list[Example]]" = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Event] = {}
        self._epoch_plans: "OrderedDict[int, tuple]" = OrderedDict()

    @property
    def examples_per_batch(self) -> int:
        return self.batch_size * self.accum

    # ------------------------------------------------------------------ the plan
    @property
    def _window_size(self) -> int:
        """Records per window: a multiple of the batch, so only an epoch's last batch can be short and
        every epoch has the same number of batches, ceil(records / batch)."""
        size = self.examples_per_batch
        return max(1, -(-self.window_records // size)) * size

    def _epoch_plan(self, epoch: int):
        """(block order, record number where each ordered block starts (+ the total), cumulative batches
        per window). Epoch e's record stream is its blocks in a seeded order; window w is records
        [w * window, (w + 1) * window) of that stream."""
        with self._lock:
            if epoch in self._epoch_plans:
                return self._epoch_plans[epoch]
        blocks = self.source.blocks
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(blocks)) if self.shuffle
                 else np.arange(len(blocks)))
        starts = np.concatenate([[0], np.cumsum([blocks[b].count for b in order])])
        total, window = int(starts[-1]), self._window_size
        counts = [-(-min(window, total - lo) // self.examples_per_batch) for lo in range(0, total, window)]
        plan = (order, starts, np.cumsum([0] + counts))
        with self._lock:
            self._epoch_plans[epoch] = plan
            while len(self._epoch_plans) > 2:
                self._epoch_plans.popitem(last=False)
        return plan

    def __len__(self) -> int:
        """Batches per epoch."""
        return int(self._epoch_plan(0)[2][-1])

    def _window(self, epoch: int, window: int) -> tuple[list[Example], list[np.ndarray]]:
        """The window's examples and its batches (index arrays into them), cached (two windows)."""
        key = (epoch, window)
        while True:  # one reader per window: the other threads wait for it instead of reading it again
            with self._lock:
                if key in self._windows:
                    self._windows.move_to_end(key)
                    return self._window_examples[key], self._windows[key]
                loading = self._loading.get(key)
                if loading is None:
                    self._loading[key] = threading.Event()
                    break
            loading.wait()
        try:
            return self._read_window(key)
        finally:
            with self._lock:
                self._loading.pop(key).set()

    def _read_window(self, key: tuple) -> tuple[list[Example], list[np.ndarray]]:
        epoch, window = key
        order, starts, _ = self._epoch_plan(epoch)
        lo = window * self._window_size
        hi = min(lo + self._window_size, int(starts[-1]))
        first = int(np.searchsorted(starts, lo, side="right")) - 1  # the blocks that overlap [lo, hi)
        end = int(np.searchsorted(starts, hi, side="left"))
        examples = [e for b in order[first:end] for e in self.source.read_block(int(b))]
        examples = examples[lo - int(starts[first]): hi - int(starts[first])]
        size = self.examples_per_batch
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, window])
            perm = rng.permutation(len(examples))
            keys = np.asarray([max(len(e.source), len(e.target)) for e in examples])
            batches, pool = [], size * self.pool_batches
            for i in range(0, len(perm), pool):
                chunk = perm[i:i + pool]
                chunk = chunk[np.argsort(keys[chunk], kind="stable")]
                batches.extend(chunk[j:j + size] for j in range(0, len(chunk), size))
            batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            batches = [np.arange(i, min(i + size, len(examples))) for i in range(0, len(examples), size)]
        with self._lock:
            self._windows[key], self._window_examples[key] = batches, examples
            while len(self._windows) > 2 + self.num_threads:
                old, _ = self._windows.popitem(last=False)
                self._window_examples.pop(old, None)
        return examples, batches

    def locate(self, position: BatchPosition) -> tuple[int, int, int]:
        """(epoch, window, batch in window) of the batch at `position`."""
        _, _, cumulative = self._epoch_plan(position.epoch)
        window = int(np.searchsorted(cumulative, position.batch, side="right") - 1)
        return position.epoch, window, position.batch - int(cumulative[window])

    # ------------------------------------------------------------------ batches
    def _tokenize(self, examples: list[Example]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if not examples:
            return [], []
        src = self.tokenizer([e.source for e in examples], truncation=True,
                             max_length=self.max_source_length)["input_ids"]
        tgt = self.tokenizer([e.target for e in examples], truncation=True,
                             max_length=self.max_target_length + 1)["input_ids"]
        sources, labels = [], []
        for example, s, t in zip(examples, src, tgt):
            for column, ids in (("source", s), ("target", t)):
                if not any(i not in self._special for i in ids):
                    raise DataError(f"{self.source.path}, line {example.line}: the {column} text tokenizes to "
                                    f"nothing ({getattr(example, column)!r})")
            if self.decoder_start_token_id is not None and t and t[0] == self.decoder_start_token_id:
                t = t[1:]
            sources.append(np.asarray(s, np.int32))
            labels.append(np.asarray(t[:self.max_target_length], np.int32))
        return sources, labels

    def local_batch(self, epoch: int, batch: int) -> LocalBatch:
        """This process's rows of batch `batch` of `epoch`, tokenized."""
        _, window, index = self.locate(BatchPosition(epoch, batch))
        examples, batches = self._window(epoch, window)
        members = batches[index]
        wanted = [(k, j) for k in range(self.accum) for j in self.local_rows]
        picked = [examples[members[k * self.batch_size + j]] if k * self.batch_size + j < len(members) else None
                  for k, j in wanted]
        sources, labels = self._tokenize([e for e in picked if e is not None])
        it_s, it_t = iter(sources), iter(labels)
        flat_s = [next(it_s) if e is not None else None for e in picked]
        flat_t = [next(it_t) if e is not None else None for e in picked]
        n = len(self.local_rows)
        return LocalBatch([flat_s[k * n:(k + 1) * n] for k in range(self.accum)],
                          [flat_t[k * n:(k + 1) * n] for k in range(self.accum)])

    def batches(self, position: Optional[BatchPosition] = None,
                epochs: Optional[int] = None) -> Iterator[tuple[BatchPosition, LocalBatch]]:
        """Yield (position after this batch, LocalBatch) from `position` on (Grain worker threads
        read and tokenize ahead, in order)."""
        import grain

        position = position or BatchPosition()
        per_epoch = len(self)
        start = position.epoch * per_epoch + position.batch
        stop = None if epochs is None else epochs * per_epoch
        numbers = grain.MapDataset.range(start, stop if stop is not None else start + (1 << 40))

        def build(g: int):
            return g, self.local_batch(g // per_epoch, g % per_epoch)

        dataset = numbers.map(build).to_iter_dataset(
            grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch))
        for g, local in dataset:
            after = g + 1
            yield BatchPosition(after // per_epoch, after % per_epoch), local

    def padded_lengths(self, src_len: int, tgt_len: int, caps: tuple[int, int]) -> tuple[int, int]:
        """Bucketed padded lengths for the (global) longest source / label, capped (model positions)."""
        return (min(bucket_length(max(src_len, 1), self.pad_to_multiple_of), caps[0]),
                min(bucket_length(max(tgt_len, 1), self.pad_to_multiple_of), caps[1]))
