"""The batch loss and the predict step of the pointwise tasks ("ctr", "rating").

Batches are dicts of arrays from `data.ctr.batches`: users [B], history [B, L],
items [B], labels [B], weight [B] (0 for padding rows) and, when the model
uses them, history_ratings [B, L]. The loss is the weighted mean of sigmoid
binary cross-entropy on click logits ("ctr") or of the squared error of
ratings ("rating"). With a mesh the batch is split over its "data" axis and the
state replicated, as in `steps.make_train_step`.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from recattn_jax.data.ctr import batches
from recattn_jax.evaluation.ctr import ctr_metrics, rating_metrics
from recattn_jax.parallel import batch_sharding, fetch
from recattn_jax.training.steps import shard_batch

TASKS = ("ctr", "rating")


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def model_inputs(batch: dict) -> tuple:
  """The model's positional arguments from a batch."""
  return batch["users"], batch["history"], batch["items"], batch.get("history_ratings")


def pointwise_loss(task: str, outputs: jax.Array, labels: jax.Array,
                   weight: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Weighted mean BCE-with-logits ("ctr") or squared error ("rating"), and metrics."""
  _check_task(task)
  outputs = outputs.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  weight = jnp.ones_like(labels) if weight is None else weight.astype(jnp.float32)
  if task == "ctr":
    per_example = optax.sigmoid_binary_cross_entropy(outputs, labels)
  else:
    per_example = jnp.square(outputs - labels)
  count = jnp.sum(weight)
  loss = jnp.sum(per_example * weight) / jnp.where(count > 0, count, 1.0)
  return loss, {"loss": loss, "examples": count}


def batch_loss(model: nn.Module, task: str):
  """(params, batch, rng) -> (loss, metrics): the task's loss with dropout drawn from `rng`."""
  _check_task(task)

  def loss(params, batch, rng):
    outputs = model.apply(params, *model_inputs(batch), deterministic=False, rngs={"dropout": rng})
    return pointwise_loss(task, outputs, batch["labels"], batch.get("weight"))
  return loss


def init_params(model: nn.Module, example_batch: dict):
  """`key -> variables` from one example batch (only its shapes matter), for `steps.init_state`."""
  example = jax.tree.map(lambda x: jnp.zeros_like(x[:1]), dict(example_batch))
  return lambda key: model.init(key, *model_inputs(example))


def make_predict_step(model: nn.Module, task: str, *, mesh: Mesh | None = None
                      ) -> Callable[[object, dict], jax.Array]:
  """Jitted (params, batch) -> [B] click probabilities ("ctr") or ratings ("rating")."""
  _check_task(task)

  def predict_step(params, batch):
    outputs = model.apply(params, *model_inputs(batch), deterministic=True)
    return jax.nn.sigmoid(outputs) if task == "ctr" else outputs

  if mesh is None:
    return jax.jit(predict_step)
  jitted = jax.jit(predict_step, in_shardings=(None, batch_sharding(mesh)))
  # A numpy batch every process holds in; the predictions, whole, out on every process.
  return lambda params, batch: fetch(jitted(params, shard_batch(batch, mesh)))


def _without_labels(arrays: dict) -> dict:
  return {k: v for k, v in arrays.items() if k != "labels"}


def predict(predict_step: Callable, params, arrays: dict, batch_size: int) -> np.ndarray:
  """Predictions for every row of `arrays` (as from `PointwiseSet.arrays()`), in order."""
  out = []
  for batch in batches(_without_labels(arrays), batch_size):
    real = batch.pop("weight") > 0
    out.append(np.asarray(predict_step(params, batch))[real])
  return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate(predict_step: Callable, params, arrays: dict, task: str,
             batch_size: int) -> dict[str, float]:
  """AUC, GAUC and LogLoss ("ctr") or RMSE and MAE ("rating") on `arrays`."""
  _check_task(task)
  preds = predict(predict_step, params, arrays, batch_size)
  if task == "ctr":
    return ctr_metrics(arrays["users"], arrays["labels"], preds)
  return rating_metrics(arrays["labels"], preds)
