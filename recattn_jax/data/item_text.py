"""The text of each item, for a pretrained text encoder (`recattn_jax.text`).

Sources, by what the data config names:
  * `data.item_text_path` + `data.item_text_columns` ("title,description"):
    a CSV / TSV / Parquet table with the item id column `data.columns.item`;
    the named columns are joined with ". " (a missing column is an error
    naming the file and the columns it has);
  * a RecBole `.item` file (`data.item_text_path` without columns, else
    `data.item_features_path`, e.g. ML-100K's `ml-100k.item`; naming it as
    the text path alone gives text without the categorical features): "Title (year). Genre, Genre" from its title / year / class
    fields (`movie_title`, `release_year`, `class`), other files: every field
    as "field: value";
  * Last.fm HetRec (`data.format="lastfm"`): the artist's name from
    `artists.dat`, and "Tags: a, b, c" with its most used tags from
    `tags.dat` + `user_taggedartists.dat` when both are present.
Items without text (none in the file, or an empty one) get the empty text, whose
encoding is the model's vector of an empty sentence ([CLS] [SEP]); their count
is reported as `items_without_text`. Texts are returned in the order of
`item_ids` (row 0, the padding row, gets "").
"""

from __future__ import annotations

import collections
import pathlib
from typing import Sequence

import ml_collections
import numpy as np
import pandas as pd

from recattn_jax.data import readers

LASTFM_ARTISTS, LASTFM_TAGS, LASTFM_TAGGINGS = "artists.dat", "tags.dat", "user_taggedartists.dat"
TOP_TAGS = 10


class ItemTextError(ValueError):
  """The item text source is missing or lacks a named column; the message names the file."""


def _recbole_text(row: dict) -> str:
  title = " ".join(row.get("movie_title") or [])
  year = row.get("release_year") or ""
  genres = ", ".join(row.get("class") or [])
  if title or year or genres:
    return f"{title}{f' ({year})' if year else ''}{f'. {genres}' if genres else ''}".strip()
  parts = [f"{k}: {' '.join(v) if isinstance(v, list) else v}" for k, v in row.items()
           if v is not None and not (isinstance(v, float) and np.isnan(v)) and v != ""]
  return ". ".join(parts)


def _from_recbole(path: pathlib.Path) -> dict[str, str]:
  frame = readers.read_recbole_item_features(path)
  return {str(item): _recbole_text(row) for item, row in zip(frame.index, frame.to_dict("records"))}


def _from_lastfm(folder: pathlib.Path) -> dict[str, str]:
  artists_path = folder / LASTFM_ARTISTS
  if not artists_path.is_file():
    raise ItemTextError(f"{artists_path} is missing: Last.fm item text needs the artist names")
  artists = pd.read_csv(artists_path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
  texts = dict(zip(artists["id"], artists["name"]))
  tags_path, taggings_path = folder / LASTFM_TAGS, folder / LASTFM_TAGGINGS
  if tags_path.is_file() and taggings_path.is_file():
    names = pd.read_csv(tags_path, sep="\t", dtype=str, keep_default_na=False, encoding="latin-1",
                        quoting=3)
    names = dict(zip(names["tagID"], names["tagValue"]))
    taggings = pd.read_csv(taggings_path, sep="\t", dtype=str, usecols=["artistID", "tagID"])
    counts = collections.defaultdict(collections.Counter)
    for artist, tag in zip(taggings["artistID"], taggings["tagID"]):
      counts[artist][tag] += 1
    for artist, tags in counts.items():
      top = [names.get(tag, "") for tag, _ in sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))]
      top = [t for t in top if t][:TOP_TAGS]
      if top:
        texts[artist] = f"{texts.get(artist, '')}. Tags: {', '.join(top)}".lstrip(". ")
  return texts


def _from_table(path: pathlib.Path, columns: Sequence[str], item_column: str) -> dict[str, str]:
  if not path.is_file():
    raise ItemTextError(f"data.item_text_path={str(path)!r} does not exist")
  frame = (pd.read_parquet(path) if path.suffix == ".parquet"
           else pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False))
  missing = [c for c in [item_column, *columns] if c not in frame.columns]
  if missing:
    raise ItemTextError(f"{path}: no column {missing} (data.item_text_columns / data.columns.item); "
                        f"it has {list(frame.columns)}")
  parts = frame[list(columns)].astype(str).replace({"nan": "", "None": ""})
  joined = parts.apply(lambda row: ". ".join(v.strip() for v in row if v.strip()), axis=1)
  return dict(zip(frame[item_column].astype(str), joined))


def item_texts(data_config: ml_collections.ConfigDict,
               item_ids: Sequence[str]) -> tuple[list[str], dict]:
  """(text per row of `item_ids`, stats) from the source `data_config` names (resolved paths)."""
  columns = [c.strip() for c in str(data_config.get("item_text_columns", "") or "").split(",") if c.strip()]
  if columns:
    source = pathlib.Path(data_config.get("item_text_path", "") or data_config.path)
    texts = _from_table(source, columns, data_config.columns.item)
  elif data_config.get("item_text_path") or data_config.get("item_features_path"):
    source = readers._single_file(pathlib.Path(data_config.get("item_text_path", "")
                                               or data_config.item_features_path), ".item")
    texts = _from_recbole(source)
  elif data_config.format == "lastfm":
    source = pathlib.Path(data_config.path)
    texts = _from_lastfm(source if source.is_dir() else source.parent)
  else:
    raise ItemTextError("no item text source: set data.item_text_columns (with data.item_text_path), "
                        "data.item_text_path or data.item_features_path to a RecBole .item file, "
                        "or use data.format='lastfm'")
  out = [""] + [texts.get(str(item), "") for item in list(item_ids)[1:]]
  missing = sum(1 for text in out[1:] if not text)
  return out, {"item_text_source": str(source), "items_without_text": missing}
