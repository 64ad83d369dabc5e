"""Sequence packing: a step's (source, target) pairs side by side in a few long rows instead of one
padded row each.

A batch of `batch_size` pairs padded row by row carries, per side, batch_size x (its longest pair)
positions; packed into `rows` rows it carries rows x (its fullest row), close to the real token count.
Each pair keeps its own numbers: the model attends within a pair only and counts positions from 0 per
pair (`inputs.packed_attention_masks`, `inputs.PACKED_KEYS`), so the loss and its gradients are those
of the unpacked batch (tests/test_packing.py). Pairs go to rows by longest-first greedy balancing
(each pair, longest first, to the row it leaves least full), which keeps the fullest row within about
one pair of the mean.

The packed lengths are fixed for a whole run (the fullest row over every batch of the epochs the run
covers, `BatchLoader.packed_lengths`), so the training step compiles once. With a long tail of lengths that
one shape can cost more than per-batch length buckets; `choose_pack_rows` (`bertgen train`'s default,
`--pack-rows auto`) packs only where the plan says it pays.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..inputs import IGNORE_INDEX


def assign_rows(source_lengths: Sequence[int], target_lengths: Sequence[int], rows: int) -> list[list[int]]:
    """Pairs (by index) per row: longest pair first, each to the row whose fuller side stays shortest
    with it (ties: the emptier row). Within a row, pairs keep their batch order."""
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    source_lengths, target_lengths = np.asarray(source_lengths), np.asarray(target_lengths)
    order = np.argsort(-(source_lengths + target_lengths), kind="stable")
    loads = np.zeros((rows, 2), np.int64)
    assignment: list[list[int]] = [[] for _ in range(rows)]
    for i in order:
        fuller = np.maximum(loads[:, 0] + source_lengths[i], loads[:, 1] + target_lengths[i])
        row = int(np.lexsort((loads.sum(axis=1), fuller))[0])
        loads[row] += (source_lengths[i], target_lengths[i])
        assignment[row].append(int(i))
    return [sorted(pairs) for pairs in assignment]


def row_lengths(sources: Sequence[np.ndarray], labels: Sequence[np.ndarray], assignment) -> tuple[int, int]:
    """(fullest source row, fullest target row) of an assignment."""
    return (max(sum(len(sources[i]) for i in pairs) for pairs in assignment),
            max(sum(len(labels[i]) for i in pairs) for pairs in assignment))


def pack(sources: Sequence[np.ndarray], labels: Sequence[np.ndarray], assignment, source_length: int,
         target_length: int, pad_token_id: int) -> dict[str, np.ndarray]:
    """int32 arrays [rows, length] of pairs packed per `assignment`: `input_ids`, `attention_mask`
    (1 on source tokens), `labels` (-100 on padding) and `inputs.PACKED_KEYS` (segments numbered from 1
    per row, 0 on padding; positions counted from 0 per pair)."""
    rows = len(assignment)
    arrays = {"input_ids": np.full((rows, source_length), pad_token_id, np.int32),
              "labels": np.full((rows, target_length), IGNORE_INDEX, np.int32)}
    for key, length in (("source_segment_ids", source_length), ("source_positions", source_length),
                        ("target_segment_ids", target_length), ("target_positions", target_length)):
        arrays[key] = np.zeros((rows, length), np.int32)
    for row, pairs in enumerate(assignment):
        for side, tokens, length in (("source", sources, source_length), ("target", labels, target_length)):
            ids_key = "input_ids" if side == "source" else "labels"
            start = 0
            for segment, i in enumerate(pairs, 1):
                n = len(tokens[i])
                if start + n > length:
                    raise ValueError(f"packed {side} row {row} needs more than {length} positions")
                arrays[ids_key][row, start:start + n] = tokens[i]
                arrays[f"{side}_segment_ids"][row, start:start + n] = segment
                arrays[f"{side}_positions"][row, start:start + n] = np.arange(n)
                start += n
    arrays["attention_mask"] = (arrays["source_segment_ids"] != 0).astype(np.int32)
    return arrays


def row_cost(length: int, hidden_size: int) -> float:
    """Relative compute of one row of `length` positions: the per-position work (projections, feed-forward,
    LM head; ~24 H^2 multiply-adds per position and layer) plus attention, which grows with the row
    (~4 L H per position and layer)."""
    return length * (1.0 + length / (6.0 * hidden_size))


# Pack only when the plan saves at least this fraction of the compute: on the demo's data 19% fewer
# positions measured 11% off the step (the optimizer update and other per-step work do not shrink).
MIN_SAVING = 0.10


def choose_pack_rows(loader_for, batch_size: int, divisor: int, steps: int, hidden_size: int) -> int:
    """`--pack-rows auto`: batch_size / 4 rows (rounded down to a multiple of `divisor`, the batch's shards)
    when packing the run's first `steps` batches plans at least MIN_SAVING less compute than one pair per
    row in per-batch buckets, else 0. `loader_for(rows)` builds the run's loader with that many rows."""
    rows = (batch_size // 4) // divisor * divisor
    if rows < 1 or rows >= batch_size:
        return 0
    unpacked = loader_for(0).planned_cost(steps, hidden_size)
    packed = loader_for(rows).planned_cost(steps, hidden_size)
    return rows if packed <= (1.0 - MIN_SAVING) * unpacked else 0
