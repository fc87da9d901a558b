"""From a `data` config section to a train/valid/test `Split`."""

from __future__ import annotations

import pathlib

import ml_collections

from recattn_jax.data import download, features, preprocess, readers, social

SPLITS = ("leave_one_out", "time")


def interactions_path(data_config: ml_collections.ConfigDict) -> pathlib.Path:
  """`data.path` when given, else the cached (downloaded) copy of a named public dataset."""
  if data_config.path:
    path = pathlib.Path(data_config.path).expanduser()
    if not path.exists():
      raise FileNotFoundError(f"data.path={str(path)!r} does not exist")
    return path
  if data_config.name == "ml-100k":
    return download.resolve_ml100k()
  if data_config.name in download.MOVIELENS:
    return download.fetch_movielens(data_config.name)
  raise ValueError(f"data.name={data_config.name!r} has no download; set data.path to a local file or folder")


def load_split(data_config: ml_collections.ConfigDict) -> preprocess.Split:
  path = interactions_path(data_config)
  frame = readers.read_interactions(path, fmt=data_config.format)
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
  path = data_config.get("user_friends_path", "")
  if not path:
    return None
  profiles = social.friend_profiles(split, social.read_friend_graph(path),
                                    top_k=data_config.get("friend_items", 50))
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
