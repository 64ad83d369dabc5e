"""Streaming training data (training.streaming): the same records as the in-memory reader for every
format, deterministic length-bucketed batches, resume mid-epoch, each process only its own rows."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bertgen_jax import AutoTokenizer
from bertgen_jax.training import DataError, read_examples
from bertgen_jax.training.data import BatchPosition
from bertgen_jax.training.streaming import BLOCK_RECORDS, PairSource, StreamingLoader

from test_training import COPY_WORDS, write_tokenizer


def _pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(COPY_WORDS, size=int(rng.integers(1, 12))))
        out.append((text, " ".join(reversed(text.split()))))
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(write_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("stream")
    pairs = _pairs(500)
    paths = {}
    with open(root / "data.jsonl", "w") as handle:
        for i, (s, t) in enumerate(pairs):
            handle.write(json.dumps({"source": s, "target": t, "id": i}) + "\n")
            if i % 97 == 0:
                handle.write("\n")  # blank lines are skipped, line numbers still count them
    paths["jsonl"] = root / "data.jsonl"
    for fmt, sep in (("csv", ","), ("tsv", "\t")):
        with open(root / f"data.{fmt}", "w") as handle:
            handle.write(f"id{sep}source{sep}target\n")
            for i, (s, t) in enumerate(pairs):
                source = f'"{s}\n{s}"' if i % 31 == 0 else s  # quoted fields that span two lines
                handle.write(f"{i}{sep}{source}{sep}{t}\n")
        paths[fmt] = root / f"data.{fmt}"
    table = pa.table({"source": [s for s, _ in pairs], "target": [t for _, t in pairs]})
    pq.write_table(table, root / "data.parquet", row_group_size=70)
    paths["parquet"] = root / "data.parquet"
    return {k: str(v) for k, v in paths.items()}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_blocks_hold_the_records_the_in_memory_reader_reads(files, fmt):
    source = PairSource(files[fmt])
    streamed = [e for block in range(len(source.blocks)) for e in source.read_block(block)]
    expected = read_examples(files[fmt])
    assert source.num_records == len(expected) == 500
    assert [(e.source, e.target, e.line) for e in streamed] == [(e.source, e.target, e.line) for e in expected]
    if fmt != "parquet":
        assert [b.count for b in source.blocks[:-1]] == [BLOCK_RECORDS] * (len(source.blocks) - 1)
    else:
        assert [b.count for b in source.blocks] == [70] * 7 + [10]  # one block per row group


def _loader(source, tokenizer, **overrides):
    options = dict(batch_size=8, accum=2, seed=4, pad_token_id=0, window_records=150, pool_batches=3,
                   decoder_start_token_id=2, num_threads=2, prefetch=4)
    options.update(overrides)
    return StreamingLoader(source, tokenizer, **options)


def _rows(local_batch):
    return [None if s is None else tuple(s) for row in local_batch.sources for s in row]


def test_batches_are_deterministic_bucketed_and_cover_every_record_once(files, tokenizer):
    source = PairSource(files["jsonl"])
    loader = _loader(source, tokenizer)
    per_epoch = len(loader)
    run = list(itertools.islice(loader.batches(), per_epoch + 5))
    again = list(itertools.islice(_loader(source, tokenizer).batches(), per_epoch + 5))
    assert [_rows(b) for _, b in run] == [_rows(b) for _, b in again]
    assert [p for p, _ in run][per_epoch - 1] == BatchPosition(1, 0)
    epoch = [r for _, b in run[:per_epoch] for r in _rows(b) if r is not None]
    texts = read_examples(files["jsonl"])
    expected = sorted(tuple(ids) for ids in tokenizer([e.source for e in texts])["input_ids"])
    assert sorted(epoch) == expected  # every record exactly once per epoch
    assert _rows(run[per_epoch][1]) != _rows(run[0][1])  # epoch 2 has another order
    other_seed = list(itertools.islice(_loader(source, tokenizer, seed=5).batches(), 3))
    assert [_rows(b) for _, b in other_seed] != [_rows(b) for _, b in run[:3]]
    # length bucketing: a batch's lengths are much closer together than the data's
    spread = np.mean([np.std([len(r) for r in _rows(b) if r is not None]) for _, b in run[:per_epoch]])
    assert spread < 0.5 * np.std([len(r) for r in epoch]), spread
    assert len({b.lengths for _, b in run[:per_epoch]}) > 3


def test_every_epoch_has_the_same_batches_and_covers_every_record(files, tokenizer):
    source = PairSource(files["parquet"])  # row groups of 70: windows of 160 cut across them
    loader = _loader(source, tokenizer, batch_size=4, accum=1, window_records=150, pool_batches=2)
    per_epoch = len(loader)
    assert per_epoch == 125  # ceil(500 / 4), whatever each epoch's block order
    run = list(itertools.islice(loader.batches(), 3 * per_epoch))
    expected = sorted(tuple(ids) for ids in tokenizer([e.source for e in read_examples(files["parquet"])])["input_ids"])
    for epoch in range(3):
        rows = [r for _, b in run[epoch * per_epoch:(epoch + 1) * per_epoch] for r in _rows(b) if r is not None]
        assert sorted(rows) == expected, epoch
    assert run[-1][0] == BatchPosition(3, 0)


def test_resume_mid_epoch_and_across_epochs(files, tokenizer):
    source = PairSource(files["parquet"])
    loader = _loader(source, tokenizer)
    run = list(itertools.islice(loader.batches(), len(loader) + 4))
    for k in (0, 5, len(loader) - 1, len(loader) + 1):
        position = run[k][0]  # saved in the checkpoint after batch k
        resumed = next(_loader(source, tokenizer).batches(position))
        assert resumed[0] == run[k + 1][0] and _rows(resumed[1]) == _rows(run[k + 1][1])


class _RecordingTokenizer:
    """The real tokenizer, remembering every text it was asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.seen = tokenizer, []
        self.all_special_ids = tokenizer.all_special_ids

    def __call__(self, texts, **kwargs):
        self.seen.append(list(texts))
        return self.tokenizer(texts, **kwargs)


def test_each_process_reads_and_tokenizes_only_its_own_rows(files, tokenizer):
    source = PairSource(files["csv"])
    whole = list(itertools.islice(_loader(source, tokenizer).batches(), 6))
    ahead = 6 + 4 + 1  # batches taken + the prefetch buffer + the one in flight
    parts = []
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
        recording = _RecordingTokenizer(tokenizer)
        parts.append(list(itertools.islice(_loader(source, recording, local_rows=rows, num_threads=1).batches(), 6)))
        # one call for the sources, one for the targets of each batch: at most 2 x 4 own rows each,
        # all of them among this process's rows (never the other 4 rows of the batch)
        assert 6 <= len(recording.seen) // 2 <= ahead and max(map(len, recording.seen)) <= 2 * 4
        own = _loader(source, tokenizer, local_rows=rows)
        own_sources = {tuple(s) for _, b in itertools.islice(own.batches(), ahead) for row in b.sources for s in row
                       if s is not None}
        seen_sources = [text for call in recording.seen[0::2] for text in call]
        assert {tuple(tokenizer([t])["input_ids"][0]) for t in seen_sources} <= own_sources
    for (_, full), (_, first), (_, second) in zip(whole, *parts):
        for k in range(2):
            assert [None if s is None else tuple(s) for s in first.sources[k] + second.sources[k]] == \
                   [None if s is None else tuple(s) for s in full.sources[k]]
        lengths = np.maximum(first.lengths, second.lengths)
        assert tuple(lengths) == full.lengths  # the per-step agreement pads both to the same length
        arrays = [b.arrays(*full.lengths, pad_token_id=0) for b in (first, second)]
        joined = {key: np.concatenate([a[key] for a in arrays], axis=1) for key in arrays[0]}
        for key, value in full.arrays(*full.lengths, pad_token_id=0).items():
            np.testing.assert_array_equal(joined[key], value)


def test_bad_records_are_errors_naming_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"source": "w1", "target": "w2"}\n\n{"source": "w3"}\n')
    loader = _loader(PairSource(str(path)), tokenizer, batch_size=2, accum=1)
    with pytest.raises(DataError, match=r"bad.jsonl, line 3: missing column 'target'"):
        next(loader.batches())
    path = tmp_path / "empty.tsv"
    path.write_text("source\ttarget\nw1\t[SEP]\n")
    with pytest.raises(DataError, match=r"empty.tsv, line 2: the target text tokenizes to nothing"):
        next(_loader(PairSource(str(path)), tokenizer, batch_size=2, accum=1).batches())
    for name, text, message in (("none.jsonl", "\n\n", "file is empty"),
                                ("header.csv", "src,target\nw1,w2\n", "line 1: missing column 'source'")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message):
            PairSource(str(tmp_path / name))
