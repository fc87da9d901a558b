"""Train state, the jitted train step and the jitted ranking steps.

Everything here is a pure function of its arguments; sharding is declared, not
hand-coded: the batch is split over the mesh's "data" axis, the state follows
`parallel.SHARDING_RULES` (item tables split by rows over "model", the rest
replicated), and XLA inserts the collectives: a gradient all-reduce over
"data", and for the full softmax per-shard logits with a max/sum over "model"
(the table itself is never gathered; `tests/test_sharding.py` checks the HLO).
Ranking and top-K on a split table run per shard (`evaluation.sharded`).

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
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recattn_jax.evaluation import target_ranks
from recattn_jax.evaluation.sharded import sharded_target_ranks, sharded_top_k_items
from recattn_jax.evaluation.topk import top_k_items
from recattn_jax.models.item_encoder import table_rows
from recattn_jax.models.scoring import (encode, fold_item_bias, scoring_inputs, scoring_table,
                                        scoring_users, user_vectors)
from recattn_jax.models.text_tower import stop_frozen_gradients
from recattn_jax.parallel import (DATA_AXIS, MODEL_AXIS, batch_sharding, global_batch,
                                  process_rows, replicated, tree_shardings)
from recattn_jax.training.losses import CandidateLoss, LossFn, next_item_loss_fn


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


LR_BATCH_SCALINGS = ("none", "linear", "sqrt")


def peak_learning_rate(train_config: ml_collections.ConfigDict) -> float:
  """`train.learning_rate`, scaled from `train.lr_reference_batch` rows to `train.batch_size`.

  "linear" (Goyal et al., 2017) multiplies by batch / reference, "sqrt" (usual
  for Adam) by its square root, "none" leaves it.
  """
  rule = train_config.get("lr_batch_scaling", "none")
  ratio = train_config.batch_size / train_config.get("lr_reference_batch", train_config.batch_size)
  if rule not in LR_BATCH_SCALINGS:
    raise ValueError(f"train.lr_batch_scaling={rule!r} must be one of {list(LR_BATCH_SCALINGS)}")
  return train_config.learning_rate * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[rule]


def learning_rate_schedule(train_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up, then constant or cosine decay to zero at `total_steps`."""
  peak = peak_learning_rate(train_config)
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
  # Each device creates only its shard: a table larger than one device never exists whole.
  return jax.jit(init, out_shardings=tree_shardings(abstract, mesh))(init_key)


# (params, batch, rng) -> (loss, metrics with "loss" and "events" or "examples")
BatchLoss = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def next_item_loss(model: nn.Module, loss_fn: LossFn | CandidateLoss | None = None,
                   item_mask: jax.Array | None = None, *, padded: bool = False) -> BatchLoss:
  """The ranking task's batch loss: `loss_fn` (default: full-softmax CE) at every target.

  Targets are the next items (causal encoders) or the masked ones (cloze).
  `item_mask` [N + 1]: the items the softmax ranges over (None: all).
  `padded` (a table split over devices): the loss sees all `table_rows` rows,
  those past N masked out, so the table is used as it lies; `loss_fn` must
  then take an item mask (registered with item_mask=True, e.g. "softmax").
  A `CandidateLoss` scores only its candidates (`candidate_loss`); a model
  with a text tower needs one.
  """
  loss_fn = loss_fn or next_item_loss_fn("softmax")
  if isinstance(loss_fn, CandidateLoss):
    if padded:
      raise ValueError("a candidate loss does not run on an item table split over devices")
    return candidate_loss(model, loss_fn, item_mask)
  if model.has_text_tower:
    raise ValueError("a text tower (model.*.item_text_lora_rank > 0) runs on a step's candidates "
                     "only: set train.loss.name='mixed_softmax'")
  if padded:
    rows = table_rows(model.num_items)
    valid = jnp.arange(rows) <= model.num_items
    item_mask = valid if item_mask is None else valid & jnp.pad(
        jnp.asarray(item_mask), (0, rows - model.num_items - 1))

  def batch_loss(params, batch, rng):
    dropout_key, table_key, sample_key = jax.random.split(rng, 3)
    hidden = encode(model, params, batch, deterministic=False, rngs={"dropout": dropout_key})
    hidden, table = scoring_inputs(model, params, hidden, padded=padded, deterministic=False,
                                   rngs={"dropout": table_key})
    return loss_fn(hidden, table, batch["targets"], sample_key, item_mask)
  return batch_loss


def candidate_loss(model: nn.Module, loss_fn: CandidateLoss,
                   item_mask: jax.Array | None = None) -> BatchLoss:
  """A batch loss that computes item vectors only for `loss_fn`'s candidates (`model.item_vectors`).

  The sampled positions' hidden states are scored against their targets and
  `loss_fn.num_negatives` items drawn from `item_mask` (None: every item); a
  text tower runs on those items only, and no gradient is computed for its
  frozen pretrained weights.
  """
  def batch_loss(params, batch, rng):
    dropout_key, item_key, sample_key = jax.random.split(rng, 3)
    params = stop_frozen_gradients(params)
    hidden = encode(model, params, batch, deterministic=False, rngs={"dropout": dropout_key})
    positions, ids = loss_fn.sample(sample_key, batch["targets"], model.num_items, item_mask)
    hidden = jnp.take(hidden.reshape(-1, hidden.shape[-1]), positions, axis=0)
    vectors = model.apply(params, ids, False, method="item_vectors", rngs={"dropout": item_key})
    if model.has_item_bias:
      bias = jnp.take(model.apply(params, method="item_bias"), ids)
      hidden, vectors = fold_item_bias(hidden, vectors, bias)
    targets = jnp.take(batch["targets"].reshape(-1), positions)
    return loss_fn(hidden, vectors, ids, targets, model.num_items, item_mask)
  return batch_loss


def make_train_step(batch_loss: BatchLoss, optimizer: optax.GradientTransformation, mesh: Mesh,
                    state: TrainState, *,
                    accum_steps: int = 1) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The one train step of every task: jitted (state, batch) -> (state, metrics), state donated.

  Each step's rng is the state's dropout key folded with the step number, so a
  resumed run draws what an uninterrupted one would. With `accum_steps` > 1
  the batch is split into that many micro-batches whose gradients are summed
  in a scan (`accumulated_gradients`), so only one micro-batch's activations
  live at a time and the update equals the whole batch's.
  """
  state_sharding = jax.tree.map(lambda x: x.sharding, state)

  # One trace per run: a second one means batch shapes or dtypes changed (a silent recompile).
  chex.clear_trace_counter()

  @chex.assert_max_traces(n=1)
  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.dropout_key, state.step)
    if accum_steps == 1:
      grads, metrics = jax.grad(lambda p: batch_loss(p, batch, rng), has_aux=True)(state.params)
    else:
      grads, metrics = accumulated_gradients(batch_loss, state.params, batch, rng, accum_steps, mesh)
    return apply_gradients(state, grads, metrics, optimizer)

  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding(mesh)),
                 out_shardings=(state_sharding, replicated(mesh)), donate_argnums=0)


def accumulated_gradients(batch_loss: BatchLoss, params, batch: dict, rng: jax.Array,
                          accum_steps: int, mesh: Mesh) -> tuple[Any, dict]:
  """The gradient and metrics of `batch_loss` on the whole batch, computed micro-batch by micro-batch.

  The loss is a weighted mean over positions (or examples), so the whole
  batch's gradient is the sum of each micro-batch's gradient times its weight
  ("events" or "examples"), divided by the total weight. Micro-batch m holds
  rows m, m + accum_steps, ...: every device keeps its share of each one.
  Micro-batch m draws dropout from `fold_in(rng, m)`.
  """
  rows = jax.tree.leaves(batch)[0].shape[0]
  if rows % accum_steps:
    raise ValueError(f"train.grad_accum_steps={accum_steps} does not divide the batch of {rows} rows")

  def split(x):
    x = x.reshape(rows // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXIS)))

  micro_batches = jax.tree.map(split, batch)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  weight_key = next(key for key in ("events", "examples")
                    if key in jax.eval_shape(batch_loss, params, first, rng)[1])

  def weighted_loss(p, micro, key):
    loss, metrics = batch_loss(p, micro, key)
    weight = metrics[weight_key].astype(jnp.float32)
    return loss * weight, weight

  def add(carry, micro_and_index):
    grad_sum, loss_sum, weight_sum = carry
    micro, index = micro_and_index
    (loss, weight), grads = jax.value_and_grad(weighted_loss, has_aux=True)(
        params, micro, jax.random.fold_in(rng, index))
    return (jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss, weight_sum + weight), None

  zero = jnp.zeros((), jnp.float32)
  (grad_sum, loss_sum, weight_sum), _ = jax.lax.scan(
      add, (jax.tree.map(jnp.zeros_like, params), zero, zero),
      (micro_batches, jnp.arange(accum_steps)))
  total = jnp.where(weight_sum > 0, weight_sum, 1.0)
  return jax.tree.map(lambda g: g / total, grad_sum), {"loss": loss_sum / total, weight_key: weight_sum}


def make_catalogue_step(model: nn.Module, mesh: Mesh) -> Callable:
  """params -> the scoring table [N + 1, D'] (`scoring_table`), computed once per evaluation.

  On a mesh with a "model" axis it is the whole padded table as it lies. A
  text tower is run over the catalogue here, so its vectors are refreshed
  from the current adapters.
  """
  return jax.jit(lambda params: scoring_table(model, params, padded=mesh.shape[MODEL_AXIS] > 1))


def _users(model: nn.Module, params, batch) -> jax.Array:
  return scoring_users(model, user_vectors(model, params, batch))


def make_rank_step(model: nn.Module, mesh: Mesh, *, item_chunk: int, ties: str) -> Callable:
  """(params, table, batch) -> ranks with the user's seen items excluded and with all items.

  `table` is `make_catalogue_step(model, mesh)(params)`.
  """
  sharded = mesh.shape[MODEL_AXIS] > 1

  def ranks(users, table, targets, exclude):
    if sharded:
      return sharded_target_ranks(users, table, targets, exclude, mesh=mesh, item_chunk=item_chunk,
                                  ties=ties, num_rows=model.num_items + 1)
    return target_ranks(users, table, targets, exclude, item_chunk=item_chunk, ties=ties)

  def rank_step(params, table, batch):
    users = _users(model, params, batch)
    return (ranks(users, table, batch["targets"], batch["exclude"]),
            ranks(users, table, batch["targets"], None))

  return jax.jit(rank_step, in_shardings=(None, None, batch_sharding(mesh)))


def make_top_k_step(model: nn.Module, mesh: Mesh, *, k: int, item_chunk: int) -> Callable:
  """(params, table, batch) -> the top-`k` item ids [B, k] with the user's seen items excluded."""

  def top_k_step(params, table, batch):
    users = _users(model, params, batch)
    if mesh.shape[MODEL_AXIS] > 1:
      return sharded_top_k_items(users, table, k, batch["exclude"], mesh=mesh,
                                 item_chunk=item_chunk, num_rows=model.num_items + 1)[1]
    return top_k_items(users, table, k, batch["exclude"], item_chunk=item_chunk)[1]

  return jax.jit(top_k_step, in_shardings=(None, None, batch_sharding(mesh)))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """A whole (global) batch that every process holds, as arrays split over "data".

  Each process contributes only the rows its devices hold (`parallel.process_rows`).
  """
  rows = jax.tree.leaves(batch)[0].shape[0]
  mine = process_rows(mesh, rows)
  return global_batch({key: value[mine] for key, value in batch.items()}, mesh, rows)
