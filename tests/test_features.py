"""Item features: alignment with internal ids, the three sources, validation, config loading."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from recattn_jax.data import build_sequences, leave_one_out, read_interactions, time_split
from recattn_jax.data import features as F
from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.loading import load_split, load_split_features
from recattn_jax.data.readers import DataFormatError
from tests.test_preprocess import frame

# Internal ids 1..4 follow numeric order of the original ids: 2, 5, 10, 30.
ITEM_IDS = np.array(["<pad>", "2", "5", "10", "30"], dtype=object)

ITEM_FILE = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float\n"
    "10\tThe Story, Part\t1995\tComedy Drama\t3.5\n"
    "2\tstory of THE\t1990\tDrama\t\n"
    "99\tNot In Catalogue\t1980\tHorror\t1.0\n"
    "5\tAlone\t\tComedy Comedy\t2.0\n")


def write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return path


def test_recbole_item_rows_follow_internal_ids(tmp_path):
  path = write(tmp_path, "x.item", ITEM_FILE)
  f = F.from_recbole_item(path, ITEM_IDS)
  assert f.num_items == 4 and f.fields == ["release_year", "class", "movie_title"]
  # Vocabularies hold the catalogue's values only (item 99's are not), sorted:
  # years 1990, 1995; genres comedy, drama (Comedy twice on one item counts once).
  assert f.vocab_sizes == {"release_year": 3, "class": 3, "movie_title": 6}
  np.testing.assert_array_equal(f.categorical["release_year"], [0, 1, 0, 2, 0])
  np.testing.assert_array_equal(f.tokens["class"], [[0, 0], [2, 0], [1, 0], [1, 2], [0, 0]])
  # Lower-cased and stripped, so "Story," == "story": alone of part story the.
  title = f.tokens["movie_title"]
  assert title.shape == (5, 3)
  np.testing.assert_array_equal(title[1], [4, 2, 5])  # story of the
  np.testing.assert_array_equal(title[2], [1, 0, 0])  # alone
  np.testing.assert_array_equal(title[3], [5, 4, 3])  # the story part
  np.testing.assert_array_equal(title[4], [0, 0, 0])  # "30" has no row
  s = f.stats
  assert (s["items_not_in_file"], s["file_items_not_in_catalogue"]) == (1, 1)
  assert s["items_without_features"] == 1 and s["skipped_fields"] == ["price"]
  np.testing.assert_array_equal(f.has_content(), [False, True, True, True, False])


def test_recbole_item_options_and_errors(tmp_path):
  path = write(tmp_path, "x.item", ITEM_FILE)
  f = F.from_recbole_item(path, ITEM_IDS, fields=["class"], max_tokens=1, min_count=2,
                          normalise=False)
  assert f.fields == ["class"]
  # Only Comedy (items 5, 10) and Drama (2, 10) reach 2 items; "Horror" is on no catalogue item.
  np.testing.assert_array_equal(f.tokens["class"][:, 0], [0, 2, 1, 1, 0])
  assert f.stats["fields"]["class"]["tokens_cut"] == 1
  with pytest.raises(DataFormatError, match="no field 'genre'"):
    F.from_recbole_item(path, ITEM_IDS, fields=["genre"])
  with pytest.raises(DataFormatError, match="no token or token_seq field"):
    F.from_recbole_item(path, ITEM_IDS, fields=["price"])
  with pytest.raises(ValueError, match="item_ids must be"):
    F.from_recbole_item(path, ["2", "5"])
  with pytest.raises(ValueError, match="item_max_tokens"):
    F.from_recbole_item(path, ITEM_IDS, max_tokens=0)


def test_attributes_json(tmp_path):
  path = write(tmp_path, "x_item2attributes.json",
               json.dumps({"2": [7, 3], "10": [3, 3], "77": [1]}))
  f = F.from_item_attributes_json(path, ITEM_IDS)
  # Attribute ids are tokens like any other: "3" -> 1, "7" -> 2; repeats count once.
  np.testing.assert_array_equal(f.tokens["attributes"], [[0, 0], [2, 1], [0, 0], [1, 0], [0, 0]])
  assert f.vocab_sizes == {"attributes": 3}
  assert f.stats["items_without_features"] == 2 and f.stats["file_items_not_in_catalogue"] == 1


def save_text(tmp_path, rows: dict[str, list[float]], ids_name: str | None = None):
  path = tmp_path / "text.npy"
  np.save(path, np.asarray(list(rows.values()), np.float32))
  ids = tmp_path / (ids_name or "text.ids.txt")
  ids.write_text("\n".join(rows) + "\n")
  return path


def test_text_embeddings_are_aligned_by_their_ids_file(tmp_path):
  path = save_text(tmp_path, {"30": [3, 0], "2": [1, 1], "nope": [9, 9]})
  matrix, mask, stats = F.read_text_embeddings(path, ITEM_IDS)
  np.testing.assert_array_equal(matrix, [[0, 0], [1, 1], [0, 0], [0, 0], [3, 0]])
  np.testing.assert_array_equal(mask, [False, True, False, False, True])
  assert (stats["items_without_text"], stats["file_items_not_in_catalogue"]) == (2, 1)
  other = save_text(tmp_path, {"5": [1, 2]}, ids_name="custom.txt")
  matrix, _, _ = F.read_text_embeddings(other, ITEM_IDS, ids_path=tmp_path / "custom.txt")
  np.testing.assert_array_equal(matrix[2], [1, 2])


def test_text_embedding_errors(tmp_path):
  path = tmp_path / "text.npy"
  np.save(path, np.ones((2, 3), np.float32))
  with pytest.raises(FileNotFoundError, match="text.ids.txt"):
    F.read_text_embeddings(path, ITEM_IDS)
  ids = tmp_path / "text.ids.txt"
  ids.write_text("2\n")
  with pytest.raises(DataFormatError, match="1 ids for the 2 rows"):
    F.read_text_embeddings(path, ITEM_IDS)
  ids.write_text("2\n2\n")
  with pytest.raises(DataFormatError, match="line 2: item id '2' repeats line 1"):
    F.read_text_embeddings(path, ITEM_IDS)
  ids.write_text("2\n5\n")
  np.save(path, np.array([[1.0, np.nan], [1, 1]]))
  with pytest.raises(DataFormatError, match="row 0 .item '2'. has NaN"):
    F.read_text_embeddings(path, ITEM_IDS)
  np.save(path, np.ones(2))
  with pytest.raises(DataFormatError, match="2-D float matrix"):
    F.read_text_embeddings(path, ITEM_IDS)
  with pytest.raises(FileNotFoundError, match="text_embeddings_path"):
    F.read_text_embeddings(tmp_path / "missing.npy", ITEM_IDS)


def valid_features(**overrides):
  kwargs = dict(categorical={"year": np.array([0, 1, 2])}, tokens={"genre": np.array([[0, 0], [1, 2], [2, 0]])},
                vocab_sizes={"year": 3, "genre": 3})
  kwargs.update(overrides)
  return ItemFeatures(**kwargs)


def test_item_features_validation():
  f = valid_features()
  assert f.num_items == 2 and hash(f) == object.__hash__(f)
  assert f != valid_features()  # identity equality: cheap, hashable
  with pytest.raises(ValueError, match="'genre' has 4 rows, others 3"):
    valid_features(tokens={"genre": np.zeros((4, 2))})
  with pytest.raises(ValueError, match="row 0 .padding. must be all zero"):
    valid_features(categorical={"year": np.array([1, 1, 2])})
  with pytest.raises(ValueError, match="vocab_sizes\\['year'\\]=2"):
    valid_features(vocab_sizes={"year": 2, "genre": 3})
  with pytest.raises(ValueError, match="'genre' has no vocab_sizes entry"):
    valid_features(vocab_sizes={"year": 3})
  with pytest.raises(ValueError, match="must be \\[N \\+ 1, T\\]"):
    valid_features(tokens={"genre": np.array([0, 1, 2])})
  with pytest.raises(ValueError, match="text_embeddings hold NaN"):
    valid_features(text_embeddings=np.array([[0.0], [np.nan], [1]]))
  with pytest.raises(ValueError, match="both categorical and tokens"):
    valid_features(tokens={"year": np.zeros((3, 1))})
  with pytest.raises(ValueError, match="have 3 rows but the model has num_items=5"):
    f.check_aligned(5)
  with pytest.raises(ValueError, match="no fields"):
    ItemFeatures().check_aligned(2)
  text = ItemFeatures(text_embeddings=np.array([[0, 0], [0, 0], [1, 2]]))
  np.testing.assert_array_equal(text.text_mask, [False, False, True])
  assert text.num_items == 2


def test_arrays_are_frozen_but_the_callers_are_not():
  year = np.array([0, 1, 2], np.int32)
  f = valid_features(categorical={"year": year})
  with pytest.raises(ValueError, match="read-only"):
    f.categorical["year"][1] = 0  # compiled encoders hold these as constants
  year[1] = 2  # the caller's array stays writable, and is not the features' copy
  assert f.categorical["year"][1] == 1
  assert valid_features(categorical=f.categorical).categorical["year"] is f.categorical["year"]
  with pytest.raises(ValueError, match="text_mask.0. .padding. must be False"):
    valid_features(text_embeddings=np.zeros((3, 2)), text_mask=np.array([True, False, False]))


def test_with_trained_items_marks_items_and_drops_untrained_tokens():
  f = valid_features().with_trained_items([np.array([1, 1])])
  np.testing.assert_array_equal(f.trained, [False, True, False])
  # Year 2 is only on untrained item 2; genre 2 is also on trained item 1.
  np.testing.assert_array_equal(f.categorical["year"], [0, 1, 0])
  np.testing.assert_array_equal(f.tokens["genre"], [[0, 0], [1, 2], [2, 0]])
  assert f.stats["untrained_tokens"] == {"year": 1, "genre": 0}
  assert f.stats["untrained_items"] == 1
  kept = valid_features().with_trained_items([np.array([1])], drop_untrained_tokens=False)
  np.testing.assert_array_equal(kept.categorical["year"], [0, 1, 2])
  with pytest.raises(ValueError, match="item id 7 outside"):
    valid_features().with_trained_items([np.array([7])])


def test_splits_carry_item_ids():
  data = build_sequences(frame([("u", "b", 1), ("u", "a", 2), ("u", "c", 3), ("v", "a", 1)]))
  assert list(leave_one_out(data).item_ids) == ["<pad>", "a", "b", "c"]
  assert leave_one_out(data).item_ids is data.item_ids
  assert time_split(data, 2, 3).item_ids is data.item_ids


def config_for(tmp_path, **fields):
  c = ml_collections.ConfigDict({"name": "tiny", "path": str(tmp_path / "seq.txt"), "format": "sequence",
                                 "dedupe": "", "user_k": 0, "item_k": 0, "min_rating": None,
                                 "split": "leave_one_out"})
  for key, value in fields.items():
    c[key] = value
  return c


def test_load_item_features_from_config(tmp_path):
  assert F.load_item_features(config_for(tmp_path), ITEM_IDS) is None
  item = write(tmp_path, "x.item", ITEM_FILE)
  text = save_text(tmp_path, {"5": [1, 2], "30": [3, 4]})
  c = config_for(tmp_path, item_features_path=str(item), item_fields="class, release_year",
                 text_embeddings_path=str(text), item_max_tokens=8)
  f = F.load_item_features(c, ITEM_IDS, train=[np.array([1, 2])])
  assert f.fields == ["release_year", "class"] and f.text_embeddings.shape == (5, 2)
  assert f.stats["items_without_features"] == 0  # "30" has text only
  np.testing.assert_array_equal(f.trained, [False, True, True, False, False])
  np.testing.assert_array_equal(f.categorical["release_year"], [0, 1, 0, 0, 0])  # 1995: untrained
  with pytest.raises(DataFormatError, match="must be a RecBole .item file"):
    F.load_item_features(config_for(tmp_path, item_features_path=str(text)), ITEM_IDS)
  with pytest.raises(FileNotFoundError, match="item_features_path"):
    F.load_item_features(config_for(tmp_path, item_features_path=str(tmp_path / "no.item")), ITEM_IDS)
  with pytest.raises(ValueError, match="come from two sources"):
    F._merge(f, f)


def test_load_split_features_end_to_end(tmp_path):
  (tmp_path / "seq.txt").write_text("1 10 20 30 40\n2 20 30 10\n3 40 50 10\n")
  write(tmp_path, "x_item2attributes.json", json.dumps({"10": [1], "20": [1, 2], "50": [3]}))
  c = config_for(tmp_path, item_features_path=str(tmp_path / "x_item2attributes.json"))
  split = load_split(c)
  f = load_split_features(c, split)
  assert list(split.item_ids) == ["<pad>", "10", "20", "30", "40", "50"]
  # Train: [10 20] (users with one training event have no example) -> 40 and 50 are cold,
  # and attribute 3, only on 50, is dropped.
  np.testing.assert_array_equal(f.trained, [False, True, True, False, False, False])
  np.testing.assert_array_equal(f.tokens["attributes"][:, 0], [0, 1, 1, 0, 0, 0])
  assert split.stats["item_features"]["untrained_tokens"] == {"attributes": 1}
  assert load_split_features(config_for(tmp_path), split) is None


def test_real_datasets(shared_data):
  data = build_sequences(read_interactions(shared_data / "ml-100k" / "ml-100k.inter"))
  f = F.load_item_features(ml_collections.ConfigDict(
      {"item_features_path": str(shared_data / "ml-100k")}), data.item_ids)
  assert f.stats["items_without_features"] == 0 and f.num_items == 1682
  assert set(f.fields) == {"movie_title", "release_year", "class"}
  assert f.vocab_sizes["class"] == 20  # 19 genres incl. "unknown", + padding
  data = build_sequences(read_interactions(shared_data / "amazon-toys" / "Toys_and_Games.txt"))
  f = F.from_item_attributes_json(shared_data / "amazon-toys" / "Toys_and_Games_item2attributes.json",
                                  data.item_ids)
  assert f.stats["items_without_features"] == 0 and f.tokens["attributes"].shape[0] == 11925
