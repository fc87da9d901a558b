"""Full-ranking metrics against a plain numpy reference, ties and exclusion included."""

import numpy as np
import pytest

from recattn_jax.evaluation import metrics_from_ranks, target_ranks


def numpy_ranks(users, table, targets, exclude, ties):
  scores = users.astype(np.float64) @ table.astype(np.float64).T
  ranks = []
  for b, target in enumerate(targets):
    competitors = set(range(1, table.shape[0])) - {int(target)}
    if exclude is not None:
      competitors -= set(int(i) for i in exclude[b] if i > 0)
    s = np.where(np.isfinite(scores[b]), scores[b], -np.inf)
    if not np.isfinite(scores[b, target]):  # a broken target score ranks last
      ranks.append(len(competitors))
    elif ties == "pessimistic":
      ranks.append(sum(s[j] >= s[target] for j in competitors))
    else:
      ranks.append(sum(s[j] > s[target] for j in competitors))
  return np.array(ranks)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("item_chunk", [4, 7, 64])
def test_ranks_match_numpy(ties, item_chunk):
  rng = np.random.default_rng(0)
  num_items, dim, batch = 30, 3, 9
  # Integer-valued embeddings make exact ties common.
  users = rng.integers(-2, 3, size=(batch, dim)).astype(np.float32)
  table = rng.integers(-2, 3, size=(num_items + 1, dim)).astype(np.float32)
  targets = rng.integers(1, num_items + 1, size=batch).astype(np.int32)
  exclude = rng.integers(0, num_items + 1, size=(batch, 6)).astype(np.int32)
  exclude[0, :] = targets[0]  # the target itself is never excluded
  for excl in (None, exclude):
    got = np.asarray(target_ranks(users, table, targets, excl, item_chunk=item_chunk, ties=ties))
    np.testing.assert_array_equal(got, numpy_ranks(users, table, targets, excl, ties))


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_non_finite_scores_rank_worst(ties):
  rng = np.random.default_rng(1)
  num_items, dim, batch = 25, 4, 8
  users = rng.normal(size=(batch, dim)).astype(np.float32)
  table = rng.normal(size=(num_items + 1, dim)).astype(np.float32)
  table[[3, 7]] = np.nan       # broken items never rank ahead of a finite target
  table[11, 0] = np.inf
  users[0] = np.nan            # a broken user ranks its target last
  targets = rng.integers(1, num_items + 1, size=batch).astype(np.int32)
  targets[1] = 7               # a broken target ranks last too
  exclude = rng.integers(0, num_items + 1, size=(batch, 5)).astype(np.int32)
  for excl in (None, exclude):
    got = np.asarray(target_ranks(users, table, targets, excl, item_chunk=8, ties=ties))
    np.testing.assert_array_equal(got, numpy_ranks(users, table, targets, excl, ties))
  competitors = num_items - 1
  np.testing.assert_array_equal(np.asarray(target_ranks(users, table, targets, ties=ties))[:2],
                                [competitors, competitors])


def test_nan_model_scores_zero_not_one():
  users = np.full((6, 3), np.nan, np.float32)
  table = np.random.default_rng(0).normal(size=(41, 3)).astype(np.float32)
  targets = np.arange(1, 7, dtype=np.int32)
  for ties in ("pessimistic", "optimistic"):
    metrics = metrics_from_ranks(np.asarray(target_ranks(users, table, targets, ties=ties)), ks=(1, 10))
    assert metrics["HR@1"] == 0.0 and metrics["HR@10"] == 0.0 and metrics["NDCG@10"] == 0.0


def test_constant_scores_get_worst_rank_when_pessimistic():
  users = np.zeros((2, 4), np.float32)
  table = np.ones((11, 4), np.float32)
  targets = np.array([1, 5], np.int32)
  np.testing.assert_array_equal(target_ranks(users, table, targets, None, ties="pessimistic"), [9, 9])
  np.testing.assert_array_equal(target_ranks(users, table, targets, None, ties="optimistic"), [0, 0])


def test_padding_row_never_competes():
  users = np.ones((1, 2), np.float32)
  table = np.array([[100.0, 100.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
  assert int(target_ranks(users, table, np.array([1], np.int32), None)[0]) == 0


def test_metrics_from_ranks_hand_computed():
  ranks = np.array([0, 1, 9, 10, 60])
  m = metrics_from_ranks(ranks, ks=(1, 10, 50))
  assert m["HR@1"] == pytest.approx(1 / 5)
  assert m["HR@10"] == pytest.approx(3 / 5)
  assert m["HR@50"] == pytest.approx(4 / 5)
  assert m["NDCG@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)
  assert m["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)
  assert m["MRR@50"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11) / 5)
