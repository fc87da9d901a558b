"""Top-K recommendation lists over the whole catalogue, scanned in chunks of items.

Memory stays O(batch * (K + chunk)) for any catalogue size: a running top-K is
merged with each chunk's scores. Order is deterministic: by score, then by
lower item id among equal scores. Padding (item 0) is never recommended; items
in `exclude` (the user's seen items, same [B, M] 0-padded format as
`target_ranks`) are dropped, and so is any item whose score is not finite (a
diverged model recommends nothing rather than whatever NaN sorts first). When
fewer than K items remain, the list is filled with id 0 and score -inf.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recattn_jax.data.pipeline import eval_batches
from recattn_jax.evaluation.ranking import seen_in_chunk
from recattn_jax.models.scoring import scoring_inputs, user_vectors


@functools.partial(jax.jit, static_argnames=("k", "item_chunk", "num_rows"))
def top_k_items(user_repr: jax.Array, item_table: jax.Array, k: int,
                exclude: jax.Array | None = None, *,
                item_chunk: int = 4096, num_rows: int | None = None,
                first_id: jax.Array | int = 0) -> tuple[jax.Array, jax.Array]:
  """The K best items for each user, scored by `user_repr @ item_table.T`.

  Args:
    user_repr: [B, D].
    item_table: [N + 1, D]; row 0 is padding.
    k: list length.
    exclude: optional [B, M] item ids never to recommend (0 = none).
    item_chunk: items scored at once.
    num_rows: the table's rows that are items (N + 1; default all of them). A
      caller scoring many batches pads the table to a multiple of `item_chunk`
      once (`pad_table`) and passes N + 1, so no call copies the table.
    first_id: the item id of the table's first row, for a shard of a table
      split by rows (`sharded.top_k_items`; `num_rows` still counts from id 0).
  Returns:
    (scores [B, K] float32, ids [B, K] int32), best first.
  """
  user_repr = user_repr.astype(jnp.float32)
  num_rows = first_id + item_table.shape[0] if num_rows is None else num_rows
  batch = user_repr.shape[0]
  num_chunks = -(-item_table.shape[0] // item_chunk)
  padded = item_table
  if num_chunks * item_chunk != item_table.shape[0]:
    padded = jnp.pad(item_table, ((0, num_chunks * item_chunk - item_table.shape[0]), (0, 0)))
  chunks = padded.reshape(num_chunks, item_chunk, -1)

  def merge(carry, chunk_and_start):
    best_scores, best_ids = carry
    chunk, start = chunk_and_start
    ids = start + jnp.arange(item_chunk, dtype=jnp.int32)
    scores = user_repr @ chunk.astype(jnp.float32).T  # a bf16 table is read as bf16
    eligible = ((ids > 0) & (ids < num_rows) & (ids < first_id + item_table.shape[0])
                & jnp.isfinite(scores))
    if exclude is not None:
      eligible &= ~seen_in_chunk(exclude, start, item_chunk)
    scores = jnp.where(eligible, scores, -jnp.inf)
    # The running best come first and hold lower ids than this chunk, and
    # `lax.top_k` puts the lower index first among equal values: ties go to
    # the lower id.
    all_scores = jnp.concatenate([best_scores, scores], axis=1)
    all_ids = jnp.concatenate([best_ids, jnp.broadcast_to(ids, scores.shape)], axis=1)
    best_scores, index = jax.lax.top_k(all_scores, k)
    return (best_scores, jnp.take_along_axis(all_ids, index, axis=1)), None

  init = (jnp.full((batch, k), -jnp.inf, jnp.float32), jnp.zeros((batch, k), jnp.int32))
  starts = first_id + jnp.arange(num_chunks, dtype=jnp.int32) * item_chunk
  (scores, ids), _ = jax.lax.scan(merge, init, (chunks, starts))
  # Filler (ineligible or initial) entries: never a real recommendation.
  return scores, jnp.where(jnp.isneginf(scores), 0, ids)


def check_item_ids(histories: Sequence[np.ndarray], num_items: int) -> None:
  """ValueError naming the ids outside 1..num_items: they would score as NaN or as another item."""
  bad = sorted({int(i) for h in histories for i in np.asarray(h).ravel() if not 1 <= i <= num_items})
  if bad:
    shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
    raise ValueError(f"item ids outside the catalogue 1..{num_items}: {shown} (internal ids; "
                     "`serving.Recommender` takes original ids and names unknown ones)")


def pad_table(item_table: jax.Array, item_chunk: int) -> jax.Array:
  """`item_table` with zero rows appended up to a multiple of `item_chunk` (see `top_k_items`)."""
  rows = item_table.shape[0]
  return jnp.pad(item_table, ((0, -rows % item_chunk), (0, 0)))


def recommend(model, params, histories: Sequence[np.ndarray], *, k: int, max_len: int,
              batch_size: int = 256, padding: str = "left", exclude_seen: bool = True,
              item_chunk: int = 4096, timestamps: Sequence[np.ndarray] | None = None,
              users: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Top-K lists ([U, K] ids, [U, K] scores) for every history, scored as in evaluation.

  The user vector is the encoder's output at the newest input: the newest event,
  or for cloze-trained encoders (BERT4Rec) a mask token appended after it, with
  the model's output bias. `timestamps` (per history) feed HSTU's time bias,
  `users` (user index per history) a model's user context.
  `exclude_seen` drops each user's whole history.
  """
  @jax.jit
  def step(params, batch):
    users, table = scoring_inputs(model, params, user_vectors(model, params, batch))
    scores, ids = top_k_items(users, table, k, batch["exclude"] if exclude_seen else None,
                              item_chunk=item_chunk)
    return ids, scores

  check_item_ids(histories, model.num_items)
  ids, scores = [], []
  targets = np.ones(len(histories), np.int32)  # eval_batches wants targets; unused here
  for batch in eval_batches(histories, targets, max_len=max_len, batch_size=batch_size,
                            padding=padding, append_mask_id=model.mask_id,
                            timestamps=timestamps, users=users):
    rows = int(batch["weight"].sum())
    inputs = {key: batch[key] for key in ("inputs", "exclude", "timestamps", "users") if key in batch}
    batch_ids, batch_scores = step(params, inputs)
    ids.append(np.asarray(batch_ids)[:rows])
    scores.append(np.asarray(batch_scores)[:rows])
  if not ids:
    return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
  return np.concatenate(ids), np.concatenate(scores)
