"""Pointwise click/rating examples: histories, labels, splits, sampled negatives and errors."""

import numpy as np
import pandas as pd
import pytest

from recattn_jax.data import build_sequences, leave_one_out, read_interactions
from recattn_jax.data.ctr import batches, build_pointwise_data


def frame(rows):
  return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).astype(
      {"user_id": str, "item_id": str, "timestamp": float, "rating": float})


# Items 10..15 -> ids 1..6. User "a" has 5 events (one same-second tie), "b" 2.
ROWS = [
    ("a", "10", 1, 5), ("a", "11", 2, 2), ("b", "12", 1, 4), ("a", "13", 3, 4),
    ("a", "14", 3, 1), ("a", "15", 5, 5), ("b", "10", 2, 3),
]


def test_rating_examples_histories_and_split():
  data = build_pointwise_data(frame(ROWS), "rating", max_len=3, with_ratings=True)
  assert data.num_items == 6 and data.num_users == 2
  # User a, chronological: 1(5) 2(2) 4(4) 5(1) 6(5); the tie at t=3 keeps row order.
  tr = data.train
  a = tr.users == 0
  np.testing.assert_array_equal(tr.items[a], [1, 2, 4])
  np.testing.assert_array_equal(tr.history[a], [[0, 0, 0], [0, 0, 1], [0, 1, 2]])
  np.testing.assert_array_equal(tr.history_ratings[a], [[0, 0, 0], [0, 0, 5], [0, 5, 2]])
  np.testing.assert_array_equal(tr.labels[a], [5, 2, 4])
  # User b has 2 events: both train, no eval example.
  np.testing.assert_array_equal(tr.items[tr.users == 1], [3, 1])
  np.testing.assert_array_equal(data.valid.items, [5])
  np.testing.assert_array_equal(data.valid.history, [[1, 2, 4]])
  np.testing.assert_array_equal(data.test.items, [6])
  np.testing.assert_array_equal(data.test.history, [[2, 4, 5]])  # truncated to the newest 3
  np.testing.assert_array_equal(data.test.history_ratings, [[2, 4, 1]])
  assert data.test.labels[0] == 5 and not data.train.sampled.any()
  assert data.stats["users_too_short_for_eval"] == 1
  assert data.stats["histories_truncated"] == 1
  assert data.train.history.dtype == np.int32 and data.train.labels.dtype == np.float32


def test_click_labels_and_negatives():
  data = build_pointwise_data(frame(ROWS), "ctr", max_len=4, negatives_per_positive=2, seed=3)
  seen = {0: {1, 2, 4, 5, 6}, 1: {3, 1}}
  for split in (data.train, data.valid, data.test):
    observed = ~split.sampled
    neg = split.sampled
    assert np.all(split.labels[neg] == 0)
    for u, item in zip(split.users[neg], split.items[neg]):
      assert item not in seen[int(u)] and 1 <= item <= 6
    # Each positive is followed by its 2 negatives, which share its history.
    for i in np.flatnonzero(observed & (split.labels == 1)):
      assert split.sampled[i + 1] and split.sampled[i + 2]
      np.testing.assert_array_equal(split.history[i + 1], split.history[i])
      assert split.users[i + 1] == split.users[i]
  # Observed labels: rating >= 4.
  obs = ~data.train.sampled
  np.testing.assert_array_equal(data.train.items[obs], [1, 2, 4, 3, 1])
  np.testing.assert_array_equal(data.train.labels[obs], [1, 0, 1, 1, 0])
  # valid is event 5 (rating 1): no negatives; test is event 6 (rating 5): two.
  assert len(data.valid) == 1 and data.valid.labels[0] == 0
  assert len(data.test) == 3 and data.test.sampled.sum() == 2
  assert data.stats["train_sampled_negatives"] == 6


def test_negatives_are_seeded():
  df = frame(ROWS)
  a = build_pointwise_data(df, "ctr", negatives_per_positive=3, seed=0)
  b = build_pointwise_data(df, "ctr", negatives_per_positive=3, seed=0)
  np.testing.assert_array_equal(a.train.items, b.train.items)


def test_random_frame_negatives_unseen_and_ids_match_ranking():
  rng = np.random.default_rng(0)
  rows = [(str(u), str(rng.integers(0, 40)), float(rng.integers(0, 50)), float(rng.integers(1, 6)))
          for u in range(30) for _ in range(int(rng.integers(1, 25)))]
  df = frame(rows)
  data = build_pointwise_data(df, "ctr", max_len=5, negatives_per_positive=4, seed=1)
  seqs = build_sequences(df)
  user_items = [set(s.tolist()) for s in seqs.sequences]
  for split in (data.train, data.valid, data.test):
    for u, item in zip(split.users[split.sampled], split.items[split.sampled]):
      assert item not in user_items[u]
  # The observed test examples are leave_one_out's test targets, with the same histories.
  loo = leave_one_out(seqs)
  obs = ~data.test.sampled
  np.testing.assert_array_equal(data.test.users[obs], loo.test.users)
  np.testing.assert_array_equal(data.test.items[obs], loo.test.targets)
  for hist, full in zip(data.test.history[obs], loo.test.histories):
    want = full[-5:]
    np.testing.assert_array_equal(hist, np.pad(want, (5 - len(want), 0)))
  positives = sum(int(((~s.sampled) & (s.labels == 1)).sum()) for s in
                  (data.train, data.valid, data.test))
  sampled = sum(int(s.sampled.sum()) for s in (data.train, data.valid, data.test))
  assert sampled == 4 * positives


def test_user_who_saw_everything_gets_no_negatives():
  rows = [("a", str(i), i, 5) for i in range(4)] + [("b", "0", 0, 5), ("b", "1", 1, 5)]
  data = build_pointwise_data(frame(rows), "ctr", negatives_per_positive=1)
  assert data.stats["users_without_negatives"] == 1
  for split in (data.train, data.valid, data.test):
    assert not np.any(split.sampled & (split.users == 0))
    assert np.all(np.isin(split.items[split.sampled], [3, 4]))


def test_implicit_clicks_without_ratings():
  df = frame(ROWS).assign(rating=np.nan)
  data = build_pointwise_data(df, "ctr", threshold=None, negatives_per_positive=1)
  assert np.all(data.train.labels[~data.train.sampled] == 1)


def test_errors_name_the_field():
  df = frame(ROWS)
  with pytest.raises(ValueError, match="'rating'.*data.click_threshold"):
    build_pointwise_data(df.drop(columns="rating"), "ctr")
  with pytest.raises(ValueError, match="data.min_rating"):
    build_pointwise_data(df.assign(rating=np.nan), "rating")
  with pytest.raises(ValueError, match="1 of 7 interactions have no 'rating'"):
    build_pointwise_data(df.assign(rating=[1, 2, 3, np.nan, 5, 5, 5]), "rating")
  with pytest.raises(ValueError, match="task"):
    build_pointwise_data(df, "ranking")
  with pytest.raises(ValueError, match="data.max_len"):
    build_pointwise_data(df, "ctr", max_len=0)
  with pytest.raises(ValueError, match="data.negatives_per_positive"):
    build_pointwise_data(df, "ctr", negatives_per_positive=-1)
  with pytest.raises(ValueError, match="data.with_ratings"):
    build_pointwise_data(df.drop(columns="rating"), "ctr", threshold=None, with_ratings=True)


def test_batches_pad_and_cover():
  arrays = {"x": np.arange(10), "y": np.arange(10) * 2.0}
  out = list(batches(arrays, 4, shuffle=True, seed=0))
  assert len(out) == 3 and all(b["x"].shape == (4,) for b in out)
  assert out[-1]["weight"].tolist() == [1, 1, 0, 0]
  real = np.concatenate([b["x"][b["weight"] > 0] for b in out])
  assert sorted(real.tolist()) == list(range(10))
  assert len(list(batches(arrays, 4, drop_remainder=True))) == 2
  with pytest.raises(ValueError, match="length"):
    list(batches({"x": np.arange(3), "y": np.arange(4)}, 2))


def test_ml100k(shared_data):
  df = read_interactions(shared_data / "ml-100k")
  data = build_pointwise_data(df, "ctr", max_len=50, negatives_per_positive=1, seed=0)
  assert data.num_users == 943 and data.num_items == 1682
  assert len(data.test) >= 943 and len(data.valid) >= 943
  assert data.stats["events"] == 100_000
  positives = int((df["rating"] >= 4).sum())
  sampled = sum(int(s.sampled.sum()) for s in (data.train, data.valid, data.test))
  assert sampled == positives
  rating = build_pointwise_data(df, "rating", max_len=50)
  assert len(rating.train) + len(rating.valid) + len(rating.test) == 100_000
  assert 3.4 < rating.stats["train_label_mean"] < 3.7
