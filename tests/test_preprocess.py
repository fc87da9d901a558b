"""Preprocessing: k-core, remapping, tie-breaks, splits; and the real datasets' counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from recattn_jax.data import preprocess
from recattn_jax.data import readers

def frame(rows: list[tuple], with_rating: bool = False) -> pd.DataFrame:
  """Rows of (user, item, timestamp[, rating]) as a reader would return them."""
  df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"][:len(rows[0])])
  df["user_id"] = df["user_id"].astype(str)
  df["item_id"] = df["item_id"].astype(str)
  df["timestamp"] = df["timestamp"].astype(np.float64)
  if not with_rating:
    df["rating"] = np.nan
  return df


def as_lists(arrays) -> list[list[int]]:
  return [list(map(int, a)) for a in arrays]


# ----------------------------------------------------------------------------
# Filters.


def test_kcore_needs_several_rounds():
  # u4 goes (round 1), then item c has one event (round 2), then u3 has one (round 3).
  df = frame([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2),
              ("u3", "b", 1), ("u3", "c", 2), ("u4", "c", 3)])
  kept, stats = preprocess.kcore_filter(df, user_k=2, item_k=2)
  assert kept[["user_id", "item_id"]].values.tolist() == [
      ["u1", "a"], ["u1", "b"], ["u2", "a"], ["u2", "b"]]
  assert stats["rounds"] == 3
  removed = (stats["interactions_removed"], stats["users_removed"], stats["items_removed"])
  assert removed == (3, 2, 1)
  assert (stats["users_after"], stats["items_after"]) == (2, 2)
  again, stats = preprocess.kcore_filter(kept, user_k=2, item_k=2)
  assert len(again) == 4 and stats["rounds"] == 0  # converged: a fixed point


def test_kcore_zero_disables_a_side():
  df = frame([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3)])
  kept, _ = preprocess.kcore_filter(df, user_k=0, item_k=2)
  assert kept["item_id"].tolist() == ["a", "a"]
  kept, _ = preprocess.kcore_filter(df, user_k=2, item_k=0)
  assert kept["user_id"].tolist() == ["u1", "u1"]
  with pytest.raises(ValueError):
    preprocess.kcore_filter(df, user_k=-1)


def test_dedupe_by_time_with_row_order_ties():
  df = frame([("u", "a", 5), ("u", "b", 1), ("u", "a", 2), ("u", "a", 2)])
  assert preprocess.dedupe(df, keep="first")["timestamp"].tolist() == [1, 2]
  assert preprocess.dedupe(df, keep="last")["timestamp"].tolist() == [5, 1]
  assert len(preprocess.dedupe(df, keep=None)) == 4
  with pytest.raises(ValueError):
    preprocess.dedupe(df, keep="middle")


# ----------------------------------------------------------------------------
# Sequences.


def test_remapping_is_a_bijection_that_skips_zero():
  df = frame([("10", "30", 1), ("9", "4", 2), ("10", "100", 3), ("9", "30", 4)])
  data = preprocess.build_sequences(df)
  assert data.item_ids.tolist() == ["<pad>", "4", "30", "100"]  # numeric, not "100" < "30"
  assert data.user_ids.tolist() == ["9", "10"]
  assert data.num_items == 3 and data.num_users == 2
  flat = np.concatenate(data.sequences)
  assert flat.dtype == np.int32 and flat.min() >= 1 and set(flat) == {1, 2, 3}
  for u, sequence in enumerate(data.sequences):  # decode back to the input
    rows = df[df["user_id"] == data.user_ids[u]].sort_values("timestamp")
    assert data.item_ids[sequence].tolist() == rows["item_id"].tolist()
  assert data.stats["item_id_order"] == "numeric"


def test_lexicographic_ids_when_not_numeric():
  df = frame([("u", "b", 1), ("u", "a10", 2), ("u", "a9", 3)])
  data = preprocess.build_sequences(df)
  assert data.item_ids.tolist() == ["<pad>", "a10", "a9", "b"]
  assert as_lists(data.sequences) == [[3, 1, 2]]
  assert data.stats["item_id_order"] == "lexicographic"


def test_ties_keep_row_order():
  # Equal timestamps: file order decides; otherwise time does.
  df = frame([("u", "c", 5), ("u", "a", 5), ("u", "b", 5), ("u", "z", 1), ("v", "b", 2),
              ("v", "a", 2)])
  data = preprocess.build_sequences(df)
  names = [data.item_ids[s].tolist() for s in data.sequences]
  assert names == [["z", "c", "a", "b"], ["b", "a"]]
  np.testing.assert_array_equal(data.timestamps[0], [1, 5, 5, 5])
  assert data.stats["tied_timestamps"] == 3
  data = preprocess.build_sequences(df.iloc[::-1].reset_index(drop=True))
  names = [data.item_ids[s].tolist() for s in data.sequences]
  assert names == [["z", "b", "a", "c"], ["a", "b"]]


def test_min_rating_and_errors():
  df = frame([("u", "a", 1, 5.0), ("u", "b", 2, 2.0), ("u", "c", 3, np.nan)],
             with_rating=True)
  data = preprocess.build_sequences(df, min_rating=4)
  assert data.item_ids.tolist() == ["<pad>", "a"]  # ids assigned after filtering
  assert data.stats["below_min_rating"] == 2 and data.stats["interactions"] == 1
  with pytest.raises(ValueError, match="no ratings"):
    preprocess.build_sequences(frame([("u", "a", 1)]), min_rating=4)
  with pytest.raises(ValueError, match="no interactions"):
    preprocess.build_sequences(df, min_rating=10)
  with pytest.raises(ValueError, match="lacks columns"):
    preprocess.build_sequences(df.drop(columns="timestamp"))


# ----------------------------------------------------------------------------
# Splits.


def sequences_of(lengths: list[int], start_item: int = 1) -> preprocess.SequenceData:
  rows, item = [], start_item
  for user, n in enumerate(lengths):
    for t in range(n):
      rows.append((f"{user}", f"{item}", t))
      item += 1
  return preprocess.build_sequences(frame(rows))


def test_leave_one_out():
  data = sequences_of([5, 2, 1, 3])  # items 1-5, 6-7, 8, 9-11
  split = preprocess.leave_one_out(data)
  assert as_lists(split.train) == [[1, 2, 3], [6, 7]]
  assert split.train_users.tolist() == [0, 1]
  assert split.valid.users.tolist() == [0, 3] and split.test.users.tolist() == [0, 3]
  assert split.valid.targets.tolist() == [4, 10] and split.test.targets.tolist() == [5, 11]
  assert as_lists(split.valid.histories) == [[1, 2, 3], [9]]
  assert as_lists(split.test.histories) == [[1, 2, 3, 4], [9, 10]]
  assert split.valid.targets.dtype == np.int32 and len(split.test) == 2
  assert split.stats["users_too_short_for_eval"] == 2
  assert split.stats["train_users"] == 2 and split.num_items == 11


def test_time_split():
  # item names are their timestamps; cuts at 10 (valid) and 20 (test).
  rows = [("a", 1, 1), ("a", 2, 2), ("a", 12, 12), ("a", 13, 13), ("a", 25, 25),
          ("b", 3, 3), ("b", 21, 21),  # no valid event; test history [3]
          ("c", 11, 11), ("c", 22, 22),  # valid skipped (empty history)
          ("d", 30, 30),  # test skipped (empty history)
          ("e", 2, 2), ("e", 4, 4)]  # train only
  data = preprocess.build_sequences(frame(rows))
  split = preprocess.time_split(data, valid_start=10, test_start=20)
  name = lambda arrays: [data.item_ids[a].tolist() for a in arrays]
  assert name(split.train) == [["1", "2"], ["2", "4"]]
  assert [data.user_ids[u] for u in split.train_users] == ["a", "e"]
  assert [data.user_ids[u] for u in split.valid.users] == ["a"]
  assert data.item_ids[split.valid.targets].tolist() == ["12"]
  assert name(split.valid.histories) == [["1", "2"]]
  assert [data.user_ids[u] for u in split.test.users] == ["a", "b", "c"]
  assert data.item_ids[split.test.targets].tolist() == ["25", "21", "22"]
  assert name(split.test.histories) == [["1", "2", "12", "13"], ["3"], ["11"]]
  stats = split.stats
  assert stats["valid_skipped_empty_history"] == 1 and stats["test_skipped_empty_history"] == 1
  # seen in train: 1, 2, 3, 4; every other item is cold, and kept.
  assert stats["cold_items"] == data.num_items - 4
  assert stats["valid_cold_targets"] == 1 and stats["test_cold_targets"] == 3
  with pytest.raises(ValueError):
    preprocess.time_split(data, valid_start=20, test_start=10)


def test_time_split_by_quantile():
  data = sequences_of([10, 10])  # times 0..9 for each user
  split = preprocess.time_split_by_quantile(data, valid_q=0.5, test_q=0.9)
  assert split.stats["valid_start"] == 4.5 and split.stats["test_start"] == pytest.approx(8.1)
  assert split.valid.targets.tolist() == [6, 16] and split.test.targets.tolist() == [10, 20]
  assert as_lists(split.train) == [[1, 2, 3, 4, 5], [11, 12, 13, 14, 15]]


# ----------------------------------------------------------------------------
# Real datasets (documented counts in ../shared/data/README.md).


def counts(df: pd.DataFrame) -> tuple[int, int, int]:
  return df["user_id"].nunique(), df["item_id"].nunique(), len(df)


@pytest.mark.parametrize("relative, expected", [
    ("ml-100k", (943, 1682, 100_000)),
    ("amazon-toys/Toys_and_Games.txt", (19_412, 11_924, 167_597)),
    ("amazon-sports/Sports_and_Outdoors.txt", (35_598, 18_357, 296_337)),
])
def test_real_dataset_counts(shared_data, relative, expected):
  """`shared_data` (tests/conftest.py) skips when ../shared/data is absent."""
  df = readers.read_interactions(shared_data / relative)
  assert counts(df) == expected
  data = preprocess.build_sequences(df)
  assert (data.num_users, data.num_items, data.stats["interactions"]) == expected
  if relative.startswith("amazon"):
    # S3Rec ids are 1..N already; numeric id order keeps them, so attribute
    # files keyed by those ids still line up.
    assert data.item_ids[1:].tolist() == [str(j) for j in range(1, expected[1] + 1)]
    attributes = readers.read_item_attributes_json(
        next((shared_data / relative).parent.glob("*_item2attributes.json")))
    assert set(attributes) <= set(data.item_ids[1:])


def test_real_lastfm_counts(shared_data):
  df = readers.read_table(shared_data / "lastfm-hetrec2k/user_artists.dat", user_col="userID",
                          item_col="artistID", rating_col="weight")
  assert counts(df) == (1_892, 17_632, 92_834)
