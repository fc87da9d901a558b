"""How big and how sparse a dataset is, from its training split: what size-aware defaults read."""

from __future__ import annotations

import dataclasses

import numpy as np

from recattn_jax.data.preprocess import Split


@dataclasses.dataclass(frozen=True, eq=False)
class DataProfile:
  items: int
  history_lengths: np.ndarray  # training events of each user with a training sequence

  @property
  def users(self) -> int:
    return len(self.history_lengths)

  @property
  def train_events(self) -> int:
    return int(self.history_lengths.sum())

  @property
  def events_per_item(self) -> float:
    """Mean training events per catalogue item: how often an item embedding gets a gradient."""
    return self.train_events / max(self.items, 1)

  def history_quantile(self, q: float) -> float:
    return float(np.quantile(self.history_lengths, q))

  def mean_history(self, max_len: int) -> float:
    """Mean training positions per user once histories are cut to their last `max_len` events."""
    return float(np.minimum(self.history_lengths, max_len).mean())

  def summary(self) -> dict:
    return {"users": self.users, "items": self.items, "train_events": self.train_events,
            "events_per_item": round(self.events_per_item, 2),
            "history_p50": self.history_quantile(0.5), "history_p90": self.history_quantile(0.9)}


def profile(split: Split) -> DataProfile:
  lengths = np.asarray([len(s) for s in split.train], np.int64)
  if not len(lengths):
    raise ValueError("the split has no training sequences to size the defaults from")
  return DataProfile(items=int(split.num_items), history_lengths=lengths)
