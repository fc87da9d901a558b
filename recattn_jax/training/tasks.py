"""What each task brings to the shared training loop: data, model, state, steps and evaluation.

Tasks are registered in `TASKS` by the name `config.task` gives:
  * "ranking": next-item prediction over the whole catalogue with a sequence
    encoder (any registered in `models.ENCODERS`; its registration says whether
    it trains causally or by cloze and which batch keys it reads), any
    registered `train.loss`, and full-ranking HR/NDCG/MRR@K under both
    protocols, plus beyond-accuracy metrics and a popularity baseline;
  * "ctr": click prediction (DIN/BST target attention), AUC/GAUC/LogLoss;
  * "rating": rating regression with the same models, RMSE/MAE.
Each builds a `Job` in three phases, data, model and training, then
evaluation; every task trains through the one `steps.make_train_step`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import pathlib
import re
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from recattn_jax.data.ctr import build_pointwise_data
from recattn_jax.data.item_text import item_texts
from recattn_jax.data.features import ItemFeatures, load_item_features
from recattn_jax.data.loading import (load_interactions, load_split, load_split_features,
                                      load_user_profiles, resolve_paths)
from recattn_jax.data.pipeline import eval_batches, process_share, rows_per_pass, train_dataset
from recattn_jax.data.preprocess import Split
from recattn_jax.data.social import UserProfiles
from recattn_jax.evaluation import metrics_from_ranks, target_ranks
from recattn_jax.evaluation.beyond import beyond_accuracy_report, item_popularity
from recattn_jax.evaluation.ctr import ctr_metrics, item_mean_baseline, rating_metrics
from recattn_jax.models import build_encoder, build_pointwise_model, encoder_spec, init_encoder
from recattn_jax.models.text_tower import frozen_text_weights, insert_pretrained
from recattn_jax.parallel import MODEL_AXIS, fetch, process_rows
from recattn_jax.registry import Registry
from recattn_jax.text import load_pretrained
from recattn_jax.text.bert import freeze
from recattn_jax.text.embed import cached_embeddings
from recattn_jax.text.get_model import MODELS as TEXT_MODELS, fetch_model
from recattn_jax.training import pointwise_task
from recattn_jax.training.bundle import BundleData, init_from_bundle
from recattn_jax.training.losses import LOSSES, next_item_loss_fn
from recattn_jax.training.steps import (TrainState, init_state, make_catalogue_step,
                                        make_optimizer, make_rank_step, make_top_k_step,
                                        make_train_step, next_item_loss, shard_batch)
from recattn_jax.training.workdir import content_digest

log = logging.getLogger(__name__)
TASKS = Registry("task", "task")
PROTOCOLS = {True: "seen_excluded", False: "all_items"}
LOWER_IS_BETTER = ("RMSE", "MAE", "LogLoss")
POINTWISE_METRICS = {"ctr": ("AUC", "GAUC", "LogLoss"), "rating": ("RMSE", "MAE")}
# The data pipeline's name for each encoder objective.
_PIPELINE_OBJECTIVE = {"causal": "next_item", "cloze": "cloze"}


@dataclasses.dataclass
class Job:
  """One task, built and ready for `loop.train_and_evaluate`."""

  state: TrainState
  data_iter: Any  # a checkpointable Grain iterator of training batches
  make_train_step: Callable[[TrainState], Callable]
  steps_per_epoch: int
  total_steps: int
  evaluate: Callable[[Any, str], dict]  # (params, "valid" | "test") -> {protocol: {metric: value}}
  primary: str  # the protocol whose `train.early_stopping_metric` decides
  stats: dict
  data_digest: str  # SHA256 of the processed data, for the run's identity
  data_files: list[str]  # the files and folders read
  report: Callable[[Any], dict] = lambda params: {}  # extra final results of the best params
  bundle_data: BundleData | None = None  # what a served model needs besides config and params


def higher_is_better(metric: str) -> bool:
  return metric not in LOWER_IS_BETTER


def _ranking_metrics(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(f"{name}@{k}" for name in ("HR", "NDCG", "MRR") for k in config.eval.ks)


def _check_early_stopping_metric(config: ml_collections.ConfigDict, task: str) -> None:
  """Fails before training, not at the first evaluation, on a metric the task never reports."""
  metric = config.train.early_stopping_metric
  known = TASKS.spec(task)["metrics"](config)
  if metric not in known:
    raise ValueError(f"train.early_stopping_metric={metric!r} is not a metric of task={task!r}; "
                     f"choose one of {list(known)}")


def _data_files(data_config: ml_collections.ConfigDict) -> list[str]:
  """Every file a (resolved) `data` section reads: the interactions and the `*_path` fields."""
  return [value for key, value in data_config.items()
          if (key == "path" or key.endswith("_path")) and value]


def build_job(config: ml_collections.ConfigDict, mesh: Mesh) -> Job:
  """The job of the task `config.task` names (registered in TASKS with the metrics it reports)."""
  build = TASKS.get(config.task)
  _check_early_stopping_metric(config, config.task)
  return build(config, mesh)


def _training_schedule(config: ml_collections.ConfigDict, rows: int, *, drop_remainder: bool):
  """(steps per epoch, total steps, optimizer) for `rows` training rows a pass."""
  steps_per_epoch = (max(1, rows // config.train.batch_size) if drop_remainder
                     else math.ceil(rows / config.train.batch_size))
  total_steps = config.train.num_epochs * steps_per_epoch
  return steps_per_epoch, total_steps, make_optimizer(config.train, total_steps)


# ----------------------------------------------------------------------------
# Next-item ranking.


@dataclasses.dataclass
class RankingData:
  split: Split
  item_features: ItemFeatures | None
  user_profiles: UserProfiles | None
  text_weights: Any = None  # the pretrained text encoder's weights, for a text tower


@dataclasses.dataclass
class ItemText:
  """The items' texts and the pretrained encoder `data.text_model` names."""

  texts: list[str]
  stats: dict
  model: Any  # text.Pretrained


def _ranking_data(data_config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict
                  ) -> tuple[RankingData, ml_collections.ConfigDict]:
  """The split and its features, and `data_config` naming the text embeddings it used."""
  split = load_split(data_config)
  text = item_text(data_config, split)
  data_config = with_text_embeddings(data_config, split, text)
  features = load_split_features(data_config, split)
  lora_rank = model_config.get(model_config.name, {}).get("item_text_lora_rank", 0)
  if lora_rank:
    if text is None:
      raise ValueError(f"model.{model_config.name}.item_text_lora_rank={lora_rank} fine-tunes the "
                       "text encoder data.text_model names; set data.text_model (e.g. 'minilm')")
    features = with_text_tokens(features, text, data_config)
  return RankingData(split, features, load_user_profiles(data_config, split),
                     text.model.params if lora_rank else None), data_config


def with_text_tokens(features: ItemFeatures, text: ItemText,
                     data_config: ml_collections.ConfigDict) -> ItemFeatures:
  """`features` with the items' token ids and the encoder's settings, for a text tower."""
  tokens = text.model.tokenize(text.texts, data_config.text_max_length)[0]
  tokens[0] = 0  # the padding row has no text
  settings = {"bert": dataclasses.asdict(text.model.config), "pooling": data_config.text_pooling}
  return dataclasses.replace(features, text_tokens=tokens, text_encoder=settings)


def item_text(data_config: ml_collections.ConfigDict, split: Split) -> ItemText | None:
  """`data.text_model` set: the items' texts (row 0 = padding) and the loaded encoder."""
  name = data_config.get("text_model", "")
  if not name:
    return None
  texts, stats = item_texts(data_config, split.item_ids)
  model = load_pretrained(fetch_model(name) if name in TEXT_MODELS else pathlib.Path(name))
  return ItemText(texts, stats, model)


def with_text_embeddings(data_config: ml_collections.ConfigDict, split: Split,
                         text: ItemText | None = None) -> ml_collections.ConfigDict:
  """`data.text_model` set: the items' text embedded (once, cached) and named as text_embeddings_path.

  The cache file is keyed by the checkpoint, the texts and the settings
  (`text.embed.cached_embeddings`), so a change to any of them embeds again and
  the run identity sees another file.
  """
  if data_config.text_embeddings_path:
    return data_config
  text = text or item_text(data_config, split)
  if text is None:
    return data_config
  path = cached_embeddings(text.model, list(split.item_ids[1:]), text.texts[1:],
                           max_length=data_config.text_max_length, pooling=data_config.text_pooling)
  log.info("item text embeddings (%d items without text): %s", text.stats["items_without_text"], path)
  resolved = ml_collections.ConfigDict(data_config.to_dict())
  resolved.text_embeddings_path = str(path)
  resolved.text_embeddings_ids_path = ""
  return resolved


def _ranking_loss(config: ml_collections.ConfigDict, popularity: np.ndarray, *, sharded: bool,
                  text_tower: bool = False):
  """The configured loss, and the items it may rank over (`train.negatives`)."""
  name = config.train.loss.name
  loss_fn = next_item_loss_fn(name, **config.train.loss.get(name, {}))
  if text_tower and not LOSSES.spec(name).get("candidates"):
    raise ValueError(f"model.{config.model.name}.item_text_lora_rank > 0: the text tower runs on "
                     f"a step's candidates only; set train.loss.name='mixed_softmax' (not {name!r})")
  if sharded and (not LOSSES.spec(name).get("item_mask") or LOSSES.spec(name).get("candidates")):
    raise ValueError(f"train.loss.name={name!r} does not run on an item table split over "
                     "train.mesh.model > 1 devices yet; use 'softmax' (the full softmax is "
                     "computed per shard) or train.mesh.model=1")
  if config.train.negatives not in ("all", "trained"):
    raise ValueError(f"train.negatives must be 'all' or 'trained', got {config.train.negatives!r}")
  if config.train.negatives == "all":
    return loss_fn, None
  if not LOSSES.spec(name).get("item_mask"):
    raise ValueError(f"train.negatives='trained' needs a loss registered with item_mask=True "
                     f"(e.g. 'softmax'), not train.loss.name={name!r}")
  return loss_fn, popularity > 0  # items that arrive after training could not have been negatives


def _ranking_state(config: ml_collections.ConfigDict, model, optimizer, data: RankingData,
                   mesh: Mesh) -> tuple[TrainState, Any, dict]:
  """(initial state, the optimizer with frozen parameters masked, stats of what was loaded).

  A text tower gets its pretrained weights (frozen), `train.trainable`
  freezes what it does not match, `train.init_from` brings a bundle's parameters.
  """
  stats = dict(data.split.stats)
  init_params = functools.partial(init_encoder, model, max_len=model.max_len)
  if model.has_text_tower or config.train.trainable:
    frozen = functools.partial(frozen_parameters, trainable=config.train.trainable)
    if all(jax.tree.leaves(frozen(jax.eval_shape(init_params, jax.random.PRNGKey(0))))):
      raise ValueError(f"train.trainable={config.train.trainable!r} matches no parameter that "
                       "can train (paths look like \"['params']['item_embed']['embedding']\")")
    optimizer = freeze(optimizer, frozen)
  state = init_state(init_params, optimizer, seed=config.seed, mesh=mesh)
  if model.has_text_tower:
    state = state.replace(params=insert_pretrained(state.params, data.text_weights))
    stats["text_tower"] = text_tower_sizes(state.params, config.train.trainable)
    log.info("text tower: %s", stats["text_tower"])
  if config.train.init_from:
    params, stats["init_from"] = init_from_bundle(state.params, config.train.init_from,
                                                  data.split.item_ids)
    state = state.replace(params=params)
    log.info("initialised from %s: %d parameter arrays taken, new: %s", config.train.init_from,
             stats["init_from"]["taken_leaves"], stats["init_from"]["fresh_leaves"])
  return state, optimizer, stats


@TASKS.register("ranking", metrics=_ranking_metrics)
def ranking_job(config: ml_collections.ConfigDict, mesh: Mesh) -> Job:
  data, data_config = _ranking_data(resolve_paths(config.data), config.model)
  split, max_len = data.split, data_config.max_len

  # The model, and what it reads and trains with.
  model = build_encoder(config.model, num_items=split.num_items, max_len=max_len,
                        item_features=data.item_features, user_profiles=data.user_profiles)
  spec = encoder_spec(config.model.name)
  objective = _PIPELINE_OBJECTIVE[spec["objective"]]
  timestamps = "timestamps" in spec["batch_keys"]
  with_users = data.user_profiles is not None

  # Training: the loss, the schedule, the state and the pipeline.
  popularity = item_popularity(split.train, split.num_items)
  sharded = mesh.shape[MODEL_AXIS] > 1
  loss_fn, item_mask = _ranking_loss(config, popularity, sharded=sharded,
                                     text_tower=model.has_text_tower)
  rows = rows_per_pass(split.train, max_len=max_len, seed=config.seed, pack=config.data.pack,
                       all_windows=config.data.all_windows, objective=objective)
  steps_per_epoch, total_steps, optimizer = _training_schedule(config, rows, drop_remainder=False)
  state, optimizer, stats = _ranking_state(config, model, optimizer, data, mesh)
  data_iter = iter(train_dataset(
      split.train, max_len=max_len, batch_size=config.train.batch_size, seed=config.seed,
      padding=config.data.padding, pack=config.data.pack, all_windows=config.data.all_windows,
      prefetch=config.data.prefetch, objective=objective, mask_prob=config.train.mask_prob,
      mask_id=model.mask_id, last_item_prob=config.train.last_item_prob,
      timestamps=split.train_timestamps if timestamps else None,
      users=split.train_users if with_users else None,
      rows=process_rows(mesh, config.train.batch_size)))

  # Evaluation: full ranking of both protocols, beyond-accuracy lists, the baseline.
  catalogue_step = make_catalogue_step(model, mesh)
  rank_step = make_rank_step(model, mesh, item_chunk=config.eval.item_chunk, ties=config.eval.ties)

  def batches_of(eval_set):
    return eval_batches(eval_set.histories, eval_set.targets, max_len=max_len,
                        batch_size=config.eval.batch_size, padding=config.data.padding,
                        append_mask_id=model.mask_id,
                        timestamps=eval_set.history_timestamps if timestamps else None,
                        users=eval_set.users if with_users else None)

  def evaluate(params, which: str) -> dict:
    ranks = {True: [], False: []}
    table = catalogue_step(params)
    for batch in batches_of(getattr(split, which)):
      rows = int(batch["weight"].sum())
      excluded, everything = rank_step(params, table, shard_batch(batch, mesh))
      ranks[True].append(fetch(excluded)[:rows])
      ranks[False].append(fetch(everything)[:rows])
    return {PROTOCOLS[flag]: metrics_from_ranks(np.concatenate(r), tuple(config.eval.ks))
            for flag, r in ranks.items()}

  def report(params) -> dict:
    """Beyond-accuracy metrics of the test top-K lists, and the popularity baseline."""
    top_k_step = make_top_k_step(model, mesh, k=max(config.eval.ks), item_chunk=config.eval.item_chunk)
    lists, table = [], catalogue_step(params)
    for batch in batches_of(split.test):
      rows = int(batch["weight"].sum())
      lists.append(fetch(top_k_step(params, table, shard_batch(batch, mesh)))[:rows])
    beyond = beyond_accuracy_report(np.concatenate(lists), split.test.targets, popularity,
                                    ks=tuple(k for k in config.eval.ks if k > 1))
    return {"beyond_accuracy": beyond,
            "popularity_baseline": popularity_baseline(split.test, popularity, config)}

  digest = content_digest(split.item_ids, split.user_ids, split.train, split.train_users,
                          split.train_timestamps if timestamps else None,
                          *(part for eval_set in (split.valid, split.test)
                            for part in (eval_set.users, eval_set.targets, eval_set.histories)))
  return Job(state=state, data_iter=data_iter,
             make_train_step=lambda s: make_train_step(next_item_loss(model, loss_fn, item_mask,
                                                                      padded=sharded),
                                                       optimizer, mesh, s,
                                                       accum_steps=config.train.grad_accum_steps),
             steps_per_epoch=steps_per_epoch, total_steps=total_steps, evaluate=evaluate,
             primary=PROTOCOLS[config.eval.exclude_seen], stats=stats, report=report,
             data_digest=digest, data_files=_data_files(data_config),
             bundle_data=BundleData(
                 item_ids=split.item_ids, user_ids=split.user_ids, popularity=popularity,
                 histories=split.sequences,
                 history_timestamps=split.sequence_timestamps if timestamps else None,
                 item_features=data.item_features, user_profiles=data.user_profiles,
                 stats=split.stats))


def frozen_parameters(params, trainable: str = ""):
  """True at the parameters that never train: the text tower's pretrained weights, and with
  `trainable` (a regex, `train.trainable`) every parameter whose path it does not match."""
  try:
    pattern = re.compile(trainable) if trainable else None
  except re.error as e:
    raise ValueError(f"train.trainable={trainable!r} is not a regular expression: {e}") from e
  frozen = frozen_text_weights(params)
  if pattern is None:
    return frozen
  return jax.tree_util.tree_map_with_path(
      lambda path, is_frozen: is_frozen or not pattern.search(jax.tree_util.keystr(path)), frozen)


def text_tower_sizes(params, trainable: str = "") -> dict:
  """Parameter counts: the text tower's adapters and pretrained weights, all trainable ones."""
  counts = {"adapter_params": 0, "pretrained_params": 0, "trainable_params": 0}
  for (path, leaf), pretrained, frozen in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(frozen_text_weights(params)),
      jax.tree.leaves(frozen_parameters(params, trainable))):
    size = int(np.prod(leaf.shape))
    name = jax.tree_util.keystr(path)
    counts["pretrained_params"] += size * pretrained
    counts["trainable_params"] += size * (not frozen)
    counts["adapter_params"] += size * ("text_tower" in name and "_lora" in name)
  return counts


def popularity_baseline(eval_set, popularity: np.ndarray, config) -> dict:
  """Both protocols' metrics of ranking every user's items by training popularity.

  A one-dimensional "user" of 1 against a table of counts ranks by popularity
  with the same tie rule and exclusion as the models.
  """
  table = jnp.asarray(popularity, jnp.float32)[:, None].at[0].set(0.0)
  out = {}
  for exclude, protocol in PROTOCOLS.items():
    ranks = []
    for batch in eval_batches(eval_set.histories, eval_set.targets, max_len=1,
                              batch_size=config.eval.batch_size):
      rows = int(batch["weight"].sum())
      users = jnp.ones((len(batch["targets"]), 1), jnp.float32)
      ranks.append(np.asarray(target_ranks(
          users, table, batch["targets"], batch["exclude"] if exclude else None,
          item_chunk=config.eval.item_chunk, ties=config.eval.ties))[:rows])
    out[protocol] = metrics_from_ranks(np.concatenate(ranks), tuple(config.eval.ks))
  return out


# ----------------------------------------------------------------------------
# Click and rating prediction.


def _pointwise_batches(arrays: dict, *, batch_size: int, seed: int,
                       rows: slice | None = None) -> grain.MapDataset:
  """Endless shuffled full batches (this process's `rows` of each); each pass is a fresh permutation."""
  size = len(arrays["labels"])
  if size < batch_size:
    raise ValueError(f"train.batch_size={batch_size} exceeds the {size} training examples")

  def example(index):
    row = {key: value[index] for key, value in arrays.items()}
    row["weight"] = np.float32(1.0)
    return row

  return process_share(grain.MapDataset.range(size).shuffle(seed=seed).repeat().map(example),
                       batch_size, rows)


def _check_pointwise_data_config(data_config: ml_collections.ConfigDict, task: str) -> None:
  """The click/rating examples are built from every rated event, split in time per user."""
  unsupported = {"data.split": data_config.split != "leave_one_out",
                 "data.min_rating": data_config.min_rating is not None,
                 "data.dedupe": bool(data_config.dedupe),
                 "data.user_k": bool(data_config.user_k), "data.item_k": bool(data_config.item_k),
                 "data.user_friends_path": bool(data_config.user_friends_path)}
  for field, used in unsupported.items():
    if used:
      raise ValueError(f"{field} is not supported by task={task!r} (leave it at its default)")


def pointwise_job(config: ml_collections.ConfigDict, mesh: Mesh, task: str) -> Job:
  _check_pointwise_data_config(config.data, task)
  if config.train.init_from:
    raise ValueError(f"train.init_from is supported by task='ranking' only, not {task!r}")
  data_config = resolve_paths(config.data)
  frame, path = load_interactions(data_config)
  if task == "rating":
    check_rating_range(frame, path, tuple(data_config.rating_range))
  data = build_pointwise_data(
      frame, task, max_len=data_config.max_len, threshold=data_config.click_threshold,
      negatives_per_positive=data_config.negatives_per_positive,
      with_ratings=data_config.with_ratings, seed=config.seed)
  data.stats["source"] = str(path)
  # Any item in a training example (clicked, not clicked or sampled) gets its id row trained.
  item_features = load_item_features(data_config, data.item_ids, train=[data.train.items])

  model = build_pointwise_model(config.model, task=task, num_items=data.num_items,
                                num_users=data.num_users, max_len=data_config.max_len,
                                global_mean=float(data.stats.get("train_label_mean", 0.0)),
                                item_features=item_features)

  train_arrays = data.train.arrays()
  steps_per_epoch, total_steps, optimizer = _training_schedule(config, len(data.train),
                                                               drop_remainder=True)
  example = {key: value[:1] for key, value in train_arrays.items()}
  state = init_state(pointwise_task.init_params(model, example), optimizer, seed=config.seed,
                     mesh=mesh)
  data_iter = iter(_pointwise_batches(train_arrays, batch_size=config.train.batch_size,
                                      seed=config.seed,
                                      rows=process_rows(mesh, config.train.batch_size)))

  predict_step = pointwise_task.make_predict_step(model, task, mesh=mesh)

  def evaluate(params, which: str) -> dict:
    arrays = getattr(data, which).arrays()
    return {task: pointwise_task.evaluate(predict_step, params, arrays, task, config.eval.batch_size)}

  def report(params) -> dict:
    """The smoothed item-mean (click-rate or rating) baseline on the test set."""
    baseline = item_mean_baseline(data.train.items, data.train.labels, data.num_items)
    test = data.test.arrays()
    preds = baseline[test["items"]]
    metrics = (ctr_metrics(test["users"], test["labels"], preds) if task == "ctr"
               else rating_metrics(test["labels"], preds))
    return {"item_mean_baseline": {task: metrics}}

  digest = content_digest(data.user_ids, data.item_ids, *(
      array for part in (data.train, data.valid, data.test) for array in part.arrays().values()))
  return Job(state=state, data_iter=data_iter,
             make_train_step=lambda s: make_train_step(pointwise_task.batch_loss(model, task),
                                                       optimizer, mesh, s,
                                                       accum_steps=config.train.grad_accum_steps),
             steps_per_epoch=steps_per_epoch, total_steps=total_steps, evaluate=evaluate,
             primary=task, stats=data.stats, report=report, data_digest=digest,
             data_files=_data_files(data_config),
             bundle_data=BundleData(
                 item_ids=data.item_ids, user_ids=data.user_ids,
                 popularity=np.bincount(data.train.items[~data.train.sampled],
                                        minlength=data.num_items + 1),
                 histories=data.sequences, history_ratings=data.sequence_ratings,
                 item_features=item_features, stats=data.stats))


for _task, _metrics in POINTWISE_METRICS.items():
  TASKS.register(_task, metrics=lambda config, metrics=_metrics: metrics)(
      functools.partial(pointwise_job, task=_task))


def check_rating_range(frame, path, rating_range: tuple[float, float]) -> None:
  """Every rating is a finite number in `data.rating_range`; else ValueError naming the file."""
  if "rating" not in frame:
    raise ValueError(f"{path}: task='rating' needs a rating column, the file has {list(frame.columns)}")
  ratings = frame["rating"].to_numpy(np.float64)
  low, high = rating_range
  bad = ~np.isfinite(ratings) | (ratings < low) | (ratings > high)
  if bad.any():
    first = frame[bad].iloc[0]
    finite = ratings[np.isfinite(ratings)]
    observed = f"[{finite.min():g}, {finite.max():g}]" if len(finite) else "none finite"
    raise ValueError(
        f"{path}: {int(bad.sum())} of {len(ratings)} ratings lie outside data.rating_range="
        f"({low:g}, {high:g}) or are not finite (observed range {observed}; first: user "
        f"{first['user_id']!r}, item {first['item_id']!r}, rating {first['rating']!r}). "
        "Set data.rating_range to the file's rating scale, or fix the file.")
