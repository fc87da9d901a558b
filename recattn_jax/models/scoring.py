"""From a sequence encoder and a batch to scores over the catalogue.

What training, evaluation, explanation and serving share, so that each calls
an encoder the same way: `encode` feeds the keys a batch has, `user_vectors`
takes each row's newest position, and `scoring_inputs` returns (users, table)
whose dot products are the model's item scores, with an encoder's output bias
folded into one extra column.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recattn_jax.models.base import Encoder
from recattn_jax.models.item_encoder import TABLE_ROW_MULTIPLE, table_rows

# Batch keys an encoder may read besides "inputs" and "segment_ids".
OPTIONAL_KEYS = ("timestamps", "users")


def init_encoder(model: Encoder, key: jax.Array, max_len: int):
  """An encoder's variables from a dummy batch (with `users` when it has a user context)."""
  dummy = jnp.zeros((1, max_len), jnp.int32)
  users = dummy if model.user_profiles is not None else None
  return model.init(key, dummy, users=users)


def encode(model: Encoder, params, batch: dict, **kwargs) -> jax.Array:
  """Hidden states [B, L, D] of a batch; packing segment ids, timestamps and users when it has them."""
  for key in OPTIONAL_KEYS:
    if key in batch:
      kwargs[key] = batch[key]
  return model.apply(params, batch["inputs"], batch.get("segment_ids"), **kwargs)


def newest_index(items: jax.Array) -> jax.Array:
  """[B] position of each row's newest event (0 for an empty row), for left or right padding."""
  index = jnp.where(items > 0, jnp.arange(items.shape[-1]), -1).max(axis=-1)
  return jnp.maximum(index, 0)


def last_hidden(hidden: jax.Array, items: jax.Array) -> jax.Array:
  """Hidden state at each row's newest event ([B, D]), for left or right padding."""
  return jnp.take_along_axis(hidden, newest_index(items)[:, None, None], axis=1)[:, 0]


def user_vectors(model: Encoder, params, batch: dict) -> jax.Array:
  """[B, D]: the encoder's output at each row's newest input (a mask token for cloze encoders)."""
  return last_hidden(encode(model, params, batch), batch["inputs"])


def serving_vectors(model: Encoder, params, batch: dict) -> jax.Array:
  """`user_vectors` of an unpacked batch, through the encoder's `newest_hidden` when it has one.

  Serving needs only the newest position, so encoders that can (SASRec) run
  their last layer there alone; equal to `user_vectors` within float rounding.
  """
  if not hasattr(type(model), "newest_hidden"):
    return user_vectors(model, params, batch)
  kwargs = {key: batch[key] for key in OPTIONAL_KEYS if key in batch}
  return model.apply(params, batch["inputs"], method="newest_hidden", **kwargs)


def fold_item_bias(hidden: jax.Array, table: jax.Array,
                   bias: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(hidden [..., D+1], table [N+1, D+1]) whose dot products equal hidden @ table.T + bias.

  Appends a constant 1 to every hidden state and the bias as the table's last
  column, so scorers that only take (users, table) include the bias.
  """
  ones = jnp.ones(hidden.shape[:-1] + (1,), hidden.dtype)
  return (jnp.concatenate([hidden, ones], axis=-1),
          jnp.concatenate([table, bias[:, None].astype(table.dtype)], axis=-1))


def catalogue_text_vectors(model: Encoder, params) -> jax.Array:
  """The text tower's vectors [N + 1, H] of every item, TABLE_ROW_MULTIPLE items at a time.

  A scan over chunks keeps one chunk's BERT activations alive at a time, so
  refreshing a large catalogue fits where one batch of it would not.
  """
  rows = jnp.minimum(jnp.arange(table_rows(model.num_items)), model.num_items)
  chunks = rows.reshape(-1, TABLE_ROW_MULTIPLE)
  vectors = jax.lax.map(lambda chunk: model.apply(params, chunk, method="item_text_vectors"), chunks)
  return vectors.reshape(-1, vectors.shape[-1])[:model.num_items + 1]


def item_table(model: Encoder, params, *, padded: bool = False, **kwargs) -> jax.Array:
  """`item_embeddings` [N + 1, D], with a text tower's vectors refreshed for the whole catalogue."""
  if model.has_text_tower:
    kwargs["text_vectors"] = catalogue_text_vectors(model, params)
  return model.apply(params, method="item_embeddings", padded=padded, **kwargs)


def scoring_inputs(model: Encoder, params, hidden: jax.Array, *, padded: bool = False,
                   **kwargs) -> tuple[jax.Array, jax.Array]:
  """(hidden, table) whose dot products are the model's item scores (an output bias folded in).

  `padded`: the table with all its `table_rows` rows (split over devices; rows
  past num_items must be masked). `kwargs` (deterministic=False, rngs=...)
  reach `item_embeddings`, for item id dropout.
  """
  table = item_table(model, params, padded=padded, **kwargs)
  if model.has_item_bias:
    return fold_item_bias(hidden, table, model.apply(params, method="item_bias", padded=padded))
  return hidden, table


def scoring_table(model: Encoder, params, *, padded: bool = False) -> jax.Array:
  """The table of `scoring_inputs` alone, to compute once for many requests or evaluation batches."""
  return scoring_inputs(model, params, jnp.zeros((1, 1), jnp.float32), padded=padded)[1]


def scoring_users(model: Encoder, hidden: jax.Array) -> jax.Array:
  """The user side of `scoring_inputs`, to score against `scoring_table`."""
  if model.has_item_bias:
    return jnp.concatenate([hidden, jnp.ones(hidden.shape[:-1] + (1,), hidden.dtype)], axis=-1)
  return hidden


def catalogue_logits(hidden: jax.Array, item_table: jax.Array) -> jax.Array:
  """Scores of every item (padding row masked out), accumulated and returned in float32.

  The table is cast to the activations' dtype so that a bf16 model multiplies in
  bf16 while its parameters and the softmax stay in float32.
  """
  logits = jnp.einsum("...d,nd->...n", hidden, item_table.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  return logits.at[..., 0].set(-1e30)
