"""Item texts from a RecBole .item file, Last.fm's artists and tags, and a table's named columns."""

import ml_collections
import numpy as np
import pytest

from recattn_jax.config import get_default_config
from recattn_jax.data.item_text import ItemTextError, item_texts


def _data_config(**fields) -> ml_collections.ConfigDict:
  config = get_default_config().data
  config.update(fields)
  return config


def test_recbole_titles_years_and_genres(tmp_path):
  path = tmp_path / "movies.item"
  path.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                  "1\tToy Story\t1995\tAnimation Children's Comedy\n"
                  "2\tHeat\t\tAction\n")
  texts, stats = item_texts(_data_config(item_features_path=str(path)),
                            np.asarray(["<pad>", "2", "1", "9"], dtype=object))
  assert texts == ["", "Heat. Action", "Toy Story (1995). Animation, Children's, Comedy", ""]
  assert stats["items_without_text"] == 1  # item 9 has no row: the empty text
  # Named as the text source alone (no categorical features), the same texts.
  alone, _ = item_texts(_data_config(item_text_path=str(path)),
                        np.asarray(["<pad>", "2", "1", "9"], dtype=object))
  assert alone == texts


def test_lastfm_names_with_their_most_used_tags(tmp_path):
  (tmp_path / "user_artists.dat").write_text("userID\tartistID\tweight\n1\t10\t5\n")
  (tmp_path / "artists.dat").write_text("id\tname\turl\tpictureURL\n10\tMALICE MIZER\tu\tp\n11\tBjörk\tu\tp\n")
  assert item_texts(_data_config(format="lastfm", path=str(tmp_path / "user_artists.dat")),
                    ["<pad>", "10", "11"])[0] == ["", "MALICE MIZER", "Björk"]
  (tmp_path / "tags.dat").write_text("tagID\ttagValue\n1\tj-rock\n2\tvisual kei\n3\tgothic\n")
  (tmp_path / "user_taggedartists.dat").write_text(
      "userID\tartistID\ttagID\tday\tmonth\tyear\n" + "".join(
          f"{u}\t10\t{t}\t1\t1\t2008\n" for u, t in [(1, 2), (2, 2), (3, 1), (1, 3), (2, 3), (3, 3)]))
  texts, _ = item_texts(_data_config(format="lastfm", path=str(tmp_path)), ["<pad>", "10", "11"])
  assert texts[1] == "MALICE MIZER. Tags: gothic, visual kei, j-rock"  # by count, then tag id
  assert texts[2] == "Björk"


def test_named_columns_of_a_table_and_a_missing_one_named(tmp_path):
  path = tmp_path / "items.csv"
  path.write_text("item_id,title,description\na,First,The first one\nb,Second,\n")
  config = _data_config(item_text_path=str(path), item_text_columns="title, description")
  assert item_texts(config, ["<pad>", "b", "a"])[0] == ["", "Second", "First. The first one"]
  with pytest.raises(ItemTextError, match=r"items.csv: no column \['blurb'\].*it has"):
    item_texts(_data_config(item_text_path=str(path), item_text_columns="title,blurb"), ["<pad>"])
  with pytest.raises(ItemTextError, match="no item text source"):
    item_texts(_data_config(format="sequence", path=str(path)), ["<pad>"])


def test_a_training_job_embeds_the_item_text_it_names(tmp_path, monkeypatch, data_file):
  from recattn_jax.data.loading import load_split, resolve_paths  # noqa: PLC0415
  from recattn_jax.parallel import make_mesh  # noqa: PLC0415
  from recattn_jax.training import tasks  # noqa: PLC0415
  from tests.helpers import tiny_config  # noqa: PLC0415
  from tests.test_text_encoder import write_tiny_checkpoint  # noqa: PLC0415

  monkeypatch.setenv("RECATTN_EMBEDDING_DIR", str(tmp_path / "cache"))
  table = tmp_path / "items.csv"
  table.write_text("item_id,title\n" + "".join(f"{i},w{i % 30} w{(i * 7) % 30}\n" for i in range(1, 41)))
  config = tiny_config(data_file)
  config.data.update(text_model=str(write_tiny_checkpoint(tmp_path / "bert")), item_text_path=str(table),
                     item_text_columns="title", text_max_length=8)
  config.model.sasrec.item_representation = "both"
  data_config = resolve_paths(config.data)
  resolved = tasks.with_text_embeddings(data_config, load_split(data_config))
  matrix = np.load(resolved.text_embeddings_path)
  assert matrix.shape[1] == 16 and str(tmp_path / "cache") in resolved.text_embeddings_path
  job = tasks.build_job(config, make_mesh(num_devices=1))
  assert job.stats["item_features"]["text"]["items_with_text"] == matrix.shape[0]
  assert "content" in job.state.params["params"]["item_embed"]  # the text reaches the item encoder
