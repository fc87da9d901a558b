"""Pointwise metrics for the click (CTR) and rating tasks, in numpy.

AUC is the Mann-Whitney statistic from ranks, so it costs one sort
(O(n log n)) and counts a tied (positive, negative) pair as half a win. GAUC is
DIN's user-weighted AUC: each user's AUC over their own examples, weighted by
their number of examples, skipping users whose examples are all of one class
(their AUC is undefined).
"""

from __future__ import annotations

import numpy as np


def _as_1d(name: str, x, dtype) -> np.ndarray:
  x = np.asarray(x, dtype=dtype)
  if x.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
  return x


def _check_same_length(**arrays) -> None:
  lengths = {name: len(a) for name, a in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"arrays differ in length: {lengths}")


def _binary_labels(labels: np.ndarray) -> np.ndarray:
  if not np.isin(labels, (0.0, 1.0)).all():
    raise ValueError("labels must be 0 or 1")
  return labels > 0.5


def _grouped_average_ranks(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """1-based rank of each score within its group; tied scores share their average rank."""
  order = np.lexsort((scores, groups))
  g, s = groups[order], scores[order]
  n = len(s)
  # A run is a maximal stretch of equal (group, score); a group starts a new count.
  new_run = np.ones(n, bool)
  new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
  new_group = np.ones(n, bool)
  new_group[1:] = g[1:] != g[:-1]
  position = np.arange(n)
  group_start = np.maximum.accumulate(np.where(new_group, position, 0))
  run_id = np.cumsum(new_run) - 1
  run_first = position[new_run]
  run_last = np.append(run_first[1:], n) - 1
  # Average of the 1-based ranks first..last within the group.
  avg = (run_first + run_last) / 2.0 + 1.0
  ranks = np.empty(n, np.float64)
  ranks[order] = avg[run_id] - group_start
  return ranks


def auc(labels, scores) -> float:
  """Area under the ROC curve; NaN when the labels hold a single class.

  Args:
    labels: [n] 0/1.
    scores: [n] any monotone score (logits or probabilities).
  """
  labels = _binary_labels(_as_1d("labels", labels, np.float64))
  scores = _as_1d("scores", scores, np.float64)
  _check_same_length(labels=labels, scores=scores)
  pos = int(labels.sum())
  neg = len(labels) - pos
  if pos == 0 or neg == 0:
    return float("nan")
  ranks = _grouped_average_ranks(np.zeros(len(scores), np.int64), scores)
  return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def gauc(users, labels, scores) -> float:
  """Per-user AUC weighted by each user's number of examples (DIN).

  Users whose examples are all positive or all negative are skipped; NaN when
  every user is skipped.
  """
  users = _as_1d("users", users, np.int64)
  labels = _binary_labels(_as_1d("labels", labels, np.float64))
  scores = _as_1d("scores", scores, np.float64)
  _check_same_length(users=users, labels=labels, scores=scores)
  if len(users) == 0:
    return float("nan")
  _, group = np.unique(users, return_inverse=True)
  ranks = _grouped_average_ranks(group, scores)
  size = np.bincount(group).astype(np.float64)
  pos = np.bincount(group, weights=labels.astype(np.float64))
  neg = size - pos
  pos_rank_sum = np.bincount(group, weights=np.where(labels, ranks, 0.0))
  both = (pos > 0) & (neg > 0)
  if not both.any():
    return float("nan")
  user_auc = (pos_rank_sum[both] - pos[both] * (pos[both] + 1) / 2.0) / (pos[both] * neg[both])
  return float(np.sum(user_auc * size[both]) / np.sum(size[both]))


def log_loss(labels, probs, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps]."""
  labels = _as_1d("labels", labels, np.float64)
  probs = np.clip(_as_1d("probs", probs, np.float64), eps, 1.0 - eps)
  _check_same_length(labels=labels, probs=probs)
  return float(-np.mean(labels * np.log(probs) + (1.0 - labels) * np.log1p(-probs)))


def rmse(labels, preds) -> float:
  labels = _as_1d("labels", labels, np.float64)
  preds = _as_1d("preds", preds, np.float64)
  _check_same_length(labels=labels, preds=preds)
  return float(np.sqrt(np.mean((labels - preds) ** 2)))


def mae(labels, preds) -> float:
  labels = _as_1d("labels", labels, np.float64)
  preds = _as_1d("preds", preds, np.float64)
  _check_same_length(labels=labels, preds=preds)
  return float(np.mean(np.abs(labels - preds)))


def ctr_metrics(users, labels, probs) -> dict[str, float]:
  """AUC, GAUC and LogLoss of click probabilities."""
  return {"AUC": auc(labels, probs), "GAUC": gauc(users, labels, probs),
          "LogLoss": log_loss(labels, probs)}


def rating_metrics(labels, preds) -> dict[str, float]:
  return {"RMSE": rmse(labels, preds), "MAE": mae(labels, preds)}


def item_mean_baseline(items, labels, num_items: int, *, prior_weight: float = 1.0) -> np.ndarray:
  """Per-item mean label (click rate, or mean rating), shrunk towards the global mean.

  Returns a [num_items + 1] table: item j's prediction is
  (sum of its labels + prior_weight * global mean) / (count + prior_weight), so
  items unseen in `items` get the global mean. This is the popularity baseline
  of the click task and the item-mean baseline of the rating task.
  """
  items = _as_1d("items", items, np.int64)
  labels = _as_1d("labels", labels, np.float64)
  _check_same_length(items=items, labels=labels)
  if len(items) == 0:
    raise ValueError("item_mean_baseline needs at least one example")
  if items.min() < 0 or items.max() > num_items:
    raise ValueError(f"items must lie in 0..num_items={num_items}")
  if prior_weight < 0:
    raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
  mean = labels.mean()
  total = np.bincount(items, weights=labels, minlength=num_items + 1)
  count = np.bincount(items, minlength=num_items + 1)
  denom = count + prior_weight
  return np.where(denom > 0, (total + prior_weight * mean) / np.where(denom > 0, denom, 1.0), mean)
