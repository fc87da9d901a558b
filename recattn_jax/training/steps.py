"""Train state, the jitted data-parallel train step and the jitted ranking step.

Everything here is a pure function of its arguments; sharding is declared, not
hand-coded: the batch is split over the mesh's "data" axis and the state is
replicated, and XLA inserts the gradient all-reduce.
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
from recattn_jax.models import last_hidden

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  dropout_key: jax.Array


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


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, *, seed: int,
               max_len: int, mesh: Mesh) -> TrainState:
  """Shapes first, then shardings, then one jitted initialisation straight into place."""
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  dummy = jnp.zeros((1, max_len), jnp.int32)

  def init(key):
    params = model.init(key, dummy)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), dropout_key=dropout_key)

  abstract = jax.eval_shape(init, init_key)
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract)
  return jax.jit(init, out_shardings=shardings)(init_key)


def catalogue_logits(hidden: jax.Array, item_table: jax.Array) -> jax.Array:
  """Scores of every item (padding row masked out), accumulated and returned in float32.

  The table is cast to the activations' dtype so that a bf16 model multiplies in
  bf16 while its parameters and the softmax stay in float32.
  """
  logits = jnp.einsum("...d,nd->...n", hidden, item_table.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  return logits.at[..., 0].set(-1e30)


def next_item_loss(model: nn.Module, params, batch, dropout_key) -> tuple[jax.Array, dict]:
  """Full-softmax cross-entropy over the catalogue at every real position."""
  hidden = model.apply(params, batch["inputs"], batch.get("segment_ids"), deterministic=False,
                       rngs={"dropout": dropout_key})
  item_table = model.apply(params, method="item_embeddings")
  logits = catalogue_logits(hidden, item_table)
  targets = batch["targets"]
  weight = (targets > 0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = jnp.maximum(weight.sum(), 1.0)
  loss = jnp.sum(ce * weight) / count
  return loss, {"loss": loss, "events": weight.sum()}


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                    state: TrainState) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  replicated = NamedSharding(mesh, P())

  # One trace per run: a second one means batch shapes or dtypes changed (a silent recompile).
  chex.clear_trace_counter()

  @chex.assert_max_traces(n=1)
  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    dropout_key = jax.random.fold_in(state.dropout_key, state.step)
    grads, metrics = jax.grad(
        lambda p: next_item_loss(model, p, batch, dropout_key), has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)


def make_rank_step(model: nn.Module, mesh: Mesh, *, item_chunk: int, ties: str) -> Callable:
  """(params, batch) -> ranks with the user's seen items excluded and with all items."""
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  def rank_step(params, batch):
    hidden = model.apply(params, batch["inputs"], deterministic=True)
    users = last_hidden(hidden, batch["inputs"])
    table = model.apply(params, method="item_embeddings")
    kwargs = dict(item_chunk=item_chunk, ties=ties)
    return (target_ranks(users, table, batch["targets"], batch["exclude"], **kwargs),
            target_ranks(users, table, batch["targets"], None, **kwargs))

  return jax.jit(rank_step, in_shardings=(None, batch_sharding))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)
