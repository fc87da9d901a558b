"""Readers: each format's happy path, and errors that name the file and line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from recattn_jax.data import readers
from recattn_jax.data.readers import DataFormatError


def write(folder: Path, name: str, text: str, *, crlf: bool = False) -> Path:
  path = folder / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.replace("\n", "\r\n" if crlf else "\n").encode())
  return path


def assert_frame(df: pd.DataFrame, users, items, times, ratings=None) -> None:
  assert list(df.columns) == list(readers.INTERACTION_COLUMNS)
  assert df["user_id"].tolist() == users
  assert df["item_id"].tolist() == items
  assert all(isinstance(v, str) for v in df["user_id"].tolist() + df["item_id"].tolist())
  assert df["timestamp"].dtype == np.float64 and df["rating"].dtype == np.float64
  np.testing.assert_array_equal(df["timestamp"], times)
  if ratings is None:
    assert df["rating"].isna().all()
  else:
    np.testing.assert_array_equal(df["rating"], ratings)


@contextlib.contextmanager
def raises_at(*needles: str):
  """Expects a DataFormatError whose message contains every needle (file, line...)."""
  with pytest.raises(DataFormatError) as info:
    yield
  for needle in needles:
    assert needle in str(info.value), f"{needle!r} not in {str(info.value)!r}"


# ----------------------------------------------------------------------------
# MovieLens.


@pytest.mark.parametrize("crlf", [False, True])
def test_movielens_u_data(tmp_path, crlf):
  path = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n\n",
               crlf=crlf)
  assert_frame(readers.read_movielens(path), ["196", "186"], ["242", "302"],
               [881250949, 891717742], [3, 3.5])


def test_movielens_ratings_dat_and_folder_search(tmp_path):
  write(tmp_path, "ml-1m/ratings.dat", "1::1193::5::978300760\n2::661::3::978302109\n")
  df = readers.read_movielens(tmp_path)  # found one level down, as unzipped
  assert_frame(df, ["1", "2"], ["1193", "661"], [978300760, 978302109], [5, 3])


def test_movielens_ratings_csv(tmp_path):
  path = write(tmp_path, "ratings.csv",
               "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n",
               crlf=True)
  assert_frame(readers.read_movielens(path), ["1", "1"], ["31", "1029"],
               [1260759144, 1260759179], [2.5, 3.0])


def test_movielens_sniffs_renamed_files(tmp_path):
  path = write(tmp_path, "ml1m.txt", "1::10::4::5\n")
  assert readers.read_movielens(path)["item_id"].tolist() == ["10"]


def test_movielens_wrong_field_count(tmp_path):
  path = write(tmp_path, "u.data", "1\t2\t3\t4\n\n1\t2\t3\n")
  with raises_at("u.data", "line 3:", "expected 4 fields"):
    readers.read_movielens(path)


def test_movielens_too_many_fields_dat(tmp_path):
  path = write(tmp_path, "ratings.dat", "1::2::3::4\n1::2::3::4::5\n", crlf=True)
  with raises_at("ratings.dat", "line 2:"):
    readers.read_movielens(path)


def test_movielens_non_numeric_rating(tmp_path):
  path = write(tmp_path, "u.data", "1\t2\t3\t4\n\n1\t2\tgood\t4\n")
  with raises_at("u.data", "line 3:", "rating", "'good'"):
    readers.read_movielens(path)


def test_movielens_non_numeric_timestamp(tmp_path):
  path = write(tmp_path, "ratings.csv",
               "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3,nan\n")
  with raises_at("ratings.csv", "line 3:", "timestamp"):
    readers.read_movielens(path)


def test_movielens_non_numeric_id(tmp_path):
  path = write(tmp_path, "u.data", "1\t2\t3\t4\nu7\t2\t3\t4\n")
  with raises_at("u.data", "line 2:", "userId", "'u7'"):
    readers.read_movielens(path)


def test_movielens_reports_the_first_bad_line(tmp_path):
  path = write(tmp_path, "u.data", "1\t2\t3\t4\n1\t2\tx\t4\n1\tx\t3\t4\n")
  with raises_at("u.data", "line 2:", "rating"):
    readers.read_movielens(path)


def test_movielens_missing_column(tmp_path):
  path = write(tmp_path, "ratings.csv", "userId,movieId,rating\n1,2,3\n")
  with raises_at("ratings.csv", "'timestamp'", "missing column"):
    readers.read_movielens(path)


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_movielens_empty_file(tmp_path, text):
  path = write(tmp_path, "u.data", text)
  with raises_at("u.data", "no data rows"):
    readers.read_movielens(path)


def test_movielens_header_only(tmp_path):
  path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n")
  with raises_at("ratings.csv", "no data rows"):
    readers.read_movielens(path)


def test_movielens_invalid_utf8(tmp_path):
  path = tmp_path / "u.data"
  path.write_bytes(b"1\t2\t3\t4\n1\t\xff\t3\t4\n")
  with raises_at("u.data", "line 2:", "UTF-8"):
    readers.read_movielens(path)


def test_movielens_folder_without_ratings(tmp_path):
  with raises_at(str(tmp_path), "no GroupLens ratings file"):
    readers.read_movielens(tmp_path)


# ----------------------------------------------------------------------------
# RecBole.

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "u1\tA\t4\t10\nu2\tB\t5\t5\n")


def test_recbole_atomic(tmp_path):
  path = write(tmp_path, "x.inter", INTER, crlf=True)
  assert_frame(readers.read_recbole_atomic(path), ["u1", "u2"], ["A", "B"], [10, 5], [4, 5])
  assert_frame(readers.read_recbole_atomic(tmp_path), ["u1", "u2"], ["A", "B"], [10, 5],
               [4, 5])


def test_recbole_without_rating_or_timestamp(tmp_path):
  path = write(tmp_path, "x.inter", "session:token\titem_id:token\ns1\t7\ns1\t8\ns2\t7\n")
  df = readers.read_recbole_atomic(path, user_field="session")
  assert_frame(df, ["s1", "s1", "s2"], ["7", "8", "7"], [0, 1, 2])  # row order is time


def test_recbole_missing_field(tmp_path):
  path = write(tmp_path, "x.inter", "user_id:token\trating:float\nu1\t3\n")
  with raises_at("x.inter", "'item_id'", "missing field"):
    readers.read_recbole_atomic(path)


def test_recbole_untyped_header(tmp_path):
  path = write(tmp_path, "x.inter", "user_id\titem_id:token\nu\ti\n")
  with raises_at("x.inter", "line 1:", "'user_id'"):
    readers.read_recbole_atomic(path)


def test_recbole_bad_values(tmp_path):
  path = write(tmp_path, "x.inter", INTER + "u3\tC\t4\tsoon\n")
  with raises_at("x.inter", "line 4:", "timestamp", "'soon'"):
    readers.read_recbole_atomic(path)
  path = write(tmp_path, "y.inter", INTER + "u3\t \t4\t1\n")
  with raises_at("y.inter", "line 4:", "item_id", "non-empty"):
    readers.read_recbole_atomic(path)
  path = write(tmp_path, "z.inter", INTER + "u3\tC\t4\n")
  with raises_at("z.inter", "line 4:", "expected 4 fields"):
    readers.read_recbole_atomic(path)


def test_recbole_empty(tmp_path):
  path = write(tmp_path, "x.inter", "")
  with raises_at("x.inter", "line 1:", "empty"):
    readers.read_recbole_atomic(path)


def test_recbole_item_features(tmp_path):
  path = write(tmp_path, "x.item",
               "item_id:token\ttitle:token_seq\tyear:token\tprice:float\temb:float_seq\n"
               "1\tToy Story\t1995\t9.5\t0.5 1\n"
               "2\tGoldenEye\t\t\t\n", crlf=True)
  features = readers.read_recbole_item_features(path)
  assert features.index.tolist() == ["1", "2"]
  assert features.loc["1", "title"] == ["Toy", "Story"]
  assert features.loc["2", "title"] == ["GoldenEye"]
  assert features.loc["1", "year"] == "1995" and features.loc["2", "year"] == ""
  assert features.loc["1", "price"] == 9.5 and np.isnan(features.loc["2", "price"])
  assert features.loc["1", "emb"] == [0.5, 1.0] and features.loc["2", "emb"] == []


def test_recbole_item_features_errors(tmp_path):
  path = write(tmp_path, "x.item", "item_id:token\tprice:float\n1\t2\n2\tcheap\n")
  with raises_at("x.item", "line 3:", "price", "'cheap'"):
    readers.read_recbole_item_features(path)
  path = write(tmp_path, "y.item", "item_id:token\tprice:float\n1\t2\n1\t3\n")
  with raises_at("y.item", "line 3:", "repeats"):
    readers.read_recbole_item_features(path)
  path = write(tmp_path, "z.item", "id:token\tprice:float\n1\t2\n")
  with raises_at("z.item", "'item_id'"):
    readers.read_recbole_item_features(path)


# ----------------------------------------------------------------------------
# Sequence files.


@pytest.mark.parametrize("crlf", [False, True])
def test_sequence_file(tmp_path, crlf):
  path = write(tmp_path, "seq.txt", "1 5 6 7\n\n2 5\n3  9\t8 \n", crlf=crlf)
  assert_frame(readers.read_sequence_file(path), ["1", "1", "1", "2", "3", "3"],
               ["5", "6", "7", "5", "9", "8"], [0, 1, 2, 0, 0, 1])


def test_sequence_user_without_items(tmp_path):
  path = write(tmp_path, "seq.txt", "1 5 6\n\n2\n3 4\n")
  with raises_at("seq.txt", "line 3:", "user '2' has no items"):
    readers.read_sequence_file(path)


def test_sequence_non_numeric_id(tmp_path):
  path = write(tmp_path, "seq.txt", "1 5 6\n2 4 x9\n3 y\n")
  with raises_at("seq.txt", "line 2:", "'x9'"):
    readers.read_sequence_file(path)


def test_sequence_repeated_user(tmp_path):
  path = write(tmp_path, "seq.txt", "1 5 6\n2 4\n1 7\n")
  with raises_at("seq.txt", "line 3:", "already has line 1"):
    readers.read_sequence_file(path)


def test_sequence_empty_and_bad_encoding(tmp_path):
  with raises_at("seq.txt", "no data rows"):
    readers.read_sequence_file(write(tmp_path, "seq.txt", " \n\n"))
  path = tmp_path / "bad.txt"
  path.write_bytes(b"1 2\n2 \xfe3\n")
  with raises_at("bad.txt", "line 2:", "UTF-8"):
    readers.read_sequence_file(path)


# ----------------------------------------------------------------------------
# Generic tables.


def test_table_csv_with_quotes(tmp_path):
  path = write(tmp_path, "t.csv", 'who,what,when,stars\n"a, b",x,3,1\nc,"y ""z""",2,5\n')
  df = readers.read_table(path, user_col="who", item_col="what", timestamp_col="when",
                          rating_col="stars")
  assert_frame(df, ["a, b", "c"], ["x", 'y "z"'], [3, 2], [1, 5])


def test_table_sniffed_tsv_crlf_without_timestamp(tmp_path):
  path = write(tmp_path, "user_artists.dat",
               "userID\tartistID\tweight\n2\t51\t13883\n2\t65  \t11690\n", crlf=True)
  df = readers.read_table(path, user_col="userID", item_col="artistID", rating_col="weight")
  assert_frame(df, ["2", "2"], ["51", "65"], [0, 1], [13883, 11690])  # ids trimmed


def test_table_errors(tmp_path):
  path = write(tmp_path, "t.csv", "u,i,r\n1,2,3\n")
  with raises_at("t.csv", "'t'", "missing column"):
    readers.read_table(path, user_col="u", item_col="i", timestamp_col="t")
  path = write(tmp_path, "r.tsv", "u\ti\tr\n1\t2\t3\n1\t2\t?\n")
  with raises_at("r.tsv", "line 3:", "'?'"):
    readers.read_table(path, user_col="u", item_col="i", rating_col="r")
  path = write(tmp_path, "f.tsv", "u\ti\tr\n1\t2\t3\n1\t2\n")
  with raises_at("f.tsv", "line 3:", "expected 3 fields"):
    readers.read_table(path, user_col="u", item_col="i")
  path = write(tmp_path, "odd.dat", "a b\n1 2\n")
  with raises_at("odd.dat", "separator"):
    readers.read_table(path, user_col="a", item_col="b")


def test_parquet(tmp_path):
  path = tmp_path / "t.parquet"
  pq.write_table(pa.table({
      "u": pa.array([7, 8], pa.int64()),
      "i": ["x", "y"],
      "t": pa.array([1_000_000, 2_000_000], pa.timestamp("ms")),
      "r": [1.5, 2.0],
  }), path)
  df = readers.read_interactions(path, user_col="u", item_col="i", timestamp_col="t",
                                 rating_col="r")
  assert_frame(df, ["7", "8"], ["x", "y"], [1000, 2000], [1.5, 2.0])


def test_parquet_errors(tmp_path):
  path = tmp_path / "t.parquet"
  pq.write_table(pa.table({"u": ["a", ""], "i": ["x", "y"], "r": ["1", "bad"]}), path)
  with raises_at("t.parquet", "'t'", "missing column"):
    readers.read_table(path, user_col="u", item_col="i", timestamp_col="t")
  with raises_at("t.parquet", "row 2", "u"):
    readers.read_table(path, user_col="u", item_col="i")
  with raises_at("t.parquet", "row 2", "'bad'"):
    readers.read_table(path, user_col="i", item_col="i", rating_col="r")


# ----------------------------------------------------------------------------
# Item attributes, dispatch.


def test_item_attributes_json(tmp_path):
  path = write(tmp_path, "a.json", json.dumps({"4": [1, 2], "145": []}))
  assert readers.read_item_attributes_json(path) == {"4": [1, 2], "145": []}


def test_item_attributes_json_errors(tmp_path):
  with raises_at("a.json", "line 2:", "invalid JSON"):
    readers.read_item_attributes_json(write(tmp_path, "a.json", '{"4": [1],\n "5": [}'))
  with raises_at("b.json", "item '5'"):
    readers.read_item_attributes_json(write(tmp_path, "b.json", '{"4": [1], "5": ["x"]}'))
  with raises_at("c.json", "no items"):
    readers.read_item_attributes_json(write(tmp_path, "c.json", "{}"))


def test_read_interactions_dispatch(tmp_path):
  ml = write(tmp_path, "ml/u.data", "1\t2\t3\t4\n")
  rb = write(tmp_path, "rb/x.inter", INTER)
  seq = write(tmp_path, "Toys.txt", "1 2 3\n")
  table = write(tmp_path, "t.tsv", "a\tb\n1\t2\n")
  assert readers.detect_format(ml.parent) == "movielens"
  assert readers.detect_format(rb.parent) == "recbole"
  assert readers.detect_format(seq) == "sequence"
  assert readers.detect_format(table, has_columns=True) == "csv"
  assert len(readers.read_interactions(ml)) == 1
  assert len(readers.read_interactions(rb.parent)) == 2
  assert len(readers.read_interactions(seq)) == 2
  assert len(readers.read_interactions(table, user_col="a", item_col="b")) == 1
  assert len(readers.read_interactions(seq, fmt="sequence")) == 2
  with raises_at("t.tsv", "cannot tell the format"):
    readers.read_interactions(table)
  with pytest.raises(ValueError, match="unknown format"):
    readers.read_interactions(seq, fmt="xml")


def test_lastfm_plays_order_and_errors(tmp_path):
  folder = tmp_path / "lastfm"
  write(tmp_path, "lastfm/user_artists.dat",
        "userID\tartistID\tweight\r\n2\t51\t300\r\n2\t52\t10\r\n2\t53\t10\r\n3\t51\t7\r\n")
  assert readers.detect_format(folder) == "lastfm"
  assert readers.detect_format(folder / "user_artists.dat") == "lastfm"
  frame = readers.read_interactions(folder)
  assert frame["rating"].tolist() == [300.0, 10.0, 10.0, 7.0]
  # Play counts stand in for time: least-played first once sorted, ties in file order.
  order = frame[frame.user_id == "2"].sort_values("timestamp", kind="stable")["item_id"].tolist()
  assert order == ["52", "53", "51"]
  bad = write(tmp_path, "bad/user_artists.dat", "userID\tartistID\tweight\n2\t51\t3\n2\t52\t0\n")
  with raises_at("user_artists.dat", "line 3", "play count"):
    readers.read_lastfm(bad)
  with raises_at("empty", "no Last.fm"):
    readers.read_lastfm(tmp_path / "empty")
