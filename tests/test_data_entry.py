"""One data entry point: any column names from `data.columns`, named datasets, from the CLI."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from recattn_jax.config import get_default_config
from recattn_jax.data import datasets, load_interactions
from recattn_jax.data.loading import resolve_paths
from tests.helpers import write_sequence_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def _events(tmp_path) -> pd.DataFrame:
  """A learnable sequence file as a table with unusual column names."""
  lines = write_sequence_file(tmp_path / "seqs.txt").read_text().split("\n")
  rows = [(f"u{parts[0]}", f"i{item}", 1000 * t, 1 + t % 5)
          for parts in (line.split() for line in lines if line)
          for t, item in enumerate(parts[1:])]
  return pd.DataFrame(rows, columns=["visitor", "product", "when", "stars"])


def _columns(config, header=True):
  names = ("visitor", "product", "when", "stars") if header else ("0", "1", "2", "3")
  config.data.columns.update(user=names[0], item=names[1], time=names[2], rating=names[3],
                             header=header)
  return config


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tables")
  frame = _events(folder)
  frame.to_csv(folder / "events.csv", sep=";", index=False)
  frame.to_csv(folder / "events.tsv", sep="\t", index=False, header=False)
  frame.to_parquet(folder / "events.parquet")
  return folder, frame


@pytest.mark.parametrize("file, fmt, header, delimiter", [
    ("events.csv", "csv", True, ";"), ("events.tsv", "tsv", False, ""),
    ("events.parquet", "parquet", True, ""), ("events.csv", "auto", True, ";")])
def test_tables_with_any_column_names_load_the_same(tables, file, fmt, header, delimiter):
  folder, frame = tables
  config = _columns(get_default_config(), header)
  config.data.update(path=str(folder / file), format=fmt)
  config.data.columns.delimiter = delimiter
  loaded, path = load_interactions(config.data)
  assert path == folder / file
  assert loaded["user_id"].tolist() == frame["visitor"].tolist()
  assert loaded["item_id"].tolist() == frame["product"].tolist()
  np.testing.assert_array_equal(loaded["rating"], frame["stars"])
  np.testing.assert_array_equal(loaded["timestamp"], frame["when"])


def test_a_missing_column_is_named(tables):
  folder, _ = tables
  config = _columns(get_default_config())
  config.data.update(path=str(folder / "events.csv"), format="csv")
  config.data.columns.update(delimiter=";", time="timestamp")
  with pytest.raises(ValueError, match=r"events\.csv.*timestamp"):
    load_interactions(config.data)


@pytest.mark.parametrize("file, fmt", [("events.csv", "csv"), ("events.parquet", "parquet")])
def test_cli_trains_on_a_table_named_by_the_config(tables, tmp_path, file, fmt):
  folder, frame = tables
  config_file = tmp_path / "tiny.py"
  config_file.write_text(textwrap.dedent(f"""
      import pathlib, sys
      sys.path.insert(0, {str(REPO)!r})
      from tests.helpers import tiny_config
      def get_config():
        return tiny_config(pathlib.Path("set on the command line"), num_epochs=1)
      """))
  command = [sys.executable, "-m", "recattn_jax.train", "--config", str(config_file),
             "--workdir", str(tmp_path / "run"), f"--config.data.path={folder / file}",
             f"--config.data.format={fmt}", "--config.data.columns.user=visitor",
             "--config.data.columns.item=product", "--config.data.columns.time=when",
             "--config.data.columns.rating=stars", "--config.data.columns.delimiter=;"]
  done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["data"]["users"] == frame["visitor"].nunique()
  assert results["config"]["data"]["columns"]["user"] == "visitor"
  assert "test metric" in done.stdout


# ----------------------------------------------------------------------------
# Named datasets.


@pytest.fixture
def data_dirs(tmp_path, monkeypatch):
  home, shared = tmp_path / "home", tmp_path / "shared"
  home.mkdir()
  shared.mkdir()
  monkeypatch.setenv("RECATTN_DATA_DIR", str(home))
  monkeypatch.setenv("RECATTN_SHARED_DATA", str(shared))
  return home, shared


def test_named_dataset_is_found_in_the_data_dir_before_the_shared_copy(data_dirs):
  home, shared = data_dirs
  for root in (shared, home):
    (root / "amazon-toys").mkdir()
    write_sequence_file(root / "amazon-toys" / "Toys_and_Games.txt")
  assert datasets.resolve("amazon-toys") == home / "amazon-toys" / "Toys_and_Games.txt"
  (home / "amazon-toys" / "Toys_and_Games.txt").unlink()
  assert datasets.resolve("amazon-toys") == shared / "amazon-toys" / "Toys_and_Games.txt"


def test_missing_dataset_says_where_to_get_it_and_where_to_put_it(data_dirs):
  home, _ = data_dirs
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.resolve("amazon-sports")
  message = str(e.value)
  assert "S3Rec" in message and str(home / "amazon-sports") in message and "data.path" in message
  with pytest.raises(ValueError, match="data.name='netflix' is not a known dataset"):
    datasets.resolve("netflix")


def test_companion_files_resolve_inside_the_dataset_folder(data_dirs):
  home, _ = data_dirs
  folder = home / "lastfm-hetrec2k"
  folder.mkdir()
  (folder / "user_artists.dat").write_text("userID\tartistID\tweight\n1\t2\t3\n")
  (folder / "user_friends.dat").write_text("userID\tfriendID\n1\t2\n")
  config = get_default_config()
  config.data.update(name="lastfm-hetrec2k", format="lastfm", user_friends_path="user_friends.dat")
  resolved = resolve_paths(config.data)
  assert resolved.path == str(folder) and resolved.user_friends_path == str(folder / "user_friends.dat")
  config.data.user_friends_path = "friends.dat"
  with pytest.raises(FileNotFoundError, match="data.user_friends_path='friends.dat' does not exist"):
    resolve_paths(config.data)
  assert os.environ["RECATTN_DATA_DIR"] == str(home)


def test_item_titles_from_recbole_and_grouplens_item_files(tmp_path):
  from recattn_jax.data import item_titles  # pylint: disable=g-import-not-at-top
  recbole = tmp_path / "recbole"
  recbole.mkdir()
  (recbole / "ml.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\n"
                                   "10\tToy Story\t1995\n20\tHeat\t\n")
  ids = np.array(["<pad>", "10", "20", "30"], dtype=object)
  assert list(item_titles(ids, recbole / "ml.inter")) == ["<pad>", "Toy Story (1995)", "Heat", "30"]
  grouplens = tmp_path / "grouplens"
  grouplens.mkdir()
  (grouplens / "u.item").write_bytes("10|Caf\xe9 (1994)|x\n".encode("latin-1"))
  assert list(item_titles(ids[:2], grouplens)) == ["<pad>", "Caf\xe9 (1994)"]
  assert list(item_titles(ids[:2], tmp_path)) == ["<pad>", "10"]  # no item file: the ids
