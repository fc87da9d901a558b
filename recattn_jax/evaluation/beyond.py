"""Beyond-accuracy metrics of top-K recommendation lists (numpy).

Inputs are top-K lists `topk` [U, K] of item ids (best first; 0 = no item, as
`top_k_items` fills short lists), the users' targets [U] and the training
popularity `popularity` [N + 1] (interactions per item in the training data,
entry 0 for padding). Every metric "@k" looks at the first k entries of each
list.

* coverage@k: share of the N catalogue items recommended to at least one user.
* gini@k: Gini index of exposure over all N items, never-recommended ones
  included. With c_(1) <= ... <= c_(N) the sorted numbers of lists each item
  appears in,
      G = sum_j (2j - N - 1) c_(j) / (N * sum_j c_(j)),
  0 when every item is recommended equally often, (N - 1) / N when a single
  item takes every slot (0 when nothing is recommended at all).
* ARP@k (average recommendation popularity): the mean over users of the mean
  training popularity of their recommended items.
* Accuracy by popularity bucket of the target. Buckets follow the training
  interactions: an item whose more popular items (strictly more interactions)
  hold a share s of all training interactions is
      head  if s < shares[0]   (default 0.2),
      mid   if s < shares[1]   (default 0.8),
      tail  otherwise,
  and "cold" when it has no training interaction at all. So the head is the
  few popular items that make up the first ~20% of the interactions and the
  tail the many items of the last ~20%; equally popular items always share a
  bucket. HR@k / NDCG@k are computed from the lists (a target in list position
  p, 0-based, scores 1 and 1 / log2(p + 2) when p < k), with user counts.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

BUCKETS = ("head", "mid", "tail", "cold")
DEFAULT_SHARES = (0.2, 0.8)


def item_popularity(sequences: Iterable[np.ndarray], num_items: int) -> np.ndarray:
  """Interactions per item ([num_items + 1] int64, entry 0 = 0) in training sequences."""
  counts = np.zeros(num_items + 1, np.int64)
  for seq in sequences:
    counts += np.bincount(np.asarray(seq, np.int64), minlength=num_items + 1)[:num_items + 1]
  counts[0] = 0
  return counts


def _lists(topk: np.ndarray, k: int | None) -> np.ndarray:
  topk = np.asarray(topk)
  if topk.ndim != 2:
    raise ValueError(f"top-K lists must be [users, K], got shape {topk.shape}")
  if k is not None:
    if k > topk.shape[1]:
      raise ValueError(f"k={k} exceeds the length of the top-K lists ({topk.shape[1]})")
    topk = topk[:, :k]
  return topk


def exposure_counts(topk: np.ndarray, num_items: int, k: int | None = None) -> np.ndarray:
  """[num_items + 1]: in how many lists each item appears (entry 0 = 0)."""
  counts = np.bincount(_lists(topk, k).ravel(), minlength=num_items + 1).astype(np.int64)
  counts[0] = 0
  return counts


def catalogue_coverage(topk: np.ndarray, num_items: int, k: int | None = None) -> float:
  """Share of the items 1..num_items recommended to at least one user."""
  return float(np.count_nonzero(exposure_counts(topk, num_items, k)[1:]) / num_items)


def exposure_gini(topk: np.ndarray, num_items: int, k: int | None = None) -> float:
  """Gini index of exposure over all items 1..num_items (formula in the module docstring)."""
  counts = np.sort(exposure_counts(topk, num_items, k)[1:]).astype(np.float64)
  total = counts.sum()
  if total == 0:
    return 0.0
  j = np.arange(1, num_items + 1)
  return float(np.sum((2 * j - num_items - 1) * counts) / (num_items * total))


def average_recommendation_popularity(topk: np.ndarray, popularity: np.ndarray,
                                      k: int | None = None) -> float:
  """Mean over users of the mean training popularity of their (real) recommendations."""
  lists = _lists(topk, k)
  real = lists > 0
  per_user = np.sum(np.asarray(popularity, np.float64)[lists] * real, axis=1)
  shown = real.sum(axis=1)
  keep = shown > 0  # users with an empty list have no popularity to average
  if not keep.any():
    return 0.0
  return float(np.mean(per_user[keep] / shown[keep]))


def popularity_buckets(popularity: np.ndarray,
                       shares: Sequence[float] = DEFAULT_SHARES) -> np.ndarray:
  """[N + 1] index into `BUCKETS` of each item (-1 for padding); rule in the module docstring."""
  popularity = np.asarray(popularity, np.int64).copy()
  popularity[0] = 0
  head, mid = shares
  if not 0.0 <= head <= mid <= 1.0:
    raise ValueError(f"popularity shares must satisfy 0 <= head <= mid <= 1, got {tuple(shares)}")
  total = popularity.sum()
  # Interactions of strictly more popular items: sort ascending, sum from the top.
  values, inverse = np.unique(popularity, return_inverse=True)
  per_value = values * np.bincount(inverse, minlength=len(values))
  above = np.cumsum(per_value[::-1])[::-1] - per_value  # of values greater than this one
  share = above[inverse] / max(total, 1)
  buckets = np.where(share < head, 0, np.where(share < mid, 1, 2))
  buckets = np.where(popularity == 0, BUCKETS.index("cold"), buckets)
  buckets[0] = -1
  return buckets


def hit_positions(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """[U] 0-based position of each target in its list, K when it is absent."""
  topk = _lists(topk, None)
  found = topk == np.asarray(targets)[:, None]
  return np.where(found.any(axis=1), found.argmax(axis=1), topk.shape[1])


def _accuracy(positions: np.ndarray, k: int) -> tuple[float | None, float | None]:
  if positions.size == 0:
    return None, None
  hit = positions < k
  ndcg = np.where(hit, 1.0 / np.log2(positions + 2.0), 0.0)
  return float(hit.mean()), float(ndcg.mean())


def beyond_accuracy_report(topk: np.ndarray, targets: np.ndarray, popularity: np.ndarray,
                           ks: Sequence[int] = (10,), *,
                           shares: Sequence[float] = DEFAULT_SHARES) -> dict[str, float | int | None]:
  """Flat dict for results.json; keys for each k in `ks` and bucket b in `BUCKETS`:

    coverage@k, gini@k, ARP@k, HR@k, NDCG@k   (all users),
    b/items            catalogue items in the bucket,
    b/users            users whose target is in the bucket,
    b/HR@k, b/NDCG@k   accuracy on those users (None when b/users is 0),
    b/exposure@k       share of the recommendation slots given to the bucket.
  """
  topk = _lists(topk, None)
  targets = np.asarray(targets)
  popularity = np.asarray(popularity)
  num_items = len(popularity) - 1
  if len(targets) != len(topk):
    raise ValueError(f"{len(targets)} targets for {len(topk)} top-K lists")
  buckets = popularity_buckets(popularity, shares)
  positions = hit_positions(topk, targets)
  target_bucket = buckets[targets]
  report: dict[str, float | int | None] = {}
  for b, name in enumerate(BUCKETS):
    report[f"{name}/items"] = int(np.count_nonzero(buckets == b))
    report[f"{name}/users"] = int(np.count_nonzero(target_bucket == b))
  for k in ks:
    lists = _lists(topk, k)
    report[f"coverage@{k}"] = catalogue_coverage(lists, num_items)
    report[f"gini@{k}"] = exposure_gini(lists, num_items)
    report[f"ARP@{k}"] = average_recommendation_popularity(lists, popularity)
    report[f"HR@{k}"], report[f"NDCG@{k}"] = _accuracy(positions, k)
    slots = buckets[lists[lists > 0]]
    for b, name in enumerate(BUCKETS):
      report[f"{name}/HR@{k}"], report[f"{name}/NDCG@{k}"] = _accuracy(
          positions[target_bucket == b], k)
      report[f"{name}/exposure@{k}"] = float(np.mean(slots == b)) if slots.size else 0.0
  return report
