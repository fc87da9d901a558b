"""Full-catalogue ranking and top-K on an item table split by rows over a mesh axis.

The table never moves: each device scores the users against its own rows
(`jax.shard_map`), and only per-user results cross devices: target ranks are
the sum of each shard's count of items ahead of the target, top-K lists the
best K of the shards' K-best candidates (K per shard and user). Results equal
`ranking.target_ranks` and `topk.top_k_items` on the whole table, ties
included (shards hold consecutive ids and are merged in id order).

The table has a multiple of the axis size rows (padding rows past `num_rows`
never compete); users and the batch are split over `data_axis`.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from recattn_jax.evaluation.ranking import count_ahead
from recattn_jax.evaluation.topk import top_k_items


def _first_id(rows: jax.Array, axis: str) -> jax.Array:
  return jax.lax.axis_index(axis).astype(jnp.int32) * rows.shape[0]


def sharded_target_ranks(user_repr: jax.Array, item_table: jax.Array, targets: jax.Array,
                         exclude: jax.Array | None, *, mesh: Mesh, num_rows: int,
                         item_chunk: int = 4096, ties: str = "pessimistic",
                         data_axis: str = "data", model_axis: str = "model") -> jax.Array:
  """`target_ranks` with `item_table` [R, D] split by rows over `model_axis` (call under jit)."""
  user_repr = user_repr.astype(jnp.float32)
  # A row lookup in a row-split table: each shard answers for its own ids, one all-reduce of [B, D].
  target_scores = jnp.einsum("bd,bd->b", user_repr,
                             jnp.take(item_table, targets, axis=0).astype(jnp.float32))
  batch, table = P(data_axis), P(model_axis)

  def local(users, rows, targets, target_scores, *exclude):
    counts = count_ahead(users, rows, targets, target_scores, exclude[0] if exclude else None,
                         item_chunk=item_chunk, ties=ties, first_id=_first_id(rows, model_axis),
                         num_rows=num_rows)
    return jax.lax.psum(counts, model_axis)

  extra = () if exclude is None else (exclude,)
  return jax.shard_map(local, mesh=mesh, in_specs=(batch, table, batch, batch) + (batch,) * len(extra),
                       out_specs=batch, check_vma=False)(user_repr, item_table, targets,
                                                         target_scores, *extra)


def sharded_top_k_items(user_repr: jax.Array, item_table: jax.Array, k: int,
                        exclude: jax.Array | None, *, mesh: Mesh, num_rows: int,
                        item_chunk: int = 4096, data_axis: str = "data",
                        model_axis: str = "model") -> tuple[jax.Array, jax.Array]:
  """`top_k_items` with `item_table` [R, D] split by rows over `model_axis` (call under jit)."""
  batch, table = P(data_axis), P(model_axis)

  def local(users, rows, *exclude):
    scores, ids = top_k_items(users, rows, k, exclude[0] if exclude else None,
                              item_chunk=min(item_chunk, rows.shape[0]), num_rows=num_rows,
                              first_id=_first_id(rows, model_axis))
    # [B, shards * K] in shard (= id) order, so the lower id wins ties as in one table.
    scores = jax.lax.all_gather(scores, model_axis, axis=1, tiled=True)
    ids = jax.lax.all_gather(ids, model_axis, axis=1, tiled=True)
    best, index = jax.lax.top_k(scores, k)
    ids = jnp.take_along_axis(ids, index, axis=1)
    return best, jnp.where(jnp.isneginf(best), 0, ids)

  extra = () if exclude is None else (exclude,)
  return jax.shard_map(local, mesh=mesh, in_specs=(batch, table) + (batch,) * len(extra),
                       out_specs=(batch, batch), check_vma=False)(
                           user_repr.astype(jnp.float32), item_table, *extra)
