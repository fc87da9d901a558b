"""Grain pipelines that turn per-user item sequences into fixed-shape batches.

Two training objectives:
  * "next_item" (SASRec): the model reads events 0..n-2 of a user's training
    sequence and predicts events 1..n-1 at every position. Sequences longer
    than `max_len + 1` keep their newest events.
  * "cloze" (BERT4Rec, see `cloze.py`): the model reads the newest `max_len`
    events with some replaced by a mask id and predicts the original ids at
    those positions (targets are 0 elsewhere). The masks are drawn afresh on
    every pass, from a generator seeded by (seed, index of the example in the
    endless stream), so a resumed iterator draws the same masks. With
    `all_windows` a cloze example is the newest `max_len` events of each
    next-item window, which still covers every event once, except the first
    event of a sequence whose length is 1 more than a multiple of `max_len`.

Optional per-event timestamps travel as a "timestamps" key aligned with
"inputs": float32 seconds relative to the example's newest input event
(float32 holds epoch seconds only to about a minute; relative to the newest
event the recent gaps stay exact, and only differences within a sequence
carry meaning).

Optional user numbers travel as a "users" key, the same for every position of
an example: the user's index + 1 (0 = padding), for encoders with a per-user
context (`models/user_context.py`). Packed rows keep each position's own user.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from recattn_jax.data.cloze import append_mask, cloze_example

PADDING_SIDES = ("left", "right")
OBJECTIVES = ("next_item", "cloze")


def pad_to(seq: np.ndarray, length: int, side: str, dtype=np.int32) -> np.ndarray:
  """Newest `length` entries of `seq`, padded with 0 on `side` to exactly `length`."""
  if side not in PADDING_SIDES:
    raise ValueError(f"data.padding must be one of {PADDING_SIDES}, got {side!r}")
  seq = np.asarray(seq, dtype=dtype)[-length:] if length else np.zeros(0, dtype)
  out = np.zeros(length, dtype=dtype)
  if side == "left":
    out[length - len(seq):] = seq
  else:
    out[:len(seq)] = seq
  return out


def _window_slices(length: int, max_len: int) -> list[slice]:
  return [slice(max(0, end - max_len - 1), end) for end in range(length, 1, -max_len)]


def relative_times(times: np.ndarray) -> np.ndarray:
  """float32 seconds relative to the newest entry (see the module docstring)."""
  times = np.asarray(times, np.float64)
  return (times - times[-1]).astype(np.float32) if len(times) else np.zeros(0, np.float32)


def _check_aligned(name: str, values: Sequence | None, sequences: Sequence) -> None:
  if values is not None and len(values) != len(sequences):
    raise ValueError(f"{len(values)} {name} for {len(sequences)} sequences")


def _usable(sequences: Sequence[np.ndarray], max_len: int | None = None,
            timestamps: Sequence[np.ndarray] | None = None,
            users: Sequence[int] | None = None) -> list[dict]:
  """Sequences with at least one prediction; with `max_len`, long ones become several windows.

  Records are dicts: "items" int32, plus "times" float64 with `timestamps` and
  "user" (index + 1) with `users`.
  """
  _check_aligned("timestamp arrays", timestamps, sequences)
  _check_aligned("user indices", users, sequences)
  usable = []
  for i, seq in enumerate(sequences):
    if len(seq) < 2:
      continue
    seq = np.asarray(seq, np.int32)
    times = None if timestamps is None else np.asarray(timestamps[i], np.float64)
    if times is not None and times.shape != seq.shape:
      raise ValueError(f"sequence {i}: {len(times)} timestamps for {len(seq)} events")
    cuts = [slice(None)] if max_len is None else _window_slices(len(seq), max_len)
    for cut in cuts:
      record = {"items": seq[cut]}
      if times is not None:
        record["times"] = times[cut]
      if users is not None:
        record["user"] = int(users[i]) + 1
      usable.append(record)
  if not usable:
    raise ValueError("no training sequence has the 2 events needed for one next-item example")
  return usable


def _with_extras(example: dict[str, np.ndarray], record: dict, times_kept: slice) -> dict:
  if "times" in record:
    example["timestamps"] = relative_times(record["times"][times_kept])
  if "user" in record:
    example["users"] = np.full(len(example["inputs"]), record["user"], np.int32)
  return example


def _unpadded_example(record: dict, max_len: int) -> dict[str, np.ndarray]:
  seq = record["items"][-(max_len + 1):]
  example = {"inputs": seq[:-1], "targets": seq[1:]}
  return _with_extras(example, record, slice(-(max_len + 1), -1))


def _unpadded_cloze(record: dict, rng: np.random.Generator, *, max_len: int,
                    **masking) -> dict[str, np.ndarray]:
  example = cloze_example(record["items"], rng, max_len=max_len, **masking)
  return _with_extras(example, record, slice(-max_len, None))


def _padded(example: dict[str, np.ndarray], max_len: int, side: str) -> dict[str, np.ndarray]:
  return {key: pad_to(value, max_len, side, np.float32 if key == "timestamps" else np.int32)
          for key, value in example.items()}


def _examples(records: grain.MapDataset, *, objective: str, max_len: int, seed: int,
              mask_prob: float, mask_id: int | None, last_item_prob: float) -> grain.MapDataset:
  """Unpadded example dicts for `objective`; cloze masks depend on (seed, index)."""
  if objective == "next_item":
    return records.map(functools.partial(_unpadded_example, max_len=max_len))
  if objective == "cloze":
    if mask_id is None:
      raise ValueError("objective='cloze' needs mask_id (num_items + 1 for BERT4Rec)")
    return records.random_map(
        functools.partial(_unpadded_cloze, max_len=max_len, mask_prob=mask_prob,
                          mask_id=mask_id, last_item_prob=last_item_prob), seed=seed)
  raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _pack(examples: grain.MapDataset, max_len: int, seed: int,
          keys: tuple[str, ...]) -> grain.IterDataset:
  """Several users per row, with `segment_ids` (0 = padding); rows are right-padded."""
  packed = grain.experimental.FirstFitPackIterDataset(
      examples.to_iter_dataset(), length_struct={key: max_len for key in keys},
      num_packing_bins=16, seed=seed)
  return packed.map(lambda row: {**{key: row[key] for key in keys},
                                 "segment_ids": row["inputs_segment_ids"]})


def _packed(records: grain.MapDataset, max_len: int, seed: int) -> grain.IterDataset:
  """Packed next-item rows of item sequences (no timestamps)."""
  return _pack(records.map(functools.partial(_unpadded_example, max_len=max_len)), max_len, seed,
               ("inputs", "targets"))


def train_dataset(sequences: Sequence[np.ndarray], *, max_len: int, batch_size: int, seed: int,
                  padding: str = "left", pack: bool = False,
                  all_windows: bool = False, prefetch: int = 0, objective: str = "next_item",
                  mask_prob: float = 0.2, mask_id: int | None = None,
                  last_item_prob: float = 0.0,
                  timestamps: Sequence[np.ndarray] | None = None,
                  users: Sequence[int] | None = None, rows: slice | None = None,
                  ) -> grain.MapDataset | grain.IterDataset:
  """An endless stream of shuffled batches; each pass over the data is a fresh permutation.

  Batches may straddle the boundary between two passes, so every example is seen
  exactly once per pass and no example is dropped. With `pack`, short sequences
  share rows instead of being padded (`padding` is then ignored). Sequences
  longer than `max_len + 1` train on their newest window only, or with
  `all_windows` on all their windows. `prefetch` > 0 prepares that many batches
  in a background thread, so that packing overlaps the device's work.

  `objective` is "next_item" or "cloze" (with `mask_prob`, `mask_id` and
  `last_item_prob`, see `cloze.py`); batches are {"inputs", "targets"} [B, L]
  int32 either way, plus "segment_ids" when packed and "timestamps" [B, L]
  float32 when `timestamps` (per sequence, aligned with `sequences`) is given,
  and "users" [B, L] int32 (user index + 1) when `users` is.

  `rows` (several processes): the rows of each global batch of `batch_size`
  that this process feeds (`parallel.process_rows`); every process runs the
  same pipeline, so together they make the batches one process would. Unpacked,
  a process builds only its own examples (Grain reads the stream with a
  stride); packing must place every example, so each process packs the whole
  stream and keeps its rows.
  """
  if padding not in PADDING_SIDES:
    raise ValueError(f"data.padding must be one of {PADDING_SIDES}, got {padding!r}")
  usable = _usable(sequences, max_len if all_windows else None, timestamps, users)
  records = grain.MapDataset.source(usable).shuffle(seed=seed).repeat()
  examples = _examples(records, objective=objective, max_len=max_len, seed=seed,
                       mask_prob=mask_prob, mask_id=mask_id, last_item_prob=last_item_prob)
  keys = (("inputs", "targets") + (("timestamps",) if timestamps is not None else ())
          + (("users",) if users is not None else ()))
  if pack:
    batches = _pack(examples, max_len, seed, keys).batch(batch_size, drop_remainder=True)
    if rows is not None and (rows.start, rows.stop) != (0, batch_size):
      batches = batches.map(functools.partial(_take_rows, rows=rows))
  else:
    batches = process_share(examples.map(lambda ex: _padded(ex, max_len, padding)), batch_size, rows)
  if prefetch:
    batches = grain.experimental.ThreadPrefetchIterDataset(
        batches.to_iter_dataset() if isinstance(batches, grain.MapDataset) else batches,
        prefetch_buffer_size=prefetch)
  return batches


def _take_rows(batch: dict, rows: slice) -> dict:
  return {key: value[rows] for key, value in batch.items()}


def process_share(examples: grain.MapDataset, batch_size: int, rows: slice | None) -> grain.MapDataset:
  """Batches of `batch_size` consecutive examples, or of this process's `rows` of each.

  A process's rows [a, b) of global batch j are examples j * batch_size + a ..
  + b: batches of b - a examples, taking every (batch_size / (b - a))-th one
  from the (a / (b - a))-th on. Grain slices lazily, so other rows are never built.
  """
  rows = slice(0, batch_size) if rows is None else rows
  width = rows.stop - rows.start
  if width <= 0 or batch_size % width or rows.start % width:
    raise ValueError(f"rows {rows.start}:{rows.stop} are not one of equal blocks of a batch of "
                     f"{batch_size}")
  batches = examples.batch(width, drop_remainder=True)
  return batches if width == batch_size else batches[rows.start // width::batch_size // width]


def rows_per_pass(sequences: Sequence[np.ndarray], *, max_len: int, seed: int, pack: bool,
                  all_windows: bool = False, objective: str = "next_item") -> int:
  """Rows one pass over the examples fills: one per example, fewer when packed.

  Pass the training `objective`: a cloze example holds one event more than a
  next-item one, so rows pack differently.
  """
  usable = _usable(sequences, max_len if all_windows else None)
  if not pack:
    return len(usable)
  one_pass = grain.MapDataset.source(usable).shuffle(seed=seed)
  if objective == "next_item":
    return sum(1 for _ in _packed(one_pass, max_len, seed))
  if objective != "cloze":
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
  # Packing depends on lengths only, and masking does not change them.
  unmasked = one_pass.map(lambda r: {"inputs": r["items"][-max_len:], "targets": r["items"][-max_len:]})
  return sum(1 for _ in _pack(unmasked, max_len, seed, ("inputs", "targets")))


def eval_batches(histories: Sequence[np.ndarray], targets: np.ndarray, *, max_len: int,
                 batch_size: int, padding: str = "left", append_mask_id: int | None = None,
                 timestamps: Sequence[np.ndarray] | None = None,
                 users: Sequence[int] | None = None, min_exclude_width: int = 8,
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-shape evaluation batches (the last one padded, with `weight` 0 on filler rows).

  `exclude` carries each user's whole history (not only the newest `max_len`
  events), padded to one width for the whole set (a power of two, at least
  `min_exclude_width`) so that the jitted scorer compiles once. With `append_mask_id` (cloze-trained encoders) the inputs are
  the newest `max_len - 1` events followed by that id, so the user
  representation is the output at the newest input as for next-item models.
  `timestamps` (aligned with `histories`) adds "timestamps" [B, L] float32
  relative to the newest history event; an appended mask gets time 0.
  `users` (user indices aligned with `histories`) adds "users" [B, L] int32,
  index + 1 on every position of the row (0 on filler rows).
  """
  _check_aligned("timestamp arrays", timestamps, histories)
  _check_aligned("user indices", users, histories)
  longest = max((len(h) for h in histories), default=1)
  exclude_width = max(min_exclude_width, int(2 ** np.ceil(np.log2(max(longest, 1)))))
  for start in range(0, len(targets), batch_size):
    stop = min(start + batch_size, len(targets))
    rows = stop - start
    batch = {
        "inputs": np.zeros((batch_size, max_len), np.int32),
        "targets": np.ones(batch_size, np.int32),
        "exclude": np.zeros((batch_size, exclude_width), np.int32),
        "weight": np.zeros(batch_size, np.float32),
    }
    if timestamps is not None:
      batch["timestamps"] = np.zeros((batch_size, max_len), np.float32)
    if users is not None:
      batch["users"] = np.zeros((batch_size, max_len), np.int32)
    for row, i in enumerate(range(start, stop)):
      inputs = histories[i] if append_mask_id is None else append_mask(
          histories[i], max_len, append_mask_id)
      batch["inputs"][row] = pad_to(inputs, max_len, padding)
      batch["exclude"][row, :len(histories[i])] = histories[i]
      if timestamps is not None:
        times = relative_times(timestamps[i])
        if append_mask_id is not None:
          times = np.append(times[len(times) - len(inputs) + 1:], np.float32(0.0))
        batch["timestamps"][row] = pad_to(times, max_len, padding, np.float32)
      if users is not None:
        batch["users"][row] = int(users[i]) + 1
    batch["targets"][:rows] = targets[start:stop]
    batch["weight"][:rows] = 1.0
    yield batch
