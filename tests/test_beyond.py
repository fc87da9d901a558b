"""Top-K lists and beyond-accuracy metrics: checked against numpy and worked examples."""

import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.evaluation import metrics_from_ranks, target_ranks
from recattn_jax.evaluation.beyond import (BUCKETS, average_recommendation_popularity,
                                           beyond_accuracy_report, catalogue_coverage,
                                           exposure_gini, hit_positions, item_popularity,
                                           popularity_buckets)
from recattn_jax.evaluation.topk import top_k_items


def numpy_top_k(users, table, k, exclude=None):
  """Argsort by (score desc, id asc) with padding, excluded and non-finite items removed."""
  scores = users.astype(np.float64) @ table.T.astype(np.float64)
  out = []
  for row, s in enumerate(scores):
    banned = {0} | (set(exclude[row].tolist()) - {0} if exclude is not None else set())
    banned |= set(np.flatnonzero(~np.isfinite(s)).tolist())
    order = [i for i in np.lexsort((np.arange(len(s)), -s)) if i not in banned]
    out.append((order + [0] * k)[:k])
  return np.asarray(out)


@pytest.mark.parametrize("item_chunk", [4, 7, 64])
def test_top_k_matches_numpy_with_ties_and_exclusion(item_chunk):
  rng = np.random.default_rng(0)
  # Small integer vectors: many exactly tied scores, so the tie order is tested.
  users = rng.integers(-2, 3, size=(6, 3)).astype(np.float32)
  table = rng.integers(-2, 3, size=(30, 3)).astype(np.float32)
  exclude = np.zeros((6, 5), np.int32)
  exclude[0, :3] = [5, 9, 29]
  exclude[3, :5] = [1, 2, 3, 4, 0]
  for k in (1, 5, 12):
    scores, ids = top_k_items(jnp.asarray(users), jnp.asarray(table), k, jnp.asarray(exclude),
                              item_chunk=item_chunk)
    expected = numpy_top_k(users, table, k, exclude)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(users @ table.T, expected, 1))
    _, ids_all = top_k_items(jnp.asarray(users), jnp.asarray(table), k, item_chunk=item_chunk)
    np.testing.assert_array_equal(ids_all, numpy_top_k(users, table, k))


def test_top_k_never_recommends_non_finite_scores():
  rng = np.random.default_rng(2)
  users = rng.normal(size=(4, 3)).astype(np.float32)
  table = rng.normal(size=(20, 3)).astype(np.float32)
  table[[2, 5]] = np.nan
  table[9, 1] = np.inf
  users[3] = np.nan  # a broken user: nothing to recommend
  scores, ids = top_k_items(jnp.asarray(users), jnp.asarray(table), 6, item_chunk=8)
  np.testing.assert_array_equal(ids, numpy_top_k(users, table, 6))
  assert not set(np.asarray(ids).ravel()) & {2, 5, 9}
  np.testing.assert_array_equal(ids[3], 0)
  assert np.isneginf(scores[3]).all()


def test_short_catalogue_fills_with_padding_never_recommends_it():
  # 4 real items, 2 of them excluded for user 0: only 2 recommendations exist.
  users = np.ones((2, 2), np.float32)
  table = np.array([[100.0, 100.0], [1, 0], [2, 0], [3, 0], [4, 0]], np.float32)
  exclude = np.array([[2, 4], [0, 0]], np.int32)
  scores, ids = top_k_items(jnp.asarray(users), jnp.asarray(table), 5, jnp.asarray(exclude),
                            item_chunk=2)
  np.testing.assert_array_equal(ids, [[3, 1, 0, 0, 0], [4, 3, 2, 1, 0]])
  assert np.isneginf(scores[0, 2:]).all() and np.isneginf(scores[1, 4])


def test_positions_in_top_k_agree_with_target_ranks():
  rng = np.random.default_rng(1)
  users = rng.normal(size=(20, 8)).astype(np.float32)
  table = rng.normal(size=(50, 8)).astype(np.float32)
  targets = rng.integers(1, 50, size=20).astype(np.int32)
  _, ids = top_k_items(jnp.asarray(users), jnp.asarray(table), 10, item_chunk=16)
  ranks = np.asarray(target_ranks(jnp.asarray(users), jnp.asarray(table), jnp.asarray(targets)))
  # Continuous scores: no ties, so the position in the list is the rank (or a miss).
  np.testing.assert_array_equal(hit_positions(np.asarray(ids), targets), np.minimum(ranks, 10))
  report = beyond_accuracy_report(np.asarray(ids), targets, np.ones(50, np.int64), ks=(1, 10))
  expected = metrics_from_ranks(ranks, ks=(1, 10))
  for key in ("HR@1", "HR@10", "NDCG@10"):
    assert report[key] == pytest.approx(expected[key])


# Worked example used below. Catalogue of N = 5 items; training popularity
# (padding first): item 1: 5, item 2: 3, item 3: 1, item 4: 1, item 5: 0.
POPULARITY = np.array([0, 5, 3, 1, 1, 0])
TOPK = np.array([[1, 2], [1, 3], [1, 2]])
TARGETS = np.array([2, 3, 5])


def test_item_popularity_counts_training_events():
  sequences = [np.array([1, 2, 1]), np.array([3, 1]), np.array([1, 2, 4, 2, 1])]
  np.testing.assert_array_equal(item_popularity(sequences, 5), POPULARITY)


def test_coverage_gini_arp_by_hand():
  # @1 every list is [1]: exposure (items 1..5) = 3, 0, 0, 0, 0.
  #   coverage = 1/5; sorted exposure 0,0,0,0,3 with coefficients 2j-N-1 =
  #   -4,-2,0,2,4: Gini = 4*3 / (5*3) = 0.8 = (N-1)/N, the maximum.
  assert catalogue_coverage(TOPK, 5, k=1) == pytest.approx(0.2)
  assert exposure_gini(TOPK, 5, k=1) == pytest.approx(0.8)
  # @2 exposure = 3, 2, 1, 0, 0 -> coverage 3/5; sorted 0,0,1,2,3:
  #   (-4*0 - 2*0 + 0*1 + 2*2 + 4*3) / (5 * 6) = 16/30.
  assert catalogue_coverage(TOPK, 5) == pytest.approx(0.6)
  assert exposure_gini(TOPK, 5) == pytest.approx(16 / 30)
  # Equal exposure of every item: Gini 0.
  assert exposure_gini(np.array([[1, 2], [3, 4], [5, 1], [2, 3], [4, 5]]), 5) == pytest.approx(0.0)
  # ARP@2: users' mean popularity (5+3)/2 = 4, (5+1)/2 = 3, 4 -> 11/3; @1: 5.
  assert average_recommendation_popularity(TOPK, POPULARITY) == pytest.approx(11 / 3)
  assert average_recommendation_popularity(TOPK, POPULARITY, k=1) == pytest.approx(5.0)
  # Filler id 0 is no recommendation: user lists [1] and [2] -> (5 + 3) / 2.
  assert average_recommendation_popularity(np.array([[1, 0], [2, 0]]), POPULARITY) == pytest.approx(4.0)
  assert catalogue_coverage(np.array([[1, 0], [2, 0]]), 5) == pytest.approx(0.4)


def test_popularity_buckets_by_hand():
  # 10 training interactions. Share held by strictly more popular items:
  #   item 1: 0/10 -> head (< 0.2); item 2: 5/10 -> mid (< 0.8);
  #   items 3, 4: 8/10 -> tail (equal popularity, same bucket); item 5: cold.
  names = [BUCKETS[b] if b >= 0 else "pad" for b in popularity_buckets(POPULARITY)]
  assert names == ["pad", "head", "mid", "tail", "tail", "cold"]
  # A 60% head cut-off takes item 2 (share before 0.5) into the head; 0.8 is
  # not < 0.8, so items 3 and 4 stay in the tail.
  names = [BUCKETS[b] for b in popularity_buckets(POPULARITY, shares=(0.6, 0.8))[1:]]
  assert names == ["head", "head", "tail", "tail", "cold"]


def test_report_by_hand():
  report = beyond_accuracy_report(TOPK, TARGETS, POPULARITY, ks=(1, 2))
  # Targets: item 2 (mid) at position 1 of user 0's list, item 3 (tail) at
  # position 1 of user 1's, item 5 (cold) missed. NDCG of position 1 = 1/log2(3).
  ndcg1 = 1 / np.log2(3)
  expected = {
      "head/items": 1, "mid/items": 1, "tail/items": 2, "cold/items": 1,
      "head/users": 0, "mid/users": 1, "tail/users": 1, "cold/users": 1,
      "coverage@1": 0.2, "gini@1": 0.8, "ARP@1": 5.0, "HR@1": 0.0, "NDCG@1": 0.0,
      "coverage@2": 0.6, "gini@2": 16 / 30, "ARP@2": 11 / 3,
      "HR@2": 2 / 3, "NDCG@2": 2 * ndcg1 / 3,
      "head/HR@2": None, "head/NDCG@2": None,
      "mid/HR@1": 0.0, "mid/HR@2": 1.0, "mid/NDCG@2": ndcg1,
      "tail/HR@2": 1.0, "tail/NDCG@2": ndcg1,
      "cold/HR@2": 0.0, "cold/NDCG@2": 0.0,
      # Slots @2: item 1 three times (head), item 2 twice (mid), item 3 once (tail).
      "head/exposure@2": 3 / 6, "mid/exposure@2": 2 / 6, "tail/exposure@2": 1 / 6,
      "cold/exposure@2": 0.0, "head/exposure@1": 1.0,
  }
  for key, value in expected.items():
    assert report[key] == (None if value is None else pytest.approx(value)), key
  # Every value is a plain number or None: json-serialisable as is.
  assert all(v is None or type(v) in (int, float) for v in report.values())


def test_report_rejects_k_beyond_the_lists():
  with pytest.raises(ValueError, match="exceeds"):
    beyond_accuracy_report(TOPK, TARGETS, POPULARITY, ks=(3,))
