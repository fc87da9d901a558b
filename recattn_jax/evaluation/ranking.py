"""Full-ranking evaluation: the rank of each target among the whole catalogue.

Scores are computed in chunks of items so that memory stays O(batch * chunk)
for any catalogue size. Ties are resolved explicitly:
  * "pessimistic" (default): every other item with the same score is ranked
    ahead of the target, so a model that outputs constant scores gets the worst
    rank, never a lucky one;
  * "optimistic": tied items are ranked behind the target.
Padding (item 0) never competes. With `exclude` the user's already-seen items
are removed from the ranking, except the target itself (so a repeated
consumption can still be hit).

A score that is not finite (NaN or +-inf, e.g. from a diverged model) is the
worst possible: such an item never ranks ahead of anything, and a target with
such a score ranks behind every competing item whatever the tie mode, so a NaN
model ranks every target last instead of first (`NaN >= x` is False).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

TIE_MODES = ("pessimistic", "optimistic")


def seen_in_chunk(exclude: jax.Array, start: jax.Array, item_chunk: int) -> jax.Array:
  """[B, item_chunk] True where item `start + j` is among the row's `exclude` ids (0 = none)."""
  batch = exclude.shape[0]
  local = exclude - start
  in_chunk = (exclude > 0) & (local >= 0) & (local < item_chunk)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], exclude.shape)
  return jnp.zeros((batch, item_chunk), bool).at[rows, jnp.where(in_chunk, local, item_chunk)].set(
      True, mode="drop")


@functools.partial(jax.jit, static_argnames=("item_chunk", "ties"))
def target_ranks(user_repr: jax.Array, item_table: jax.Array, targets: jax.Array,
                 exclude: jax.Array | None = None, *, item_chunk: int = 4096,
                 ties: str = "pessimistic") -> jax.Array:
  """0-based rank of `targets` among items 1..N, scored by `user_repr @ item_table.T`.

  Args:
    user_repr: [B, D].
    item_table: [N + 1, D]; row 0 is padding.
    targets: [B] item ids in 1..N.
    exclude: optional [B, H] item ids to drop from the ranking (0 = none).
    item_chunk: items scored at once.
    ties: one of TIE_MODES.
  Returns:
    [B] int32 ranks; 0 means the target scored highest.
  """
  user_repr = user_repr.astype(jnp.float32)
  target_scores = jnp.einsum("bd,bd->b", user_repr, item_table[targets].astype(jnp.float32))
  return count_ahead(user_repr, item_table, targets, target_scores, exclude,
                     item_chunk=item_chunk, ties=ties)


def count_ahead(user_repr: jax.Array, item_rows: jax.Array, targets: jax.Array,
                target_scores: jax.Array, exclude: jax.Array | None, *, item_chunk: int,
                ties: str, first_id: jax.Array | int = 0,
                num_rows: int | None = None) -> jax.Array:
  """[B] how many of the items `first_id + j` (rows j of `item_rows`) rank ahead of each target.

  A slice of the catalogue at a time (`first_id`: the id of its first row;
  `num_rows`: N + 1, the ids past it are padding), so that the counts of the
  shards of a table split by rows add up to `target_ranks`.
  """
  if ties not in TIE_MODES:
    raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}")
  user_repr = user_repr.astype(jnp.float32)
  item_rows = item_rows.astype(jnp.float32)
  rows = item_rows.shape[0]
  num_rows = first_id + rows if num_rows is None else num_rows
  target_broken = ~jnp.isfinite(target_scores)
  num_chunks = -(-rows // item_chunk)
  padded = jnp.pad(item_rows, ((0, num_chunks * item_chunk - rows), (0, 0)))
  chunks = padded.reshape(num_chunks, item_chunk, -1)
  batch = user_repr.shape[0]

  def count_chunk(carry, chunk_and_start):
    chunk, start = chunk_and_start
    ids = start + jnp.arange(item_chunk)
    scores = user_repr @ chunk.T
    scores = jnp.where(jnp.isfinite(scores), scores, -jnp.inf)
    competes = (ids > 0) & (ids < num_rows) & (ids < first_id + rows)
    competes = jnp.broadcast_to(competes, scores.shape) & (ids[None, :] != targets[:, None])
    if exclude is not None:
      competes &= ~seen_in_chunk(exclude, start, item_chunk)
    if ties == "pessimistic":
      ahead = scores >= target_scores[:, None]
    else:
      ahead = scores > target_scores[:, None]
    ahead |= target_broken[:, None]
    return carry + jnp.sum(ahead & competes, axis=1, dtype=jnp.int32), None

  starts = first_id + jnp.arange(num_chunks) * item_chunk
  ranks, _ = jax.lax.scan(count_chunk, jnp.zeros((batch,), jnp.int32), (chunks, starts))
  return ranks


def metrics_from_ranks(ranks: np.ndarray, ks=(1, 10, 50, 200)) -> dict[str, float]:
  """HR@K, NDCG@K and MRR@K averaged over users (one target each)."""
  ranks = np.asarray(ranks, dtype=np.float64)
  out = {}
  for k in ks:
    hit = ranks < k
    out[f"HR@{k}"] = float(np.mean(hit))
    out[f"NDCG@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)))
    out[f"MRR@{k}"] = float(np.mean(np.where(hit, 1.0 / (ranks + 1.0), 0.0)))
  return out
