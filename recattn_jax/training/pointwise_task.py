"""Train and predict steps for the pointwise tasks ("ctr", "rating").

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recattn_jax.data.ctr import batches
from recattn_jax.evaluation.ctr import ctr_metrics, rating_metrics
from recattn_jax.training.steps import DATA_AXIS, TrainState, apply_gradients

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


def init_pointwise_state(model: nn.Module, optimizer: optax.GradientTransformation,
                         example_batch: dict, *, seed: int, mesh: Mesh | None = None) -> TrainState:
  """Parameters from one example batch (only its shapes matter), replicated over `mesh`."""
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  example = jax.tree.map(lambda x: jnp.zeros_like(x[:1]), dict(example_batch))

  def init(key):
    return TrainState.create(model.init(key, *model_inputs(example)), optimizer, dropout_key)

  if mesh is None:
    return jax.jit(init)(init_key)
  abstract = jax.eval_shape(init, init_key)
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract)
  return jax.jit(init, out_shardings=shardings)(init_key)


def make_pointwise_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                              task: str, *, mesh: Mesh | None = None
                              ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Jitted (state, batch) -> (state, metrics); the state buffer is donated."""
  _check_task(task)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    dropout_key = jax.random.fold_in(state.dropout_key, state.step)

    def loss_fn(params):
      outputs = model.apply(params, *model_inputs(batch), deterministic=False,
                            rngs={"dropout": dropout_key})
      return pointwise_loss(task, outputs, batch["labels"], batch.get("weight"))

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads, metrics, optimizer)

  if mesh is None:
    return jax.jit(train_step, donate_argnums=0)
  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, in_shardings=(replicated, NamedSharding(mesh, P(DATA_AXIS))),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_predict_step(model: nn.Module, task: str, *, mesh: Mesh | None = None
                      ) -> Callable[[object, dict], jax.Array]:
  """Jitted (params, batch) -> [B] click probabilities ("ctr") or ratings ("rating")."""
  _check_task(task)

  def predict_step(params, batch):
    outputs = model.apply(params, *model_inputs(batch), deterministic=True)
    return jax.nn.sigmoid(outputs) if task == "ctr" else outputs

  if mesh is None:
    return jax.jit(predict_step)
  return jax.jit(predict_step, in_shardings=(None, NamedSharding(mesh, P(DATA_AXIS))))


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


def train_epochs(train_step: Callable, state: TrainState, arrays: dict, *, batch_size: int,
                 num_epochs: int, seed: int = 0,
                 on_step: Callable[[int, dict], None] | None = None) -> TrainState:
  """Shuffled epochs of full batches (the remainder is dropped, so shapes never change)."""
  for epoch in range(num_epochs):
    for batch in batches(arrays, batch_size, shuffle=True, seed=seed + epoch, drop_remainder=True):
      state, metrics = train_step(state, batch)
      if on_step is not None:
        on_step(int(state.step), metrics)
  return state
