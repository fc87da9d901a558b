"""Datasets: readers for published formats, downloads, sequences and splits.

Typical use:

  df = read_interactions(resolve_ml100k())
  df, kcore_stats = kcore_filter(df, user_k=5, item_k=5)
  data = build_sequences(df)
  split = leave_one_out(data)

See docs/data.md for the formats, the tie-break rule and the split definitions.
"""

from recattn_jax.data.download import default_cache_dir
from recattn_jax.data.download import DownloadError
from recattn_jax.data.download import fetch_movielens
from recattn_jax.data.download import ml100k_from_recbole_wheel
from recattn_jax.data.download import MOVIELENS
from recattn_jax.data.download import resolve_ml100k
from recattn_jax.data.ctr import build_pointwise_data
from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.features import load_item_features
from recattn_jax.data.preprocess import build_sequences
from recattn_jax.data.preprocess import dedupe
from recattn_jax.data.preprocess import EvalSet
from recattn_jax.data.preprocess import kcore_filter
from recattn_jax.data.preprocess import leave_one_out
from recattn_jax.data.preprocess import SequenceData
from recattn_jax.data.preprocess import Split
from recattn_jax.data.preprocess import time_split
from recattn_jax.data.preprocess import time_split_by_quantile
from recattn_jax.data.readers import DataFormatError
from recattn_jax.data.readers import detect_format
from recattn_jax.data.readers import FORMATS
from recattn_jax.data.readers import READERS
from recattn_jax.data.readers import item_titles
from recattn_jax.data.loading import load_interactions
from recattn_jax.data.readers import INTERACTION_COLUMNS
from recattn_jax.data.readers import read_interactions
from recattn_jax.data.readers import read_item_attributes_json
from recattn_jax.data.readers import read_lastfm
from recattn_jax.data.readers import read_movielens
from recattn_jax.data.readers import read_parquet
from recattn_jax.data.readers import read_recbole_atomic
from recattn_jax.data.readers import read_recbole_item_features
from recattn_jax.data.readers import read_sequence_file
from recattn_jax.data.readers import read_table

__all__ = [
    "build_pointwise_data",
    "build_sequences",
    "DataFormatError",
    "dedupe",
    "default_cache_dir",
    "detect_format",
    "DownloadError",
    "EvalSet",
    "fetch_movielens",
    "FORMATS",
    "READERS",
    "item_titles",
    "load_interactions",
    "INTERACTION_COLUMNS",
    "ItemFeatures",
    "kcore_filter",
    "leave_one_out",
    "load_item_features",
    "ml100k_from_recbole_wheel",
    "MOVIELENS",
    "read_interactions",
    "read_item_attributes_json",
    "read_lastfm",
    "read_movielens",
    "read_parquet",
    "read_recbole_atomic",
    "read_recbole_item_features",
    "read_sequence_file",
    "read_table",
    "resolve_ml100k",
    "SequenceData",
    "Split",
    "time_split",
    "time_split_by_quantile",
]
