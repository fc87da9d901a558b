"""Click and rating metrics against hand-computed cases and brute-force numpy references."""

import math

import numpy as np
import pytest

from recattn_jax.evaluation import ctr


def pairwise_auc(labels, scores):
  """O(P * N) definition: P(score+ > score-) + 0.5 P(tie)."""
  labels = np.asarray(labels, bool)
  scores = np.asarray(scores, np.float64)
  pos, neg = scores[labels], scores[~labels]
  wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return wins / (len(pos) * len(neg))


def test_auc_hand_computed():
  assert ctr.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
  assert ctr.auc([1, 0], [0.9, 0.1]) == 1.0
  assert ctr.auc([1, 0], [0.1, 0.9]) == 0.0
  # A tied pair counts one half: constant scores give 0.5.
  assert ctr.auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5
  # pos 0.5 vs negs {0.5, 0.2}: 0.5 + 1; pos 0.9: 1 + 1 -> 3.5 / 4.
  assert ctr.auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.2]) == pytest.approx(0.875)


def test_auc_single_class_is_nan():
  assert math.isnan(ctr.auc([1, 1, 1], [0.1, 0.2, 0.3]))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 300))
  labels = rng.integers(0, 2, n)
  labels[:2] = [0, 1]
  scores = rng.integers(0, 6, n) / 5.0  # few distinct values: many ties
  assert ctr.auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def brute_gauc(users, labels, scores):
  total, weight = 0.0, 0.0
  for u in np.unique(users):
    sel = users == u
    if labels[sel].min() == labels[sel].max():
      continue
    total += sel.sum() * pairwise_auc(labels[sel], scores[sel])
    weight += sel.sum()
  return total / weight


@pytest.mark.parametrize("seed", range(5))
def test_gauc_matches_per_user_pairwise(seed):
  rng = np.random.default_rng(seed)
  n = 400
  users = rng.integers(0, 30, n) * 7  # sparse, unsorted ids
  labels = rng.integers(0, 2, n)
  scores = rng.integers(0, 4, n).astype(np.float64)
  assert ctr.gauc(users, labels, scores) == pytest.approx(brute_gauc(users, labels, scores),
                                                          abs=1e-12)


def test_gauc_hand_computed_and_skips_one_class_users():
  users = [1, 1, 1, 2, 2, 3, 3]
  labels = [1, 0, 0, 0, 1, 1, 1]  # user 3 is all positive: skipped
  scores = [0.9, 0.5, 0.95, 0.7, 0.2, 0.1, 0.1]
  # user 1: AUC 0.5 over 3 examples; user 2: AUC 0 over 2 examples.
  assert ctr.gauc(users, labels, scores) == pytest.approx((3 * 0.5 + 2 * 0.0) / 5)
  assert math.isnan(ctr.gauc([1, 2], [1, 0], [0.3, 0.2]))


def test_log_loss_rmse_mae():
  assert ctr.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
  # Clipping keeps a confident mistake finite.
  assert ctr.log_loss([1], [0.0], eps=1e-7) == pytest.approx(-np.log(1e-7))
  assert ctr.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))
  assert ctr.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)


def test_metric_dicts_and_validation():
  m = ctr.ctr_metrics([0, 0, 1, 1], [1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3])
  assert set(m) == {"AUC", "GAUC", "LogLoss"} and m["AUC"] == 1.0 and m["GAUC"] == 1.0
  assert set(ctr.rating_metrics([1.0], [1.5])) == {"RMSE", "MAE"}
  with pytest.raises(ValueError, match="labels"):
    ctr.auc([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError, match="length"):
    ctr.auc([0, 1, 1], [0.1, 0.2])
  with pytest.raises(ValueError, match="scores"):
    ctr.auc([0, 1], [[0.1, 0.2]])


def test_item_mean_baseline():
  table = ctr.item_mean_baseline([1, 1, 2], [1.0, 0.0, 1.0], num_items=3, prior_weight=1.0)
  mean = 2 / 3
  np.testing.assert_allclose(table, [mean, (1 + mean) / 3, (1 + mean) / 2, mean])
  np.testing.assert_allclose(ctr.item_mean_baseline([1, 2], [4.0, 2.0], 2, prior_weight=0),
                             [3.0, 4.0, 2.0])
  with pytest.raises(ValueError, match="num_items"):
    ctr.item_mean_baseline([5], [1.0], 3)
