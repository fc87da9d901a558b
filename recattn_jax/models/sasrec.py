"""SASRec-style causal user-sequence encoder with a shared item-embedding output layer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.models.base import Layout, SequenceEncoder, positions_in_sequence
from recattn_jax.models.registry import ENCODERS
from recattn_jax.models.scoring import last_hidden, newest_index
from recattn_jax.models.transformer import TransformerBlock
from recattn_jax.models.user_context import check_users


@ENCODERS.register("sasrec", objective="causal", kv_cache=True)
class SASRec(SequenceEncoder):
  """Item + learned positional embeddings, causal blocks, final LayerNorm.

  `__call__(items)` maps left- or right-padded item ids [B, L] (0 = padding) to
  hidden states [B, L, D]; scores against the catalogue use the same item
  embedding table (`item_embeddings`). `prefill`/`extend` keep a key/value
  cache for adding one event at a time.
  """

  ff_dim: int = 256
  # "input": pre-LN blocks; "normed": the SASRec authors' residuals (`TransformerBlock`).
  residual: str = "input"

  def setup_blocks(self):
    self.blocks = [
        TransformerBlock(self.embed_dim, self.num_heads, self.ff_dim, self.dropout_rate,
                         attention_fn=self.attention, dtype=self.compute_dtype,
                         residual=self.residual, name=f"block_{i}")
        for i in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm(dtype=self.compute_dtype)

  def encode_events(self, x, layout, deterministic, timestamps):
    del timestamps  # SASRec has no notion of time
    return self._blocks(x, layout, deterministic)[0]

  def _blocks(self, x: jax.Array, layout: Layout, deterministic: bool):
    mask = layout.mask(causal=True)
    keys, values = [], []
    for block in self.blocks:
      x, k, v = block(x, mask, layout.valid, deterministic)
      keys.append(k)
      values.append(v)
    return self.final_norm(x), keys, values

  def newest_hidden(self, items: jax.Array, *, users: jax.Array | None = None,
                    timestamps: jax.Array | None = None) -> jax.Array:
    """[B, D] = `last_hidden(self(items), items)`, with the last block run at the newest event only."""
    del timestamps
    layout = self.layout(items, None, users)
    x = self.embed(items, layout, True, users)
    mask = layout.mask(causal=True)
    if not self.blocks:
      return last_hidden(self.final_norm(x), items)
    for block in self.blocks[:-1]:
      x, _, _ = block(x, mask, layout.valid, True)
    return self.final_norm(self.blocks[-1].query_at(x, layout.valid, newest_index(items)))[:, 0]

  def prefill(self, items: jax.Array, users: jax.Array | None = None,
              timestamps: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Encodes right-padded histories and returns (user representations [B, D], cache).

    The cache holds every layer's keys and values ([layers, B, max_len, H, Dh])
    and each row's length, so that `extend` can add one event in O(L) work
    instead of re-encoding the whole history in O(L^2). `users` [B, L] as in
    `__call__`; `timestamps` is ignored (the call shape of HSTU's cache).
    """
    del timestamps  # SASRec has no notion of time
    self._check_cacheable(items)
    layout = self.layout(items, None, users)
    hidden, keys, values = self._blocks(self.embed(items, layout, True, users), layout, True)
    pad = ((0, 0), (0, self.max_len - items.shape[1]), (0, 0), (0, 0))
    cache = {"keys": jnp.stack([jnp.pad(k, pad) for k in keys]),
             "values": jnp.stack([jnp.pad(v, pad) for v in values]),
             "length": jnp.sum(items > 0, axis=-1).astype(jnp.int32)}
    return last_hidden(hidden, items), cache

  def extend(self, cache: dict, new_items: jax.Array, users: jax.Array | None = None,
             timestamps: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Appends one event per row ([B]) and returns (user representations [B, D], cache).

    Rows must have fewer than `max_len` events before the call; once full, encode
    the newest events again with `prefill`. `users` [B] (user index + 1) when the
    model has `user_profiles`; `timestamps` is ignored.
    """
    del timestamps
    check_users(self.user_profiles, users)
    index = cache["length"]
    items = new_items[:, None]
    layout = Layout(items > 0, (items > 0).astype(jnp.int32), False)
    x = self.embed(items, layout, True, None if users is None else users[:, None],
                   positions=index[:, None])
    keys, values = [], []
    for layer, block in enumerate(self.blocks):
      x, k, v = block.step(x, cache["keys"][layer], cache["values"][layer], index)
      keys.append(k)
      values.append(v)
    cache = {"keys": jnp.stack(keys), "values": jnp.stack(values), "length": index + 1}
    return self.final_norm(x)[:, 0], cache


__all__ = ["SASRec", "last_hidden", "positions_in_sequence"]
