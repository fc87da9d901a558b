"""Pointwise examples for the click (CTR) and rating tasks, from an interaction frame.

Every event of a user, in time order (the stable sort of `preprocess`, so ties
keep file order), becomes one example: the user index, the user's previous
items (newest `max_len`, left-padded with 0, optionally with their ratings),
the event's item and a label.

  * task "ctr": label 1 when rating >= `threshold` (every event when the
    threshold is None: implicit feedback), else 0; plus
    `negatives_per_positive` items the user never interacted with, drawn for
    each positive with the same history (the user's state at that time),
    label 0.
  * task "rating": label = the rating; no sampled negatives.

Split (leave-one-out, as the ranking task): a user's last event is test, the
second-to-last valid, the rest train; users with fewer than 3 events train on
everything. Sampled negatives go to the split of the event they are drawn for.
User and item ids are those of `preprocess.build_sequences` on the same frame
(items 1..N, 0 = padding), so the ranking and pointwise tasks agree.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import pandas as pd

from recattn_jax.data.preprocess import build_sequences

TASKS = ("ctr", "rating")
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class PointwiseSet:
  users: np.ndarray  # int32 [E] user indices
  history: np.ndarray  # int32 [E, max_len] previous items, left-padded, newest last
  items: np.ndarray  # int32 [E] the candidate item
  labels: np.ndarray  # float32 [E] click (0/1) or rating
  sampled: np.ndarray  # bool [E] True for sampled negatives
  history_ratings: np.ndarray | None = None  # float32 [E, max_len], 0 at padding

  def __len__(self) -> int:
    return len(self.labels)

  def arrays(self) -> dict[str, np.ndarray]:
    """The model inputs and labels, the keys a pointwise batch has."""
    out = {"users": self.users, "history": self.history, "items": self.items,
           "labels": self.labels}
    if self.history_ratings is not None:
      out["history_ratings"] = self.history_ratings
    return out


@dataclasses.dataclass
class PointwiseData:
  task: str
  train: PointwiseSet
  valid: PointwiseSet
  test: PointwiseSet
  num_users: int
  num_items: int  # items are 1..num_items; 0 is padding
  user_ids: np.ndarray  # original id (str) of user index u
  item_ids: np.ndarray  # original id (str) of item j; item_ids[0] = "<pad>"
  stats: dict
  # Every user's events (item ids, oldest first; and their ratings when `with_ratings`):
  # what a served model knows of user u.
  sequences: list[np.ndarray] = dataclasses.field(default_factory=list)
  sequence_ratings: list[np.ndarray] | None = None


def _ratings(df: pd.DataFrame, task: str, threshold: float | None) -> np.ndarray:
  if task == "rating":
    why = "task='rating' predicts them"
  elif threshold is not None:
    why = (f"task='ctr' labels clicks as rating >= data.click_threshold={threshold} "
           "(set it to None to count every event as a click)")
  else:
    why = "data.with_ratings feeds them to the model"
  if "rating" not in df.columns:
    raise ValueError(f"the interactions have no 'rating' column; {why}")
  ratings = df["rating"].to_numpy(np.float64)
  missing = int(np.isnan(ratings).sum())
  if missing == len(ratings):
    raise ValueError(f"the interactions' 'rating' column is empty (all NaN); {why}. "
                     "data.min_rating filtering is for the ranking task only")
  if missing:
    raise ValueError(f"{missing} of {len(ratings)} interactions have no 'rating'; {why}")
  return ratings


def _sample_unseen(rng: np.random.Generator, users: np.ndarray, seen_keys: np.ndarray,
                   num_items: int, max_rounds: int = 32) -> np.ndarray:
  """One item per entry of `users`, uniform over 1..num_items minus that user's items.

  `seen_keys` is the sorted array of user * (num_items + 1) + item of every
  interaction. Rejection sampling, vectorised; rows still rejected after
  `max_rounds` (users who saw nearly everything) draw from their exact complement.
  """
  stride = num_items + 1

  def seen(u, items):
    keys = u.astype(np.int64) * stride + items
    pos = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
    return seen_keys[pos] == keys

  out = rng.integers(1, num_items + 1, size=len(users))
  todo = np.flatnonzero(seen(users, out))
  for _ in range(max_rounds):
    if todo.size == 0:
      return out
    out[todo] = rng.integers(1, num_items + 1, size=todo.size)
    todo = todo[seen(users[todo], out[todo])]
  for row in todo:
    user_items = seen_keys[(seen_keys // stride) == users[row]] % stride
    out[row] = rng.choice(np.setdiff1d(np.arange(1, num_items + 1), user_items))
  return out


def _histories(items: np.ndarray, ratings: np.ndarray | None, first: np.ndarray, max_len: int,
               chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray | None]:
  """[E, max_len] items (and ratings) before each event within its user, left-padded.

  `first[e]` is the index of the first event of e's user. Built in chunks of
  events so that the index arrays stay small next to the result.
  """
  n = len(items)
  history = np.zeros((n, max_len), np.int32)
  history_ratings = None if ratings is None else np.zeros((n, max_len), np.float32)
  offsets = np.arange(-max_len, 0, dtype=np.int64)[None, :]
  for start in range(0, n, chunk):
    rows = np.arange(start, min(start + chunk, n))
    window = rows[:, None] + offsets
    inside = window >= first[rows][:, None]
    window = np.where(inside, window, 0)
    history[rows] = np.where(inside, items[window], 0)
    if ratings is not None:
      history_ratings[rows] = np.where(inside, ratings[window], 0.0)
  return history, history_ratings


def build_pointwise_data(df: pd.DataFrame, task: str = "ctr", *, max_len: int = 50,
                         threshold: float | None = 4.0, negatives_per_positive: int = 1,
                         with_ratings: bool = False, seed: int = 0) -> PointwiseData:
  """Pointwise train/valid/test examples (see the module docstring).

  Args:
    df: interactions with user_id, item_id, timestamp and rating (see `readers`).
    task: "ctr" or "rating".
    max_len: `data.max_len`, the newest events kept in a history.
    threshold: `data.click_threshold`; ctr only.
    negatives_per_positive: `data.negatives_per_positive`; ctr only.
    with_ratings: `data.with_ratings`, also return the history's ratings.
    seed: seeds the negative sampling.
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  if max_len < 1:
    raise ValueError(f"data.max_len must be >= 1, got {max_len}")
  if negatives_per_positive < 0:
    raise ValueError(f"data.negatives_per_positive must be >= 0, got {negatives_per_positive}")
  needs_ratings = task == "rating" or threshold is not None or with_ratings
  ratings = _ratings(df, task, threshold) if needs_ratings else np.ones(len(df))

  data = build_sequences(df)
  num_items = data.num_items
  users = pd.Index(data.user_ids).get_indexer(df["user_id"].astype(str))
  items = pd.Index(data.item_ids[1:]).get_indexer(df["item_id"].astype(str)) + 1
  # The order of build_sequences: by user, then time, ties in row order.
  order = np.lexsort((df["timestamp"].to_numpy(np.float64), users))
  users, items, ratings = users[order].astype(np.int32), items[order].astype(np.int32), ratings[order]
  if not np.array_equal(items, np.concatenate(data.sequences)):
    raise AssertionError("event order differs from build_sequences")  # a bug, not bad input

  counts = np.bincount(users, minlength=data.num_users)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  n_events = len(items)
  position = np.arange(n_events) - starts[users]  # index of the event within its user
  length = counts[users]
  split = np.zeros(n_events, np.int8)  # 0 train, 1 valid, 2 test
  evaluable = length >= 3
  split[evaluable & (position == length - 2)] = 1
  split[evaluable & (position == length - 1)] = 2

  history, history_ratings = _histories(items, ratings if with_ratings else None,
                                        starts[users], max_len)

  if task == "rating":
    labels = ratings.astype(np.float32)
  elif threshold is None:
    labels = np.ones(n_events, np.float32)
  else:
    labels = (ratings >= threshold).astype(np.float32)

  # Sampled negatives: rows that copy their event's inputs with another item.
  parent = np.zeros(0, np.int64)
  negatives = np.zeros(0, np.int32)
  full_users = 0
  if task == "ctr" and negatives_per_positive:
    seen_keys = np.unique(users.astype(np.int64) * (num_items + 1) + items)
    distinct = np.bincount(seen_keys // (num_items + 1), minlength=data.num_users)
    full_users = int(np.sum(distinct >= num_items))
    can_sample = (labels > 0) & (distinct[users] < num_items)
    parent = np.repeat(np.flatnonzero(can_sample), negatives_per_positive)
    rng = np.random.default_rng(seed)
    negatives = _sample_unseen(rng, users[parent], seen_keys, num_items).astype(np.int32)

  # Event rows then negatives, ordered so that a positive's negatives follow it.
  source = np.concatenate([np.arange(n_events), parent])
  row_order = np.lexsort((np.arange(len(source)), source))
  source = source[row_order]
  is_sampled = row_order >= n_events
  row_items = np.concatenate([items, negatives])[row_order]
  row_labels = np.concatenate([labels, np.zeros(len(parent), np.float32)])[row_order]

  sets = {}
  stats = {
      "task": task, "events": n_events, "users": data.num_users, "items": num_items,
      "max_len": max_len, "histories_truncated": int(np.sum(position > max_len)),
      "users_too_short_for_eval": int(np.sum(counts < 3)),
      "user_id_order": data.stats["user_id_order"], "item_id_order": data.stats["item_id_order"],
  }
  if task == "ctr":
    stats.update(click_threshold=threshold, negatives_per_positive=negatives_per_positive,
                 negative_seed=seed, users_without_negatives=full_users)
  for code, name in enumerate(SPLITS):
    rows = np.flatnonzero(split[source] == code)
    ev = source[rows]
    sets[name] = PointwiseSet(
        users=users[ev], history=history[ev], items=row_items[rows], labels=row_labels[rows],
        sampled=is_sampled[rows],
        history_ratings=None if history_ratings is None else history_ratings[ev])
    stats[f"{name}_examples"] = len(rows)
    stats[f"{name}_label_mean"] = float(row_labels[rows].mean()) if len(rows) else float("nan")
    if task == "ctr":
      stats[f"{name}_sampled_negatives"] = int(is_sampled[rows].sum())
  sequence_ratings = (np.split(ratings.astype(np.float32), np.cumsum(counts)[:-1])
                      if with_ratings else None)
  return PointwiseData(task=task, **sets, num_users=data.num_users, num_items=num_items,
                       user_ids=data.user_ids, item_ids=data.item_ids, stats=stats,
                       sequences=data.sequences, sequence_ratings=sequence_ratings)


def batches(arrays: dict[str, np.ndarray], batch_size: int, *, shuffle: bool = False,
            seed: int = 0, drop_remainder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-shape batches of `arrays` (all [E, ...]) with a "weight" of 1 per real row.

  The last partial batch is padded with copies of row 0 at weight 0 (unless
  `drop_remainder`), so a jitted step sees one shape.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  sizes = {k: len(v) for k, v in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"arrays differ in length: {sizes}")
  n = next(iter(sizes.values()))
  order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    rows = order[start:start + batch_size]
    weight = np.ones(batch_size, np.float32)
    if len(rows) < batch_size:
      weight[len(rows):] = 0.0
      rows = np.concatenate([rows, np.zeros(batch_size - len(rows), rows.dtype)])
    batch = {k: v[rows] for k, v in arrays.items()}
    batch["weight"] = weight
    yield batch
