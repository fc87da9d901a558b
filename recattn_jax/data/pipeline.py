"""Grain pipelines that turn per-user item sequences into fixed-shape batches.

Training examples follow SASRec: the model reads events 0..n-2 of a user's
training sequence and predicts events 1..n-1 at every position. Sequences
longer than `max_len + 1` keep their newest events.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grain
import numpy as np

PADDING_SIDES = ("left", "right")


def pad_to(seq: np.ndarray, length: int, side: str) -> np.ndarray:
  """Newest `length` entries of `seq`, padded with 0 on `side` to exactly `length`."""
  if side not in PADDING_SIDES:
    raise ValueError(f"data.padding must be one of {PADDING_SIDES}, got {side!r}")
  seq = np.asarray(seq, dtype=np.int32)[-length:] if length else np.zeros(0, np.int32)
  out = np.zeros(length, dtype=np.int32)
  if side == "left":
    out[length - len(seq):] = seq
  else:
    out[:len(seq)] = seq
  return out


def next_item_example(seq: np.ndarray, max_len: int, side: str) -> dict[str, np.ndarray]:
  return {"inputs": pad_to(seq[:-1], max_len, side), "targets": pad_to(seq[1:], max_len, side)}


def windows(seq: np.ndarray, max_len: int) -> list[np.ndarray]:
  """Cuts a long sequence into examples of at most `max_len` predictions, newest first.

  Consecutive windows overlap by one event, so every event of the sequence
  (but the first) is a target exactly once.
  """
  seq = np.asarray(seq, np.int32)
  out = []
  for end in range(len(seq), 1, -max_len):
    out.append(seq[max(0, end - max_len - 1):end])
  return out


def _usable(sequences: Sequence[np.ndarray], max_len: int | None = None) -> list[np.ndarray]:
  """Sequences with at least one prediction; with `max_len`, long ones become several windows."""
  usable = [np.asarray(s, np.int32) for s in sequences if len(s) >= 2]
  if max_len is not None:
    usable = [w for s in usable for w in windows(s, max_len)]
  if not usable:
    raise ValueError("no training sequence has the 2 events needed for one next-item example")
  return usable


def _unpadded_example(seq: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
  seq = seq[-(max_len + 1):]
  return {"inputs": seq[:-1], "targets": seq[1:]}


def _packed(examples: grain.MapDataset, max_len: int, seed: int) -> grain.IterDataset:
  """Several users per row, with `segment_ids` (0 = padding); rows are right-padded."""
  lengths = {"inputs": max_len, "targets": max_len}
  packed = grain.experimental.FirstFitPackIterDataset(
      examples.map(lambda s: _unpadded_example(s, max_len)).to_iter_dataset(),
      length_struct=lengths, num_packing_bins=16, seed=seed)
  return packed.map(lambda row: {"inputs": row["inputs"], "targets": row["targets"],
                                 "segment_ids": row["inputs_segment_ids"]})


def train_dataset(sequences: Sequence[np.ndarray], *, max_len: int, batch_size: int, seed: int,
                  padding: str = "left", pack: bool = False,
                  all_windows: bool = False, prefetch: int = 0) -> grain.MapDataset | grain.IterDataset:
  """An endless stream of shuffled batches; each pass over the data is a fresh permutation.

  Batches may straddle the boundary between two passes, so every example is seen
  exactly once per pass and no example is dropped. With `pack`, short sequences
  share rows instead of being padded (`padding` is then ignored). Sequences
  longer than `max_len + 1` train on their newest window only, or with
  `all_windows` on all their windows. `prefetch` > 0 prepares that many batches
  in a background thread, so that packing overlaps the device's work.
  """
  if padding not in PADDING_SIDES:
    raise ValueError(f"data.padding must be one of {PADDING_SIDES}, got {padding!r}")
  usable = _usable(sequences, max_len if all_windows else None)
  examples = grain.MapDataset.source(usable).shuffle(seed=seed).repeat()
  if pack:
    batches = _packed(examples, max_len, seed).batch(batch_size, drop_remainder=True)
  else:
    batches = examples.map(lambda s: next_item_example(s, max_len, padding)).batch(
        batch_size, drop_remainder=True)
  if prefetch:
    batches = grain.experimental.ThreadPrefetchIterDataset(
        batches.to_iter_dataset() if isinstance(batches, grain.MapDataset) else batches,
        prefetch_buffer_size=prefetch)
  return batches


def rows_per_pass(sequences: Sequence[np.ndarray], *, max_len: int, seed: int, pack: bool,
                  all_windows: bool = False) -> int:
  """Rows one pass over the examples fills: one per example, fewer when packed."""
  usable = _usable(sequences, max_len if all_windows else None)
  if not pack:
    return len(usable)
  one_pass = grain.MapDataset.source(usable).shuffle(seed=seed)
  return sum(1 for _ in _packed(one_pass, max_len, seed))


def eval_batches(histories: Sequence[np.ndarray], targets: np.ndarray, *, max_len: int,
                 batch_size: int, padding: str = "left") -> Iterator[dict[str, np.ndarray]]:
  """Fixed-shape evaluation batches (the last one padded, with `weight` 0 on filler rows).

  `exclude` carries each user's whole history (not only the newest `max_len`
  events), padded to one width for the whole set so that the jitted scorer
  compiles once.
  """
  longest = max((len(h) for h in histories), default=1)
  exclude_width = max(8, int(2 ** np.ceil(np.log2(max(longest, 1)))))
  for start in range(0, len(targets), batch_size):
    stop = min(start + batch_size, len(targets))
    rows = stop - start
    batch = {
        "inputs": np.zeros((batch_size, max_len), np.int32),
        "targets": np.ones(batch_size, np.int32),
        "exclude": np.zeros((batch_size, exclude_width), np.int32),
        "weight": np.zeros(batch_size, np.float32),
    }
    for row, i in enumerate(range(start, stop)):
      batch["inputs"][row] = pad_to(histories[i], max_len, padding)
      batch["exclude"][row, :len(histories[i])] = histories[i]
    batch["targets"][:rows] = targets[start:stop]
    batch["weight"][:rows] = 1.0
    yield batch
