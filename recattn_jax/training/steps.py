"""Train state, the jitted data-parallel train step and the jitted ranking step.

Everything here is a pure function of its arguments; sharding is declared, not
hand-coded: the batch is split over the mesh's "data" axis and the state is
replicated, and XLA inserts the gradient all-reduce.

A step whose loss or gradient norm is not finite leaves the parameters and the
optimizer state as they were and is counted in the state (`nonfinite_steps`,
`first_nonfinite_step`), so a diverging batch never poisons the model and the
host can stop, or go on, without syncing on every step.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recattn_jax.evaluation import target_ranks
from recattn_jax.evaluation.topk import top_k_items
from recattn_jax.models.scoring import encode, scoring_inputs, user_vectors
from recattn_jax.training.losses import LossFn, next_item_loss_fn

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  dropout_key: jax.Array
  nonfinite_steps: jax.Array  # steps whose update was not applied (non-finite loss or gradient)
  first_nonfinite_step: jax.Array  # the first such step (numbered as after it, like `step`); -1: none

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation, dropout_key: jax.Array) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
               dropout_key=dropout_key, nonfinite_steps=jnp.zeros((), jnp.int32),
               first_nonfinite_step=jnp.full((), -1, jnp.int32))


def apply_gradients(state: TrainState, grads, metrics: dict,
                    optimizer: optax.GradientTransformation) -> tuple[TrainState, dict]:
  """The optimizer update, applied only when the loss and the gradient norm are finite."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  step = state.step + 1
  state = state.replace(
      step=step, params=keep_if_finite(params, state.params),
      opt_state=keep_if_finite(opt_state, state.opt_state),
      nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where(~finite & (state.first_nonfinite_step < 0), step,
                                     state.first_nonfinite_step))
  return state, {**metrics, "grad_norm": grad_norm, "nonfinite_steps": state.nonfinite_steps,
                 "first_nonfinite_step": state.first_nonfinite_step}


def make_mesh(num_devices: int | None = None) -> Mesh:
  """1-D data-parallel mesh over the first `num_devices` local devices (all by default)."""
  devices = jax.local_devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"train.num_devices={num_devices} but only {len(devices)} devices are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def learning_rate_schedule(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up, then constant or cosine decay to zero at `total_steps`."""
  peak = train_config.learning_rate
  warmup = min(train_config.warmup_steps, max(total_steps - 1, 0))
  if train_config.schedule == "constant":
    return optax.warmup_constant_schedule(0.0 if warmup else peak, peak, max(warmup, 1))
  if train_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else peak, peak, max(warmup, 1),
                                              max(total_steps, warmup + 1))
  raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {train_config.schedule!r}")


def make_optimizer(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_config, total_steps)
  return optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip) if train_config.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=train_config.b1, b2=train_config.b2,
                  weight_decay=train_config.weight_decay),
  )


def init_state(init_params: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
               *, seed: int, mesh: Mesh) -> TrainState:
  """Shapes first, then shardings, then one jitted initialisation straight into place.

  `init_params(key)` returns the model's variables (e.g. `model.init` on a dummy batch).
  """
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))

  def init(key):
    return TrainState.create(init_params(key), optimizer, dropout_key)

  abstract = jax.eval_shape(init, init_key)
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract)
  return jax.jit(init, out_shardings=shardings)(init_key)


# (params, batch, rng) -> (loss, metrics with "loss" and "events" or "examples")
BatchLoss = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def next_item_loss(model: nn.Module, loss_fn: LossFn | None = None,
                   item_mask: jax.Array | None = None) -> BatchLoss:
  """The ranking task's batch loss: `loss_fn` (default: full-softmax CE) at every target.

  Targets are the next items (causal encoders) or the masked ones (cloze).
  `item_mask` [N + 1]: the items the softmax ranges over (None: all).
  """
  loss_fn = loss_fn or next_item_loss_fn("softmax")

  def batch_loss(params, batch, rng):
    dropout_key, table_key, sample_key = jax.random.split(rng, 3)
    hidden = encode(model, params, batch, deterministic=False, rngs={"dropout": dropout_key})
    hidden, table = scoring_inputs(model, params, hidden, deterministic=False,
                                   rngs={"dropout": table_key})
    return loss_fn(hidden, table, batch["targets"], sample_key, item_mask)
  return batch_loss


def make_train_step(batch_loss: BatchLoss, optimizer: optax.GradientTransformation, mesh: Mesh,
                    state: TrainState) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The one train step of every task: jitted (state, batch) -> (state, metrics), state donated.

  Each step's rng is the state's dropout key folded with the step number, so a
  resumed run draws what an uninterrupted one would.
  """
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  replicated = NamedSharding(mesh, P())

  # One trace per run: a second one means batch shapes or dtypes changed (a silent recompile).
  chex.clear_trace_counter()

  @chex.assert_max_traces(n=1)
  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.dropout_key, state.step)
    grads, metrics = jax.grad(lambda p: batch_loss(p, batch, rng), has_aux=True)(state.params)
    return apply_gradients(state, grads, metrics, optimizer)

  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)


def make_rank_step(model: nn.Module, mesh: Mesh, *, item_chunk: int, ties: str) -> Callable:
  """(params, batch) -> ranks with the user's seen items excluded and with all items."""
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  def rank_step(params, batch):
    users, table = scoring_inputs(model, params, user_vectors(model, params, batch))
    kwargs = dict(item_chunk=item_chunk, ties=ties)
    return (target_ranks(users, table, batch["targets"], batch["exclude"], **kwargs),
            target_ranks(users, table, batch["targets"], None, **kwargs))

  return jax.jit(rank_step, in_shardings=(None, batch_sharding))


def make_top_k_step(model: nn.Module, mesh: Mesh, *, k: int, item_chunk: int) -> Callable:
  """(params, batch) -> the top-`k` item ids [B, k] with the user's seen items excluded."""
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  def top_k_step(params, batch):
    users, table = scoring_inputs(model, params, user_vectors(model, params, batch))
    return top_k_items(users, table, k, batch["exclude"], item_chunk=item_chunk)[1]

  return jax.jit(top_k_step, in_shardings=(None, batch_sharding))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)
