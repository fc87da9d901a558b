"""From an interaction frame (see `readers`) to item sequences and evaluation splits.

Rules every function here follows, because results depend on them:

* Chronological order is a *stable* sort by timestamp: events with equal
  timestamps keep the order of the rows in the frame (the file order). MovieLens
  has many same-second ratings; any other tie-break would change the targets.
* Item ids are 1..num_items (0 is padding), user indices 0..num_users-1, both
  assigned in order of the original id: numeric order when every id is an
  unsigned integer, else lexicographic. That keeps S3Rec's ids 1..N unchanged and
  does not depend on timestamps or on which filters ran.
* Nothing is dropped silently: every skip is counted in a `stats` dict that is
  meant to be logged and saved with results.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pandas as pd

PAD = "<pad>"
_COLUMNS = ("user_id", "item_id", "timestamp")


@dataclasses.dataclass
class SequenceData:
  sequences: list[np.ndarray]  # per user, int32 item ids in 1..num_items, chronological
  timestamps: list[np.ndarray]  # per user, float64, aligned with sequences
  num_items: int  # ids 1..num_items are items; 0 is reserved for padding
  user_ids: np.ndarray  # original user id (str) of user index u
  item_ids: np.ndarray  # original item id (str) of item j; item_ids[0] = "<pad>"
  stats: dict  # counts of what was filtered/skipped, for logs and results.json

  @property
  def num_users(self) -> int:
    return len(self.sequences)


@dataclasses.dataclass
class EvalSet:
  users: np.ndarray  # int32 user indices
  histories: list[np.ndarray]  # all items before the target, chronological
  targets: np.ndarray  # int32
  # Per example, float64 seconds aligned with `histories` (None: not recorded).
  history_timestamps: list[np.ndarray] | None = None

  def __len__(self) -> int:
    return len(self.targets)


@dataclasses.dataclass
class Split:
  train: list[np.ndarray]  # per user training sequences (users with >=2 training events)
  valid: EvalSet
  test: EvalSet
  num_items: int
  stats: dict
  # User index of each `train` sequence (train skips users with < 2 training events).
  train_users: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int32))
  # Original item id of internal item j (item_ids[0] = "<pad>"), as in `SequenceData`;
  # item features (`data.features`) are aligned through it. None when built by hand.
  item_ids: np.ndarray | None = None
  # float64 seconds aligned with each `train` sequence (empty when built by hand).
  train_timestamps: list[np.ndarray] = dataclasses.field(default_factory=list)
  # Original user id of user index u, as in `SequenceData` (None when built by hand).
  user_ids: np.ndarray | None = None
  # Every user's whole sequence (and its float64 seconds), target events included: what
  # a served model knows of user u (`SequenceData.sequences`; empty when built by hand).
  sequences: list[np.ndarray] = dataclasses.field(default_factory=list)
  sequence_timestamps: list[np.ndarray] = dataclasses.field(default_factory=list)


def _check_frame(df: pd.DataFrame) -> None:
  missing = [c for c in _COLUMNS if c not in df.columns]
  if missing:
    raise ValueError(f"interaction frame lacks columns {missing}; has {list(df.columns)}")


def _check_times(timestamps: np.ndarray) -> np.ndarray:
  if np.isnan(timestamps).any():
    raise ValueError("timestamps contain NaN; chronological order is undefined")
  return timestamps


def _chronological(timestamps: np.ndarray) -> np.ndarray:
  """Row order by time; ties keep row order (the documented tie-break)."""
  return np.argsort(_check_times(timestamps), kind="stable")


# ----------------------------------------------------------------------------
# Filters on the frame.


def kcore_filter(df: pd.DataFrame, user_k: int = 5,
                 item_k: int = 5) -> tuple[pd.DataFrame, dict]:
  """Keeps the largest subset where users have >= user_k and items >= item_k events.

  Removing a user can push an item under its threshold and back, so this repeats
  until nothing changes. Every event counts, repeats of a (user, item) pair too
  (run `dedupe` first to count pairs). A threshold of 0 (or 1) disables a side.

  Returns:
    the kept rows in their original order (fresh index), and stats: thresholds,
    `rounds` (passes that removed something), and before/after/removed counts of
    interactions, users and items.
  """
  _check_frame(df)
  if user_k < 0 or item_k < 0:
    raise ValueError(f"k-core thresholds must be >= 0, got user_k={user_k}, item_k={item_k}")
  users = pd.factorize(df["user_id"])[0]
  items = pd.factorize(df["item_id"])[0]
  keep = np.ones(len(df), dtype=bool)
  rounds = 0
  while True:
    user_counts = np.bincount(users[keep], minlength=users.max(initial=-1) + 1)
    item_counts = np.bincount(items[keep], minlength=items.max(initial=-1) + 1)
    drop = keep & ((user_counts[users] < user_k) | (item_counts[items] < item_k))
    if not drop.any():
      break
    keep &= ~drop
    rounds += 1
  stats = {"user_k": user_k, "item_k": item_k, "rounds": rounds}
  for name, before, after in (
      ("interactions", len(df), int(keep.sum())),
      ("users", len(user_counts), int(np.count_nonzero(user_counts))),
      ("items", len(item_counts), int(np.count_nonzero(item_counts)))):
    stats.update({f"{name}_before": before, f"{name}_after": after,
                  f"{name}_removed": before - after})
  return df.iloc[np.flatnonzero(keep)].reset_index(drop=True), stats


def dedupe(df: pd.DataFrame,
           keep: Literal["first", "last"] | None = "first") -> pd.DataFrame:
  """Keeps one event per (user, item) pair: its first or last in time.

  "first"/"last" follow the chronological order (ties: row order); the kept rows
  stay in their original order, so later tie-breaks are unaffected. `keep=None`
  returns the frame unchanged, so a config can switch deduplication off. The
  number removed is `len(df) - len(result)`.
  """
  _check_frame(df)
  if keep is None:
    return df
  if keep not in ("first", "last"):
    raise ValueError(f"keep must be 'first', 'last' or None, got {keep!r}")
  order = _chronological(df["timestamp"].to_numpy(np.float64))
  repeated = np.zeros(len(df), dtype=bool)
  repeated[order] = df[["user_id", "item_id"]].iloc[order].duplicated(keep=keep).to_numpy()
  return df.iloc[np.flatnonzero(~repeated)].reset_index(drop=True)


# ----------------------------------------------------------------------------
# Id remapping and sequences.


def _id_order(uniques: np.ndarray) -> tuple[np.ndarray, str]:
  """Permutation sorting distinct ids: numerically if all are unsigned ints."""
  ids = pd.Series(uniques, dtype=str)
  if ids.str.fullmatch(r"\d+").all():
    lengths = ids.str.len().to_numpy()
    if lengths.max(initial=0) <= 18:  # fits int64
      # Length breaks ties between "7" and "007", which are distinct ids.
      return np.lexsort((lengths, ids.astype(np.int64).to_numpy())), "numeric"
    key = [(int(s), len(s)) for s in uniques]
    return np.array(sorted(range(len(uniques)), key=key.__getitem__)), "numeric"
  return np.argsort(ids.to_numpy(dtype=str), kind="stable"), "lexicographic"


def _encode(values: pd.Series) -> tuple[np.ndarray, np.ndarray, str]:
  """Codes 0..K-1 assigned in id order, and the ids in that order."""
  codes, uniques = pd.factorize(values.astype(str))
  uniques = np.asarray(uniques, dtype=object)
  order, how = _id_order(uniques)
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  return rank[codes], uniques[order], how


def build_sequences(df: pd.DataFrame, min_rating: float | None = None) -> SequenceData:
  """Groups interactions into per-user chronological item sequences.

  Chronological order is a stable sort by timestamp: equal timestamps keep the
  frame's row order (for the readers, the file order). Item ids are 1..N and user
  indices 0..U-1, assigned in original-id order (numeric if all ids are unsigned
  integers, else lexicographic), so the mapping is deterministic and independent
  of timestamps. Repeated (user, item) events are kept (see `dedupe`).

  Args:
    df: frame with user_id, item_id, timestamp (and rating if `min_rating`).
    min_rating: keep only events rated >= this (implicit feedback from ratings);
      the ids are assigned after this filter, so dropped items get no id.
  """
  _check_frame(df)
  stats: dict = {"interactions_in": len(df)}
  if min_rating is not None:
    ratings = df["rating"].to_numpy(np.float64)
    if np.isnan(ratings).all():
      raise ValueError("min_rating is set but the interactions have no ratings")
    kept = ratings >= min_rating  # NaN ratings fail the test and are counted
    stats.update(min_rating=float(min_rating), below_min_rating=int((~kept).sum()))
    df = df.iloc[np.flatnonzero(kept)]
  if len(df) == 0:
    raise ValueError("no interactions left to build sequences from")

  timestamps = _check_times(df["timestamp"].to_numpy(np.float64))
  users, user_ids, user_order = _encode(df["user_id"])
  items, item_ids, item_order = _encode(df["item_id"])
  # By user, then time; lexsort is stable, so equal times keep the row order.
  order = np.lexsort((timestamps, users))
  sorted_users, sorted_times = users[order], timestamps[order]
  sorted_items = (items[order] + 1).astype(np.int32)
  same_user = sorted_users[1:] == sorted_users[:-1]
  pairs = np.sort(users.astype(np.int64) * len(item_ids) + items)
  stats.update(
      interactions=len(df), users=len(user_ids), items=len(item_ids),
      user_id_order=user_order, item_id_order=item_order,
      tied_timestamps=int((same_user & (sorted_times[1:] == sorted_times[:-1])).sum()),
      repeated_pairs=int((pairs[1:] == pairs[:-1]).sum()))
  ends = np.cumsum(np.bincount(users, minlength=len(user_ids)))
  spans = list(zip([0, *ends[:-1].tolist()], ends.tolist()))
  return SequenceData(
      sequences=[sorted_items[a:b] for a, b in spans],
      timestamps=[sorted_times[a:b] for a, b in spans],
      num_items=len(item_ids),
      user_ids=user_ids,
      item_ids=np.concatenate([np.array([PAD], dtype=object), item_ids]),
      stats=stats,
  )


# ----------------------------------------------------------------------------
# Splits.


class _SplitBuilder:
  """Collects train sequences and eval examples user by user."""

  def __init__(self):
    self.train: list[np.ndarray] = []
    self.train_users: list[int] = []
    self.train_timestamps: list[np.ndarray] = []
    self.evals = {"valid": ([], [], [], []), "test": ([], [], [], [])}

  def add_train(self, user: int, sequence: np.ndarray, times: np.ndarray) -> None:
    if len(sequence) >= 2:  # one event has no next item to predict
      self.train.append(sequence)
      self.train_users.append(user)
      self.train_timestamps.append(times)

  def add_eval(self, name: str, user: int, history: np.ndarray, target: int,
               times: np.ndarray) -> None:
    users, histories, targets, history_times = self.evals[name]
    users.append(user)
    histories.append(history)
    targets.append(target)
    history_times.append(times)

  def _eval_set(self, name: str) -> EvalSet:
    users, histories, targets, history_times = self.evals[name]
    return EvalSet(np.asarray(users, np.int32), histories, np.asarray(targets, np.int32),
                   history_timestamps=history_times)

  def build(self, data: SequenceData, stats: dict) -> Split:
    stats = {**data.stats, **stats, "train_users": len(self.train),
             "train_events": int(sum(len(s) for s in self.train)),
             "valid_users": len(self.evals["valid"][2]),
             "test_users": len(self.evals["test"][2])}
    return Split(train=self.train, valid=self._eval_set("valid"),
                 test=self._eval_set("test"), num_items=data.num_items, stats=stats,
                 train_users=np.asarray(self.train_users, np.int32), item_ids=data.item_ids,
                 train_timestamps=self.train_timestamps, user_ids=data.user_ids,
                 sequences=data.sequences, sequence_timestamps=data.timestamps)


def leave_one_out(data: SequenceData) -> Split:
  """Last event is the test target, second-to-last the validation target.

  Histories are all earlier events; train is `sequence[:-2]`. Users with fewer
  than 3 events get no valid/test example (counted as
  `users_too_short_for_eval`) and train on their whole sequence if it has 2.
  """
  builder = _SplitBuilder()
  too_short = 0
  for user, (sequence, times) in enumerate(zip(data.sequences, data.timestamps)):
    if len(sequence) < 3:
      too_short += 1
      builder.add_train(user, sequence, times)
      continue
    builder.add_train(user, sequence[:-2], times[:-2])
    builder.add_eval("valid", user, sequence[:-2], int(sequence[-2]), times[:-2])
    builder.add_eval("test", user, sequence[:-1], int(sequence[-1]), times[:-1])
  return builder.build(data, {"split": "leave_one_out",
                              "users_too_short_for_eval": too_short})


def time_split(data: SequenceData, valid_start: float, test_start: float) -> Split:
  """Global temporal split at two cut points.

  Train holds the events with t < valid_start. Each user's valid example is their
  first event in [valid_start, test_start), the test example their first event
  with t >= test_start; the history is every earlier event of that user (for
  test, train and validation periods both). Examples with an empty history are
  skipped and counted. Items never seen in the train period are kept and counted
  (`cold_items`, `valid_cold_targets`, `test_cold_targets`): a model can only
  guess them, and hiding them would flatter it.
  """
  if not valid_start <= test_start:
    raise ValueError(f"need valid_start <= test_start, got {valid_start} > {test_start}")
  builder = _SplitBuilder()
  skipped = {"valid": 0, "test": 0}
  train_items = np.zeros(data.num_items + 1, dtype=bool)
  for user, (sequence, times) in enumerate(zip(data.sequences, data.timestamps)):
    if np.any(np.diff(times) < 0):
      raise ValueError(f"user {user}: timestamps are not in chronological order")
    v, t = np.searchsorted(times, [valid_start, test_start], side="left")
    builder.add_train(user, sequence[:v], times[:v])
    train_items[sequence[:v]] = True
    for name, cut, has_event in (("valid", v, v < t), ("test", t, t < len(sequence))):
      if not has_event:
        continue
      if cut == 0:
        skipped[name] += 1
      else:
        builder.add_eval(name, user, sequence[:cut], int(sequence[cut]), times[:cut])
  split = builder.build(data, {
      "split": "time", "valid_start": float(valid_start), "test_start": float(test_start),
      "valid_skipped_empty_history": skipped["valid"],
      "test_skipped_empty_history": skipped["test"]})
  seen = np.zeros(data.num_items + 1, dtype=bool)
  for sequence in data.sequences:
    seen[sequence] = True
  split.stats["cold_items"] = int((seen & ~train_items).sum())
  for name in ("valid", "test"):
    targets = getattr(split, name).targets
    split.stats[f"{name}_cold_targets"] = int((~train_items[targets]).sum())
  return split


def time_split_by_quantile(data: SequenceData, valid_q: float = 0.8,
                           test_q: float = 0.9) -> Split:
  """`time_split` with cut points at quantiles of all event timestamps.

  The cut points are `np.quantile` (linear interpolation) of every event time,
  so about (1 - valid_q) of the events fall after validation starts.
  """
  if not 0.0 <= valid_q <= test_q <= 1.0:
    raise ValueError(f"need 0 <= valid_q <= test_q <= 1, got {valid_q}, {test_q}")
  times = np.concatenate(data.timestamps) if data.timestamps else np.zeros(0)
  if times.size == 0:
    raise ValueError("no events to split")
  valid_start, test_start = np.quantile(times, [valid_q, test_q])
  split = time_split(data, float(valid_start), float(test_start))
  split.stats.update(valid_q=float(valid_q), test_q=float(test_q))
  return split
