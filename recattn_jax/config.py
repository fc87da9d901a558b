"""The default configuration; files under `configs/` start from it and override fields.

`check_config` validates every ranged or enumerated field before a run does any work.
"""

import dataclasses
import math
import numbers
import os
import pathlib

import ml_collections
from ml_collections import config_dict

# The shared datasets beside a checkout (override with $RECATTN_SHARED_DATA).
SHARED_DATA = pathlib.Path(os.environ.get(
    "RECATTN_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def get_default_config() -> ml_collections.ConfigDict:
  """SASRec+ (causal self-attention, full-softmax CE) on MovieLens-100K, leave-one-out."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "ranking"               # or "ctr" (click prediction), "rating" (regression)

  c.data = ml_collections.ConfigDict()
  c.data.name = "ml-100k"          # a public dataset fetched and cached on first use ...
  c.data.path = ""                 # ... unless this names a local file or folder
  c.data.format = "auto"           # movielens | recbole | sequence | csv | parquet | auto
  c.data.min_rating = config_dict.placeholder(float)  # keep events rated >= this (None: all)
  c.data.dedupe = ""               # "", "first" or "last": collapse repeated (user, item) pairs
  c.data.user_k = 0                # k-core filter (0: off)
  c.data.item_k = 0
  c.data.split = "leave_one_out"   # or "time" (global time split at quantiles)
  c.data.valid_quantile = 0.8
  c.data.test_quantile = 0.9
  c.data.max_len = 200
  c.data.padding = "left"
  c.data.pack = True               # several users per row (segment ids) instead of padding
  c.data.prefetch = 4              # batches prepared ahead in a background thread (0: none)
  c.data.all_windows = False       # long histories train on every max_len window, not the newest
  # Item content (docs/models.md): a RecBole .item file or S3Rec item2attributes.json ...
  c.data.item_features_path = ""
  c.data.item_fields = ""          # .item columns to use, comma separated ("": all token fields)
  c.data.item_max_tokens = 32      # tokens kept per item and field
  c.data.item_token_min_count = 1  # rarer tokens become unknown
  c.data.text_embeddings_path = "" # ... and/or a [items, E] .npy whose rows are named by ...
  c.data.text_embeddings_ids_path = ""  # ... this file ("": the .npy path with .ids.txt)
  # A user context (ranking encoders): what each user's friends interacted with in training.
  c.data.user_friends_path = ""    # headed userID/friendID table, e.g. Last.fm's user_friends.dat
  c.data.friend_items = 50         # most shared friend items kept per user
  # Click and rating tasks.
  c.data.click_threshold = 4.0     # rating >= this is a click (ctr)
  c.data.negatives_per_positive = 1  # sampled non-interactions per event (ctr)
  c.data.with_ratings = False      # give the model the history's ratings too
  c.data.rating_range = (0.5, 5.0)  # rating task: every rating must lie in [low, high]

  c.model = ml_collections.ConfigDict()
  c.model.name = "sasrec"
  c.model.embed_dim = 64
  c.model.num_layers = 2
  c.model.num_heads = 1
  c.model.ff_dim = 256
  c.model.dropout = 0.2
  c.model.positions = "end"        # "start" keeps positions stable under appends
  c.model.attention_impl = "auto"
  c.model.dtype = "float32"
  c.model.item_representation = "id"  # "content" or "both" need data.item_features_path/text_embeddings_path
  c.model.item_id_dropout = 0.0    # "both": treat trained items as cold at this rate (DropoutNet)
  c.model.output_bias = True       # bert4rec: per-item output bias
  c.model.num_position_buckets = 0  # hstu: 0 = one relative-position bucket per distance
  c.model.num_time_buckets = 128   # hstu: log-spaced time-difference buckets (0: no time bias)
  c.model.time_bucket_step = 0.301
  c.model.bias_per_head = False
  c.model.attention_norm = "max_len"
  # din / bst (ctr, rating): the head on [z, e, z*e, user].
  c.model.head = "mlp"             # linear | mlp | residual_mlp
  c.model.head_hidden = (64, 32)
  c.model.head_activation = "relu"
  c.model.head_dropout = 0.0
  c.model.head_blocks = 2
  c.model.use_user_embedding = True
  c.model.use_positions = True
  c.model.use_ratings = False
  c.model.use_biases = True

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32          # rows; packed rows hold ~2 ML-100K users each
  c.train.learning_rate = 1e-3
  c.train.b1 = 0.9
  c.train.b2 = 0.98
  c.train.weight_decay = 0.1
  c.train.warmup_steps = 0
  c.train.schedule = "constant"    # or "cosine": decay to zero at num_epochs
  c.train.grad_clip = 1.0
  c.train.loss = "softmax"         # sampled_softmax | bce | gbce (recattn_jax/training/losses.py)
  c.train.num_negatives = config_dict.placeholder(int)  # None: the loss's default
  c.train.negative_sampler = "uniform"  # sampled_softmax: or "in_batch"
  c.train.logq_correction = True
  c.train.negatives = "all"        # "trained": softmax over items with training events only (cold start)
  c.train.gbce_t = 0.75
  c.train.mask_prob = 0.2          # bert4rec cloze masking
  c.train.last_item_prob = 0.0     # bert4rec: share of examples that mask only the last item
  c.train.num_epochs = 80
  c.train.eval_every_epochs = 2
  c.train.patience = 6             # evaluations without improvement before stopping
  c.train.early_stopping_metric = "NDCG@10"
  c.train.log_every_steps = 20
  c.train.num_devices = 0          # 0: every local device
  c.train.progress_bar = True
  c.train.nan_policy = "raise"     # non-finite loss or gradient: "raise" (stop, naming the step) or "skip" the update
  c.train.keep_checkpoints = 2     # `latest` and `best` checkpoints kept, for falling back from a damaged one

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.ks = (1, 10, 50, 200)
  c.eval.exclude_seen = True       # the protocol early stopping and the headline use
  c.eval.ties = "pessimistic"
  c.eval.item_chunk = 4096
  return c


def get_amazon_config(folder: str, file_name: str) -> ml_collections.ConfigDict:
  """SASRec+ on one of S3Rec's 5-core Amazon files in `../shared/data/<folder>/`."""
  c = get_default_config()
  c.data.name = folder
  c.data.path = str(SHARED_DATA / folder / file_name)
  c.data.format = "sequence"
  c.data.max_len = 50
  c.model.dropout = 0.5
  c.train.batch_size = 16          # packed rows of ~6 users each
  c.train.weight_decay = 0.0       # decay would shrink rarely-seen items at every step
  c.train.num_epochs = 40
  return c


def get_lastfm_config(friends: bool = False) -> ml_collections.ConfigDict:
  """SASRec+ on Last.fm HetRec 2011; `friends` adds the friend graph as a user context."""
  c = get_default_config()
  c.data.name = "lastfm-hetrec2k"
  c.data.path = str(SHARED_DATA / "lastfm-hetrec2k")
  c.data.format = "lastfm"
  c.data.max_len = 50
  if friends:
    c.data.user_friends_path = str(SHARED_DATA / "lastfm-hetrec2k" / "user_friends.dat")
    c.data.friend_items = 50
  c.model.dropout = 0.5
  c.train.batch_size = 32
  c.train.weight_decay = 0.0
  c.train.num_epochs = 60
  return c


def get_ml100k_pointwise_config(task: str) -> ml_collections.ConfigDict:
  """DIN target attention over the last 50 events, items from id + `ml-100k.item` content."""
  c = get_default_config()
  c.task = task
  c.data.max_len = 50
  c.data.item_features_path = str(SHARED_DATA / "ml-100k" / "ml-100k.item")
  c.model.name = "din"
  c.model.item_representation = "both"
  c.model.num_heads = 2
  c.model.dropout = 0.1
  c.train.batch_size = 256
  c.train.weight_decay = 0.0
  c.train.num_epochs = 20
  c.train.eval_every_epochs = 1
  c.train.patience = 3
  c.train.early_stopping_metric = "AUC" if task == "ctr" else "RMSE"
  c.eval.batch_size = 1024
  return c


# ----------------------------------------------------------------------------
# Validation.


class ConfigError(ValueError):
  """A config field holds a value outside its range; the message names each one."""


@dataclasses.dataclass(frozen=True)
class Range:
  """Allowed values of a numeric field: `low <= x <= high`, or `<` at an open end."""

  low: float = -math.inf
  high: float = math.inf
  integer: bool = False
  low_open: bool = False
  high_open: bool = False
  optional: bool = False  # None is allowed

  def contains(self, value) -> bool:
    if value is None:
      return self.optional
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
      return False
    if self.integer and value != int(value):
      return False
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return above and below

  def __str__(self) -> str:
    kind = "an integer" if self.integer else "a finite number"
    bounds = []
    if self.low > -math.inf:
      bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
    if self.high < math.inf:
      bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
    return kind + (" " + " and ".join(bounds) if bounds else "") + (" (or None)" if self.optional else "")


_COUNT = Range(1, integer=True)
_NON_NEGATIVE_COUNT = Range(0, integer=True)
_PROBABILITY = Range(0, 1, high_open=True)  # a dropout or masking rate

RANGES: dict[str, Range] = {
    "seed": _NON_NEGATIVE_COUNT,
    "data.user_k": _NON_NEGATIVE_COUNT,
    "data.item_k": _NON_NEGATIVE_COUNT,
    "data.min_rating": Range(optional=True),
    "data.valid_quantile": Range(0, 1, low_open=True, high_open=True),
    "data.test_quantile": Range(0, 1, low_open=True, high_open=True),
    "data.max_len": _COUNT,
    "data.prefetch": _NON_NEGATIVE_COUNT,
    "data.item_max_tokens": _COUNT,
    "data.item_token_min_count": _COUNT,
    "data.friend_items": _COUNT,
    "data.click_threshold": Range(),
    "data.negatives_per_positive": _NON_NEGATIVE_COUNT,
    "model.embed_dim": _COUNT,
    "model.num_layers": _COUNT,
    "model.num_heads": _COUNT,
    "model.ff_dim": _COUNT,
    "model.dropout": _PROBABILITY,
    "model.item_id_dropout": _PROBABILITY,
    "model.head_dropout": _PROBABILITY,
    "model.head_blocks": _COUNT,
    "model.num_position_buckets": _NON_NEGATIVE_COUNT,
    "model.num_time_buckets": _NON_NEGATIVE_COUNT,
    "model.time_bucket_step": Range(0, low_open=True),
    "train.batch_size": _COUNT,
    "train.learning_rate": Range(0, low_open=True),
    "train.b1": Range(0, 1, high_open=True),
    "train.b2": Range(0, 1, high_open=True),
    "train.weight_decay": Range(0),
    "train.warmup_steps": _NON_NEGATIVE_COUNT,
    "train.grad_clip": Range(0),
    "train.num_negatives": Range(1, integer=True, optional=True),
    "train.gbce_t": Range(0, 1),
    "train.mask_prob": Range(0, 1, low_open=True),
    "train.last_item_prob": Range(0, 1),
    "train.num_epochs": _COUNT,
    "train.eval_every_epochs": Range(0, low_open=True),
    "train.patience": _COUNT,
    "train.log_every_steps": _COUNT,
    "train.num_devices": _NON_NEGATIVE_COUNT,
    "train.keep_checkpoints": Range(2, integer=True),
    "eval.batch_size": _COUNT,
    "eval.item_chunk": _COUNT,
}

NAN_POLICIES = ("raise", "skip")
# Other enumerated fields are checked where they are used, also before training.
CHOICES: dict[str, tuple] = {"train.nan_policy": NAN_POLICIES}


def _lookup(config: ml_collections.ConfigDict, field: str):
  node = config
  for key in field.split("."):
    if key not in node:
      return None, False
    node = node[key]
  return node, True


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every field whose value is out of its range, before any work.

  Fields a config does not have are left to the code that needs them.
  """
  problems = []
  for field, allowed in RANGES.items():
    value, present = _lookup(config, field)
    if present and not allowed.contains(value):
      problems.append(f"{field}={value!r} must be {allowed}")
  for field, choices in CHOICES.items():
    value, present = _lookup(config, field)
    if present and value not in choices:
      problems.append(f"{field}={value!r} must be one of {list(choices)}")
  ks, present = _lookup(config, "eval.ks")
  if present and (not ks or not all(_COUNT.contains(k) for k in ks) or len(set(ks)) != len(ks)):
    problems.append(f"eval.ks={ks!r} must be a non-empty list of distinct integers >= 1")
  low_high, present = _lookup(config, "data.rating_range")
  if present and not (len(low_high) == 2 and all(Range().contains(v) for v in low_high)
                      and low_high[0] <= low_high[1]):
    problems.append(f"data.rating_range={low_high!r} must be (low, high) with finite low <= high")
  quantiles = [_lookup(config, f"data.{name}_quantile")[0] for name in ("valid", "test")]
  if None not in quantiles and all(Range().contains(q) for q in quantiles) and not quantiles[0] < quantiles[1]:
    problems.append(f"data.valid_quantile={quantiles[0]!r} must be below data.test_quantile={quantiles[1]!r}")
  dim, heads = _lookup(config, "model.embed_dim")[0], _lookup(config, "model.num_heads")[0]
  if _COUNT.contains(dim) and _COUNT.contains(heads) and dim % heads:
    problems.append(f"model.embed_dim={dim} must be divisible by model.num_heads={heads}")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
