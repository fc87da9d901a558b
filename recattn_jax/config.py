"""The default configuration; files under `configs/` start from it and override fields.

`check_config` validates every ranged or enumerated field before a run does any work.
"""

import dataclasses
import logging
import math
import numbers
import pathlib

import ml_collections
from ml_collections import config_dict

from recattn_jax.data.datasets import shared_data_dir
from recattn_jax.data.loading import load_split
from recattn_jax.data.profile import DataProfile, profile
from recattn_jax.models import ENCODERS, POINTWISE_MODELS, encoder_kwargs, pointwise_kwargs
from recattn_jax.text.bert import LORA_TARGETS
from recattn_jax.training.losses import LOSSES, loss_kwargs
from recattn_jax.training.steps import LR_BATCH_SCALINGS
from recattn_jax.training.trackers import check_trackers

log = logging.getLogger(__name__)

# The development datasets beside a checkout (override with $RECATTN_SHARED_DATA).
SHARED_DATA = shared_data_dir()


def _sections(names, kwargs_of) -> dict:
  return {name: ml_collections.ConfigDict(kwargs_of(name)) for name in names}


def model_config(name: str) -> ml_collections.ConfigDict:
  """`config.model`: `name` plus one section of fields per registered model, at their defaults."""
  c = ml_collections.ConfigDict({"name": name})
  c.update(_sections(ENCODERS.names(), encoder_kwargs))
  c.update(_sections(POINTWISE_MODELS.names(), pointwise_kwargs))
  return c


def loss_config(name: str) -> ml_collections.ConfigDict:
  """`config.train.loss`: `name` plus one section of fields per registered loss, at their defaults."""
  c = ml_collections.ConfigDict({"name": name})
  c.update(_sections(LOSSES.names(), loss_kwargs))
  return c


def get_default_config() -> ml_collections.ConfigDict:
  """SASRec+ (causal self-attention, full-softmax CE) on MovieLens-100K, leave-one-out."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "ranking"               # or "ctr" (click prediction), "rating" (regression)

  c.data = ml_collections.ConfigDict()
  c.data.name = "ml-100k"          # a named dataset (data/datasets.py), found or downloaded ...
  c.data.path = ""                 # ... unless this names a local file or folder
  c.data.format = "auto"           # movielens | recbole | sequence | csv | tsv | parquet | lastfm | auto
  # Column names of csv / tsv / parquet files ("" = absent; without a header: "0", "1", ...).
  c.data.columns = ml_collections.ConfigDict()
  c.data.columns.user = "user_id"
  c.data.columns.item = "item_id"
  c.data.columns.time = ""         # "": the file order is the time order
  c.data.columns.rating = ""
  c.data.columns.delimiter = ""    # "": from the extension, else sniffed
  c.data.columns.header = True
  c.data.min_rating = config_dict.placeholder(float)  # keep events rated >= this (None: all)
  c.data.dedupe = ""               # "", "first" or "last": collapse repeated (user, item) pairs
  c.data.user_k = 0                # k-core filter (0: off)
  c.data.item_k = 0
  c.data.split = "leave_one_out"   # or "time" (global time split at quantiles)
  c.data.valid_quantile = 0.8
  c.data.test_quantile = 0.9
  # Set by get_size_aware_config: the data its sizes were measured on (a run on other data is refused).
  c.data.size_aware_for = ""
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
  # Item text for `python -m recattn_jax.embed` (data/item_text.py): a table's columns, else
  # the .item file above, else Last.fm's artist names and tags.
  c.data.item_text_path = ""       # a CSV / TSV / Parquet file with data.columns.item (or a .item file) ...
  c.data.item_text_columns = ""    # ... and these text columns, comma separated
  # A pretrained text encoder ("minilm" or a checkpoint folder) embeds that text into
  # data.text_embeddings_path (cached, recattn_jax/text/embed.py) before training.
  c.data.text_model = ""
  c.data.text_max_length = 64      # tokens kept per item text
  c.data.text_pooling = "mean"     # or "cls"
  # A user context (ranking encoders): what each user's friends interacted with in training.
  c.data.user_friends_path = ""    # headed userID/friendID table, e.g. Last.fm's user_friends.dat
  c.data.friend_items = 50         # most shared friend items kept per user
  # Click and rating tasks.
  c.data.click_threshold = 4.0     # rating >= this is a click (ctr)
  c.data.negatives_per_positive = 1  # sampled non-interactions per event (ctr)
  c.data.with_ratings = False      # give the model the history's ratings too
  c.data.rating_range = (0.5, 5.0)  # rating task: every rating must lie in [low, high]

  # The model: its name and, per registered model, its own fields (defaults: the
  # module's; recattn_jax/models/). Switch with --config.model.name=hstu, tune
  # with --config.model.hstu.num_layers=3.
  c.model = model_config("sasrec")

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32          # rows; packed rows hold ~2 ML-100K users each
  c.train.learning_rate = 1e-3
  # A larger batch with a scaled learning rate: learning_rate is meant for lr_reference_batch
  # rows, and train.batch_size rows use it times B/ref ("linear"), sqrt(B/ref) ("sqrt") or 1 ("none").
  c.train.lr_batch_scaling = "none"
  c.train.lr_reference_batch = 32
  c.train.b1 = 0.9
  c.train.b2 = 0.98
  c.train.weight_decay = 0.1
  c.train.warmup_steps = 0
  c.train.schedule = "constant"    # or "cosine": decay to zero at num_epochs
  c.train.grad_clip = 1.0
  # The loss: its name and, per registered loss, its own fields (training/losses.py).
  c.train.loss = loss_config("softmax")
  c.train.negatives = "all"        # "trained": softmax over items with training events only (cold start)
  c.train.mask_prob = 0.2          # bert4rec cloze masking
  c.train.last_item_prob = 0.0     # bert4rec: share of examples that mask only the last item
  c.train.num_epochs = 80
  c.train.eval_every_epochs = 2
  c.train.patience = 6             # evaluations without improvement before stopping
  c.train.early_stopping_metric = "NDCG@10"
  c.train.log_every_steps = 20
  c.train.num_devices = 0          # 0: every device (of every host)
  # Device mesh (parallel/mesh.py): "data" splits the batch, "model" the item table by rows; -1: the rest.
  c.train.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
  c.train.grad_accum_steps = 1     # micro-batches per step: same update, 1/n of the activations
  # A bundle (or a workdir with one) whose parameters start this run wherever their path and
  # shape match (e.g. a text tower fine-tuned from a frozen-text run); the rest initialise fresh.
  c.train.init_from = ""
  # A regex over parameter paths (e.g. "_lora": the text tower's adapters only): only matching
  # parameters train, the others keep their values ("": every parameter trains).
  c.train.trainable = ""
  c.train.progress_bar = True
  # Where metrics go besides metrics.jsonl (training/trackers.py): "tensorboard", "wandb", "mlflow".
  c.train.trackers = ("tensorboard",)
  c.train.tracking = ml_collections.ConfigDict()
  c.train.tracking.experiment = ""  # W&B project / MLflow experiment ("": "recattn_jax")
  c.train.tracking.run_name = ""    # "": the workdir's folder name
  c.train.tracking.group = ""       # runs compared together, e.g. a tuning study's trials
  c.train.tracking.mlflow_uri = ""  # "": $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db
  c.train.nan_policy = "raise"     # non-finite loss or gradient: "raise" (stop, naming the step) or "skip" the update
  c.train.keep_checkpoints = 2     # `latest` and `best` checkpoints kept, for falling back from a damaged one

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.ks = (1, 10, 50, 200)
  c.eval.exclude_seen = True       # the protocol early stopping and the headline use
  c.eval.ties = "pessimistic"
  c.eval.item_chunk = 4096
  return c


def get_amazon_config(name: str) -> ml_collections.ConfigDict:
  """SASRec+ on one of S3Rec's 5-core Amazon datasets ("amazon-toys", "amazon-sports")."""
  c = get_default_config()
  c.data.name = name
  c.data.format = "sequence"
  c.data.max_len = 50
  for name in ENCODERS.names():
    c.model[name].dropout_rate = 0.5
  c.train.batch_size = 16          # packed rows of ~6 users each
  c.train.weight_decay = 0.0       # decay would shrink rarely-seen items at every step
  c.train.num_epochs = 40
  return c


def get_lastfm_config(friends: bool = False) -> ml_collections.ConfigDict:
  """SASRec+ on Last.fm HetRec 2011; `friends` adds the friend graph as a user context."""
  c = get_default_config()
  c.data.name = "lastfm-hetrec2k"
  c.data.format = "lastfm"
  c.data.max_len = 50
  if friends:
    c.data.user_friends_path = "user_friends.dat"  # in the dataset's folder
    c.data.friend_items = 50
  for name in ENCODERS.names():
    c.model[name].dropout_rate = 0.5
  c.train.batch_size = 32
  c.train.weight_decay = 0.0
  c.train.num_epochs = 60
  return c


# Size-aware defaults. Below this many training events per item, item embeddings are
# seen too rarely for ML-100K's light regularisation (58 events per item there; 5-12 on
# Last.fm, Amazon Toys and Sports): see docs/tuning.md#size-aware-defaults.
SPARSE_EVENTS_PER_ITEM = 30
USERS_PER_STEP = 64   # about what ML-100K's 32 packed rows of 200 hold
MAX_LENS = (50, 100, 200)
MAX_STEPS = 40_000    # caps the epochs of large datasets; early stopping usually ends sooner
SIZE_AWARE_FIELDS = ("data.max_len", "model.*.dropout_rate", "train.weight_decay",
                     "train.batch_size", "train.num_epochs")  # "*": every encoder


def size_aware_values(data: DataProfile) -> dict:
  """The fields that depend on the data's size and sparsity, from its training split.

  - `data.max_len`: the shortest of 50/100/200 that holds 90% of the training histories;
  - dropout and weight decay: ML-100K's .2 / .1 when items have >= 30 training events on
    average, else .5 / 0 (rarely seen items: decay would shrink them at every step);
  - `train.batch_size`: the power of two of packed rows nearest to 64 users per step (16-256);
  - `train.num_epochs`: 80, fewer when 80 epochs would exceed 40,000 steps.
  On ML-100K these are the default job's values.
  """
  p90 = data.history_quantile(0.9)
  max_len = next((n for n in MAX_LENS if n >= p90), MAX_LENS[-1])
  users_per_row = max(1.0, max_len / max(data.mean_history(max_len), 1.0))
  rows = 2 ** round(math.log2(USERS_PER_STEP / users_per_row))
  rows = min(max(rows, 16), 256)
  steps_per_epoch = math.ceil(data.users / (rows * users_per_row))
  sparse = data.events_per_item < SPARSE_EVENTS_PER_ITEM
  epochs = int(min(80, max(10, MAX_STEPS // steps_per_epoch)))
  return dict(zip(SIZE_AWARE_FIELDS, (max_len, 0.5 if sparse else 0.2, 0.0 if sparse else 0.1,
                                      rows, epochs)))


def get_size_aware_config(data: str) -> ml_collections.ConfigDict:
  """The default config for the dataset `data` (a name or a path), sized from its training split.

  `data.size_aware_for` records what was measured, and a run refuses other data.
  """
  c = get_default_config()
  if pathlib.Path(data).expanduser().exists():
    c.data.path = str(pathlib.Path(data).expanduser().absolute())
    c.data.name = pathlib.Path(data).stem
  else:
    c.data.name = data
  c.data.size_aware_for = data_identity(c.data)
  measured = profile(load_split(c.data))
  values = size_aware_values(measured)
  log.info("size-aware defaults for %s %s: %s", c.data.size_aware_for, measured.summary(), values)
  for field, value in values.items():
    if field.startswith("model.*."):
      for name in ENCODERS.names():
        c.model[name][field.removeprefix("model.*.")] = value
    else:
      section, key = field.split(".")
      c[section][key] = value
  return c


def size_aware_fields(config: ml_collections.ConfigDict) -> dict:
  """The values of the fields `size_aware_values` sets, as `config` holds them now."""
  fields = [field.replace("*", config.model.name) for field in SIZE_AWARE_FIELDS]
  return {name: value for field in fields for name, value in _lookup(config, field)}


def data_identity(data_config: ml_collections.ConfigDict) -> str:
  """What `data.size_aware_for` compares: the dataset's path or name, and its format."""
  return f"{data_config.path or data_config.name} ({data_config.format})"


def get_ml100k_pointwise_config(task: str) -> ml_collections.ConfigDict:
  """DIN target attention over the last 50 events, items from id + `ml-100k.item` content."""
  c = get_default_config()
  c.task = task
  c.data.max_len = 50
  c.data.item_features_path = "ml-100k.item"  # in the dataset's folder
  c.model.name = "din"
  for name in POINTWISE_MODELS.names():
    c.model[name].update(embed_dim=64, num_heads=2, ff_dim=256, dropout_rate=0.1,
                         item_representation="both")
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

# A "*" stands for every section: every model's (model.*.x) or every loss's (train.loss.*.x).
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
    "data.text_max_length": _COUNT,
    "data.click_threshold": Range(),
    "data.negatives_per_positive": _NON_NEGATIVE_COUNT,
    "model.*.embed_dim": _COUNT,
    "model.*.num_layers": _NON_NEGATIVE_COUNT,
    "model.*.num_heads": _COUNT,
    "model.*.ff_dim": _COUNT,
    "model.*.dropout_rate": _PROBABILITY,
    "model.*.item_id_dropout": _PROBABILITY,
    "model.*.output_dropout": _PROBABILITY,
    "model.*.head_dropout": _PROBABILITY,
    "model.*.head_blocks": _NON_NEGATIVE_COUNT,
    "model.*.num_position_buckets": _NON_NEGATIVE_COUNT,
    "model.*.num_time_buckets": _NON_NEGATIVE_COUNT,
    "model.*.time_bucket_step": Range(0, low_open=True),
    "model.*.item_text_lora_rank": _NON_NEGATIVE_COUNT,
    "model.*.item_text_lora_layers": _NON_NEGATIVE_COUNT,
    "model.*.item_text_lora_alpha": Range(0, low_open=True),
    "train.batch_size": _COUNT,
    "train.learning_rate": Range(0, low_open=True),
    "train.lr_reference_batch": _COUNT,
    "train.b1": Range(0, 1, high_open=True),
    "train.b2": Range(0, 1, high_open=True),
    "train.weight_decay": Range(0),
    "train.warmup_steps": _NON_NEGATIVE_COUNT,
    "train.grad_clip": Range(0),
    "train.loss.*.num_negatives": _COUNT,
    "train.loss.*.t": Range(0, 1),
    "train.mask_prob": Range(0, 1, low_open=True),
    "train.last_item_prob": Range(0, 1),
    "train.num_epochs": _COUNT,
    "train.eval_every_epochs": Range(0, low_open=True),
    "train.patience": _COUNT,
    "train.log_every_steps": _COUNT,
    "train.num_devices": _NON_NEGATIVE_COUNT,
    "train.grad_accum_steps": _COUNT,
    "train.keep_checkpoints": Range(2, integer=True),
    "eval.batch_size": _COUNT,
    "eval.item_chunk": _COUNT,
}

NAN_POLICIES = ("raise", "skip")
# Other enumerated fields are checked where they are used, also before training.
CHOICES: dict[str, tuple] = {"train.nan_policy": NAN_POLICIES, "data.text_pooling": ("mean", "cls"),
                             "train.lr_batch_scaling": LR_BATCH_SCALINGS}


def _lookup(config: ml_collections.ConfigDict, field: str, prefix: str = "") -> list[tuple[str, object]]:
  """(field, value) of every field `field` names ("*" matches each section); absent ones are skipped."""
  head, _, rest = field.partition(".")
  if head == "*":
    keys = [k for k, v in config.items() if isinstance(v, ml_collections.ConfigDict)]
  else:
    keys = [head] if head in config else []
  found = []
  for key in keys:
    if rest:
      if isinstance(config[key], ml_collections.ConfigDict):
        found += _lookup(config[key], rest, f"{prefix}{key}.")
    else:
      found.append((f"{prefix}{key}", config[key]))
  return found


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every field whose value is out of its range, before any work.

  Fields a config does not have are left to the code that needs them.
  """
  problems = []
  for pattern, allowed in RANGES.items():
    for field, value in _lookup(config, pattern):
      if not allowed.contains(value):
        problems.append(f"{field}={value!r} must be {allowed}")
  for pattern, choices in CHOICES.items():
    for field, value in _lookup(config, pattern):
      if value not in choices:
        problems.append(f"{field}={value!r} must be one of {list(choices)}")
  for field, ks in _lookup(config, "eval.ks"):
    if not ks or not all(_COUNT.contains(k) for k in ks) or len(set(ks)) != len(ks):
      problems.append(f"{field}={ks!r} must be a non-empty list of distinct integers >= 1")
  for field, low_high in _lookup(config, "data.rating_range"):
    if not (len(low_high) == 2 and all(Range().contains(v) for v in low_high)
            and low_high[0] <= low_high[1]):
      problems.append(f"{field}={low_high!r} must be (low, high) with finite low <= high")
  quantiles = [value for _, value in _lookup(config, "data.valid_quantile") + _lookup(config, "data.test_quantile")]
  if len(quantiles) == 2 and all(Range().contains(q) for q in quantiles) and not quantiles[0] < quantiles[1]:
    problems.append(f"data.valid_quantile={quantiles[0]!r} must be below data.test_quantile={quantiles[1]!r}")
  for field, dim in _lookup(config, "model.*.embed_dim"):
    heads_field = field.replace(".embed_dim", ".num_heads")
    heads = dict(_lookup(config, heads_field)).get(heads_field)
    if _COUNT.contains(dim) and _COUNT.contains(heads) and dim % heads:
      problems.append(f"{field}={dim} must be divisible by {heads_field}={heads}")
  for field, targets in _lookup(config, "model.*.item_text_lora_targets"):
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
      problems.append(f"{field}={tuple(targets)!r}: {unknown or 'no layer'} must be among {list(LORA_TARGETS)}")
  for _, names in _lookup(config, "train.trackers"):
    problems += check_trackers(names)
  for field, measured in _lookup(config, "data.size_aware_for"):
    if measured and measured != data_identity(config.data):
      problems.append(f"{field}={measured!r}: the size-aware values were measured on other data "
                      f"than {data_identity(config.data)!r}; use --config <config>:<this data> to "
                      f"size them for it, or set {field}='' to keep them")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
