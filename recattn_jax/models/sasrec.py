"""SASRec-style causal user-sequence encoder with a shared item-embedding output layer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import MaskSpec
from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.social import UserProfiles
from recattn_jax.models.dropout import Dropout
from recattn_jax.models.item_encoder import ItemEncoder
from recattn_jax.models.transformer import TransformerBlock
from recattn_jax.models.user_context import UserContext, check_users


def positions_in_sequence(segment_ids: jax.Array, count_from: str) -> jax.Array:
  """Index of each event within its segment (a user's run of events), for any padding side.

  `segment_ids` [B, L] numbers contiguous runs of one user's events, 0 for
  padding; an unpacked row is just `items > 0`. "start": 0 for the oldest event
  (stable when events are appended, which is what a key/value cache needs);
  "end": 0 for the newest event (what SASRec's left-padded absolute positions
  amount to).
  """
  length = segment_ids.shape[-1]
  index = jnp.broadcast_to(jnp.arange(length), segment_ids.shape)
  before = jnp.pad(segment_ids, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  after = jnp.pad(segment_ids, ((0, 0), (0, 1)), constant_values=-1)[:, 1:]
  start = jax.lax.cummax(jnp.where(segment_ids != before, index, 0), axis=1)
  end = jax.lax.cummin(jnp.where(segment_ids != after, index, length), axis=1, reverse=True)
  if count_from == "start":
    pos = index - start
  elif count_from == "end":
    pos = end - index
  else:
    raise ValueError(f"model.positions must be 'start' or 'end', got {count_from!r}")
  return jnp.where(segment_ids > 0, pos, 0)


class SASRec(nn.Module):
  """Item + learned positional embeddings, pre-LN causal blocks, final LayerNorm.

  `__call__(items)` maps left- or right-padded item ids [B, L] (0 = padding) to
  hidden states [B, L, D]; scores against the catalogue use the same item
  embedding table (`item_embeddings`).
  """

  num_items: int
  max_len: int
  embed_dim: int = 64
  num_layers: int = 2
  num_heads: int = 2
  ff_dim: int = 256
  dropout_rate: float = 0.2
  positions: str = "end"
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32
  # What an item's vector is made of ("id", "content", "both"; see ItemEncoder).
  item_features: ItemFeatures | None = None
  item_representation: str = "id"
  item_id_dropout: float = 0.0
  # A per-user context added to every event (see models/user_context.py); None: no context.
  user_profiles: UserProfiles | None = None

  def setup(self):
    self.item_embed = ItemEncoder(self.num_items, self.embed_dim, item_features=self.item_features,
                                  representation=self.item_representation,
                                  id_dropout=self.item_id_dropout, name="item_embed")
    self.pos_embed = nn.Embed(self.max_len, self.embed_dim,
                              embedding_init=nn.initializers.normal(stddev=0.02), name="pos_embed")
    self.input_dropout = Dropout(self.dropout_rate)
    self.blocks = [
        TransformerBlock(self.embed_dim, self.num_heads, self.ff_dim, self.dropout_rate,
                         self.attention_impl, self.dtype, name=f"block_{i}")
        for i in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm(dtype=self.dtype)
    self.user_context = (None if self.user_profiles is None
                         else UserContext(self.user_profiles, self.embed_dim, name="user_context"))

  def __call__(self, items: jax.Array, segment_ids: jax.Array | None = None, *,
               deterministic: bool = True, users: jax.Array | None = None) -> jax.Array:
    """`segment_ids` (0 = padding) marks packed rows holding several users; None: one user per row.

    `users` [B, L] (user index + 1) is required exactly when the model has `user_profiles`.
    """
    check_users(self.user_profiles, users)
    return self._encode(items, segment_ids, deterministic, users)[0]

  def _embed(self, items: jax.Array, positions: jax.Array, deterministic: bool,
             users: jax.Array | None) -> jax.Array:
    x = self.item_embed(items) * (self.embed_dim ** 0.5) + self.pos_embed(positions)
    if self.user_context is not None:
      x = x + self.user_context(users, self.item_embed)
    x = self.input_dropout(x, deterministic=deterministic)
    return (x * (items > 0)[..., None]).astype(self.dtype)

  def _encode(self, items, segment_ids, deterministic, users=None):
    if items.shape[-1] > self.max_len:
      raise ValueError(f"sequence length {items.shape[-1]} exceeds model.max_len={self.max_len}")
    valid = items > 0
    packed = segment_ids is not None
    segment_ids = jnp.where(valid, segment_ids, 0) if packed else valid.astype(jnp.int32)
    x = self._embed(items, positions_in_sequence(segment_ids, self.positions), deterministic, users)
    mask = MaskSpec(causal=True, kv_valid=valid,
                    q_segment_ids=segment_ids if packed else None,
                    kv_segment_ids=segment_ids if packed else None)
    keys, values = [], []
    for block in self.blocks:
      x, k, v = block(x, mask, valid, deterministic)
      keys.append(k)
      values.append(v)
    return self.final_norm(x), keys, values

  def prefill(self, items: jax.Array, users: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Encodes right-padded histories and returns (user representations [B, D], cache).

    The cache holds every layer's keys and values ([layers, B, max_len, H, Dh])
    and each row's length, so that `extend` can add one event in O(L) work
    instead of re-encoding the whole history in O(L^2). `users` [B, L] as in `__call__`.
    """
    self._check_cacheable(items)
    check_users(self.user_profiles, users)
    hidden, keys, values = self._encode(items, None, True, users)
    pad = ((0, 0), (0, self.max_len - items.shape[1]), (0, 0), (0, 0))
    cache = {"keys": jnp.stack([jnp.pad(k, pad) for k in keys]),
             "values": jnp.stack([jnp.pad(v, pad) for v in values]),
             "length": jnp.sum(items > 0, axis=-1).astype(jnp.int32)}
    return last_hidden(hidden, items), cache

  def extend(self, cache: dict, new_items: jax.Array,
             users: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Appends one event per row ([B]) and returns (user representations [B, D], cache).

    Rows must have fewer than `max_len` events before the call; once full, encode
    the newest events again with `prefill`. `users` [B] (user index + 1) when the
    model has `user_profiles`.
    """
    check_users(self.user_profiles, users)
    index = cache["length"]
    x = self._embed(new_items[:, None], index[:, None], True,
                    None if users is None else users[:, None])
    keys, values = [], []
    for layer, block in enumerate(self.blocks):
      x, k, v = block.step(x, cache["keys"][layer], cache["values"][layer], index)
      keys.append(k)
      values.append(v)
    cache = {"keys": jnp.stack(keys), "values": jnp.stack(values), "length": index + 1}
    return self.final_norm(x)[:, 0], cache

  def _check_cacheable(self, items):
    if self.positions != "start":
      raise ValueError("a key/value cache needs model.positions='start' (positions that do not "
                       "change when events are appended)")
    if items.shape[1] > self.max_len:
      raise ValueError(f"history length {items.shape[1]} exceeds model.max_len={self.max_len}")

  def item_embeddings(self, deterministic: bool = True) -> jax.Array:
    """[num_items + 1, D]; row 0 is padding and is never a valid prediction.

    With `deterministic=False` the item encoder's id dropout (if any) applies.
    """
    return self.item_embed.table(deterministic=deterministic)


def last_hidden(hidden: jax.Array, items: jax.Array) -> jax.Array:
  """Hidden state at each row's newest event ([B, D]), for left or right padding."""
  valid = items > 0
  index = jnp.where(valid, jnp.arange(items.shape[-1]), -1).max(axis=-1)
  index = jnp.maximum(index, 0)
  return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]
