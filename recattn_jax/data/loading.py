"""From a `data` config section to interactions (`load_interactions`, the one read path) and a `Split`."""

from __future__ import annotations

import pathlib

import ml_collections
import pandas as pd

from recattn_jax.data import datasets, features, preprocess, readers, social

SPLITS = ("leave_one_out", "time")


def interactions_path(data_config: ml_collections.ConfigDict) -> pathlib.Path:
  """`data.path` when given, else the named dataset's file (`datasets.resolve`)."""
  if data_config.path:
    path = pathlib.Path(data_config.path).expanduser()
    if not path.exists():
      raise FileNotFoundError(f"data.path={str(path)!r} does not exist")
    return path
  return datasets.resolve(data_config.name)


def resolve_paths(data_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `data` whose file fields are absolute: `path` from the name, companions found.

  Companion files (`item_features_path`, `user_friends_path`, ...) may be
  given relative to the dataset's folder (see `datasets.resolve_companion`).
  """
  resolved = ml_collections.ConfigDict(data_config.to_dict())
  resolved.path = str(interactions_path(data_config).absolute())
  for key, value in data_config.items():
    if key.endswith("_path") and key != "path" and value:
      resolved[key] = str(datasets.resolve_companion(value, key, data_config.name,
                                                     resolved.path).absolute())
  return resolved


def _column_kwargs(data_config: ml_collections.ConfigDict) -> dict:
  """`data.columns` as the keyword arguments of a table reader ("" = no such column)."""
  columns = data_config.columns
  kwargs = {"user_col": columns.user, "item_col": columns.item,
            "timestamp_col": columns.time or None, "rating_col": columns.rating or None,
            "header": columns.header}
  if columns.delimiter:
    kwargs["sep"] = columns.delimiter
  return kwargs


def reader_format(data_config: ml_collections.ConfigDict) -> str:
  """The registered reader `data.format` names, "auto" resolved from the path."""
  if data_config.format != "auto":
    return data_config.format
  path = interactions_path(data_config)
  return readers.detect_format(path, has_columns=path.suffix.lower() in (".csv", ".tsv"))


def has_clock(data_config: ml_collections.ConfigDict) -> bool:
  """False when the format's reader always makes up the timestamps (a sequence file's are positions).

  A table (csv, tsv, parquet) counts as timed even without `data.columns.time`:
  the column may still be named after the config is built.
  """
  return readers.READERS.spec(reader_format(data_config)).get("clock", True)


def load_interactions(data_config: ml_collections.ConfigDict) -> tuple[pd.DataFrame, pathlib.Path]:
  """(interactions frame, the path read): every task and tool reads its data through here.

  `data.format` names a registered reader (`readers.READERS`; "auto" guesses
  from the path); readers registered with `columns=True` (csv, tsv, parquet)
  take their column names, delimiter and header from `data.columns`.
  """
  path = interactions_path(data_config)
  fmt = reader_format(data_config)
  kwargs = _column_kwargs(data_config) if readers.READERS.spec(fmt).get("columns") else {}
  if fmt == "parquet":
    kwargs.pop("header", None)
    kwargs.pop("sep", None)
  return readers.read_interactions(path, fmt=fmt, **kwargs), path


def load_split(data_config: ml_collections.ConfigDict) -> preprocess.Split:
  frame, path = load_interactions(data_config)
  if data_config.dedupe:
    frame = preprocess.dedupe(frame, keep=data_config.dedupe)
  frame, kcore_stats = preprocess.kcore_filter(frame, user_k=data_config.user_k, item_k=data_config.item_k)
  min_rating = data_config.min_rating if data_config.min_rating is not None else None
  sequences = preprocess.build_sequences(frame, min_rating=min_rating)
  if data_config.split == "leave_one_out":
    split = preprocess.leave_one_out(sequences)
  elif data_config.split == "time":
    split = preprocess.time_split_by_quantile(sequences, valid_q=data_config.valid_quantile,
                                              test_q=data_config.test_quantile)
  else:
    raise ValueError(f"data.split must be one of {SPLITS}, got {data_config.split!r}")
  split.stats.update(source=str(path), kcore=kcore_stats,
                     **{k: v for k, v in sequences.stats.items() if k not in split.stats})
  return split


def load_user_profiles(data_config: ml_collections.ConfigDict,
                       split: preprocess.Split) -> social.UserProfiles | None:
  """Friend-graph user context aligned with `split` (None unless `data.user_friends_path`)."""
  path = data_config.user_friends_path
  if not path:
    return None
  profiles = social.friend_profiles(split, social.read_friend_graph(path),
                                    top_k=data_config.friend_items)
  split.stats["user_profiles"] = profiles.stats
  return profiles


def load_split_features(data_config: ml_collections.ConfigDict,
                        split: preprocess.Split) -> features.ItemFeatures | None:
  """Item features aligned with `split` (None when the config names no source).

  Items without training events are marked (`ItemFeatures.trained`) so that the
  item encoder can treat them as cold; the feature stats go into `split.stats`.
  """
  if split.item_ids is None:
    raise ValueError("split has no item_ids to align item features with")
  item_features = features.load_item_features(data_config, split.item_ids, train=split.train)
  if item_features is not None:
    split.stats["item_features"] = item_features.stats
  return item_features
