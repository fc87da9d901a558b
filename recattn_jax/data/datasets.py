"""Named datasets: a config says `data.name = "amazon-toys"` and the library finds the files.

Where a dataset named N is looked for, in order:
  1. `$RECATTN_DATA_DIR/N/` (else `~/.cache/recattn_jax/N/`, see `download.default_cache_dir`);
  2. the development copy `../shared/data/N/` beside a checkout (or `$RECATTN_SHARED_DATA/N/`);
  3. a download, for the datasets that have one (MovieLens, checksummed).
Otherwise `DatasetNotFoundError` says where to get the files and where to put them.

Other file fields of the `data` section (`item_features_path`,
`user_friends_path`, ...) may be names relative to the dataset's folder, so a
config can say `item_features_path = "ml-100k.item"` wherever the data lives.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable

from recattn_jax.data import download


class DatasetNotFoundError(FileNotFoundError):
  """A named dataset is in none of the places it is looked for."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  file: str | None  # the interactions file inside the folder (None: the folder itself)
  source: str  # where to get it, for the error message
  fetch: Callable[[], pathlib.Path] | None = None  # downloads and returns the folder


DATASETS: dict[str, Dataset] = {
    "ml-100k": Dataset(None, "MovieLens-100K from GroupLens (downloaded automatically)",
                       download.resolve_ml100k),
    **{name: Dataset(None, f"{name} from GroupLens (downloaded automatically)",
                     lambda name=name: download.fetch_movielens(name))
       for name in download.MOVIELENS if name != "ml-100k"},
    "amazon-toys": Dataset("Toys_and_Games.txt",
                           "S3Rec's (CIKM 2020) preprocessed Amazon data: Toys_and_Games.txt and "
                           "Toys_and_Games_item2attributes.json from its data/ folder"),
    "amazon-sports": Dataset("Sports_and_Outdoors.txt",
                             "S3Rec's (CIKM 2020) preprocessed Amazon data: Sports_and_Outdoors.txt "
                             "and Sports_and_Outdoors_item2attributes.json from its data/ folder"),
    "lastfm-hetrec2k": Dataset(None, "GroupLens' HetRec 2011 Last.fm archive (hetrec2011-lastfm-2k."
                                     "zip), unpacked: user_artists.dat, user_friends.dat, ..."),
}


def shared_data_dir() -> pathlib.Path:
  """The development datasets beside a checkout (`$RECATTN_SHARED_DATA` overrides)."""
  return pathlib.Path(os.environ.get(
      "RECATTN_SHARED_DATA", pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"))


def search_folders(name: str) -> list[pathlib.Path]:
  return [download.default_cache_dir() / name, shared_data_dir() / name]


def dataset_folder(name: str) -> pathlib.Path | None:
  """The first folder holding dataset `name` (without downloading), or None."""
  if name not in DATASETS:
    raise ValueError(f"data.name={name!r} is not a known dataset ({sorted(DATASETS)}); "
                     "set data.path to a local file or folder instead")
  file = DATASETS[name].file
  for folder in search_folders(name):
    if (folder / file).is_file() if file else folder.is_dir() and any(folder.iterdir()):
      return folder
  return None


def resolve(name: str) -> pathlib.Path:
  """The interactions path of dataset `name`: a local copy, else a download, else an error."""
  folder = dataset_folder(name)
  entry = DATASETS[name]
  if folder is not None:
    return folder / entry.file if entry.file else folder
  if entry.fetch is not None:
    return entry.fetch()
  places = ", ".join(str(p) for p in search_folders(name))
  raise DatasetNotFoundError(
      f"dataset {name!r} was not found in {places}. Get {entry.source} and put "
      f"{'the files' if entry.file is None else entry.file + ' (and its companions)'} into "
      f"{download.default_cache_dir() / name} (or set $RECATTN_DATA_DIR to a folder holding "
      f"{name}/), or set data.path to where it is.")


def resolve_companion(value: str, field: str, data_name: str, data_path: str) -> pathlib.Path:
  """A `data.*_path` value: as given when it exists, else inside the dataset's folder."""
  path = pathlib.Path(value).expanduser()
  if path.is_absolute() or path.exists():
    return path
  folder = pathlib.Path(data_path).expanduser() if data_path else dataset_folder(data_name)
  if folder is not None:
    folder = folder if folder.is_dir() else folder.parent
    if (folder / value).exists():
      return folder / value
  raise FileNotFoundError(f"data.{field}={value!r} does not exist, neither as given nor in the "
                          f"folder of dataset {data_name!r} ({folder})")
