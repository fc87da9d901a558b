"""SASRec-style causal user-sequence encoder with a shared item-embedding output layer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import MaskSpec
from recattn_jax.models.transformer import TransformerBlock


def positions_in_sequence(valid: jax.Array, count_from: str) -> jax.Array:
  """Index of each real event within its row, independent of the padding side.

  "start": 0 for the oldest event (stable when events are appended, which is what
  a key/value cache needs); "end": 0 for the newest event (what SASRec's
  left-padded absolute positions amount to).
  """
  valid = valid.astype(jnp.int32)
  from_start = jnp.cumsum(valid, axis=-1) - 1
  if count_from == "start":
    pos = from_start
  elif count_from == "end":
    pos = jnp.sum(valid, axis=-1, keepdims=True) - 1 - from_start
  else:
    raise ValueError(f"model.positions must be 'start' or 'end', got {count_from!r}")
  return jnp.where(valid > 0, pos, 0)


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

  def setup(self):
    self.item_embed = nn.Embed(self.num_items + 1, self.embed_dim,
                               embedding_init=nn.initializers.normal(stddev=0.02), name="item_embed")
    self.pos_embed = nn.Embed(self.max_len, self.embed_dim,
                              embedding_init=nn.initializers.normal(stddev=0.02), name="pos_embed")
    self.input_dropout = nn.Dropout(self.dropout_rate)
    self.blocks = [
        TransformerBlock(self.num_heads, self.ff_dim, self.dropout_rate, self.attention_impl,
                         self.dtype, name=f"block_{i}") for i in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm(dtype=self.dtype)

  def __call__(self, items: jax.Array, *, deterministic: bool = True) -> jax.Array:
    if items.shape[-1] > self.max_len:
      raise ValueError(f"sequence length {items.shape[-1]} exceeds model.max_len={self.max_len}")
    valid = items > 0
    positions = positions_in_sequence(valid, self.positions)
    x = self.item_embed(items) * (self.embed_dim ** 0.5) + self.pos_embed(positions)
    x = self.input_dropout(x, deterministic=deterministic)
    x = (x * valid[..., None]).astype(self.dtype)
    mask = MaskSpec(causal=True, kv_valid=valid)
    for block in self.blocks:
      x = block(x, mask, valid, deterministic)
    return self.final_norm(x)

  def item_embeddings(self) -> jax.Array:
    """[num_items + 1, D]; row 0 is padding and is never a valid prediction."""
    return self.item_embed.embedding


def last_hidden(hidden: jax.Array, items: jax.Array) -> jax.Array:
  """Hidden state at each row's newest event ([B, D]), for left or right padding."""
  valid = items > 0
  index = jnp.where(valid, jnp.arange(items.shape[-1]), -1).max(axis=-1)
  index = jnp.maximum(index, 0)
  return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]
