"""BERT4Rec (Sun et al., CIKM 2019, arXiv 1904.06690): a bidirectional encoder trained by cloze.

Inputs are item ids (0 = padding) in which some events are replaced by
`mask_id = num_items + 1` (see `recattn_jax.data.cloze`). The mask token has
its own learned vector, outside the item table, so that the table keeps the
[num_items + 1, D] shape every encoder shares and the mask is never a
candidate. Every event attends to every other event of its sequence (its
segment when packed); the hidden state at a masked position goes through
BERT4Rec's output transform (dense, GELU, LayerNorm) and is scored against the
shared item table plus a per-item output bias:

    logits = hidden @ item_embeddings().T + item_bias()

`fold_item_bias` turns this into a plain dot product (one extra column), so
code written for `hidden @ table.T` (the full-softmax loss, `target_ranks`)
scores BERT4Rec unchanged. At evaluation the history is followed by one mask
token (`eval_batches(..., append_mask_id=model.mask_id)`), and the user
representation is the output at that newest position (`last_hidden`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import MaskSpec
from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.social import UserProfiles
from recattn_jax.models.dropout import Dropout
from recattn_jax.models.item_encoder import ItemEncoder
from recattn_jax.models.sasrec import positions_in_sequence
from recattn_jax.models.transformer import TransformerBlock
from recattn_jax.models.user_context import UserContext, check_users


class BERT4Rec(nn.Module):
  """Item (or mask) + learned positional embeddings, LayerNorm, pre-LN bidirectional blocks.

  `__call__` returns the output-transformed hidden states [B, L, D], ready to
  be scored against `item_embeddings()` (+ `item_bias()`).
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
  output_bias: bool = True
  # What an item's vector is made of ("id", "content", "both"; see ItemEncoder).
  item_features: ItemFeatures | None = None
  item_representation: str = "id"
  item_id_dropout: float = 0.0
  # A per-user context added to every event (see models/user_context.py); None: no context.
  user_profiles: UserProfiles | None = None

  @property
  def mask_id(self) -> int:
    """The input id of the [MASK] token; not a row of the item table."""
    return self.num_items + 1

  def setup(self):
    self.item_embed = ItemEncoder(self.num_items, self.embed_dim, item_features=self.item_features,
                                  representation=self.item_representation,
                                  id_dropout=self.item_id_dropout, name="item_embed")
    self.mask_embed = self.param("mask_embed", nn.initializers.normal(stddev=0.02),
                                 (self.embed_dim,))
    self.pos_embed = nn.Embed(self.max_len, self.embed_dim,
                              embedding_init=nn.initializers.normal(stddev=0.02), name="pos_embed")
    self.embed_norm = nn.LayerNorm(dtype=self.dtype)
    self.input_dropout = Dropout(self.dropout_rate)
    self.blocks = [
        TransformerBlock(self.embed_dim, self.num_heads, self.ff_dim, self.dropout_rate,
                         self.attention_impl, self.dtype, name=f"block_{i}")
        for i in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm(dtype=self.dtype)
    self.user_context = (None if self.user_profiles is None
                         else UserContext(self.user_profiles, self.embed_dim, name="user_context"))
    self.output_dense = nn.Dense(self.embed_dim, dtype=self.dtype)
    self.output_norm = nn.LayerNorm(dtype=self.dtype)
    if self.output_bias:
      self.bias = self.param("output_bias", nn.initializers.zeros, (self.num_items + 1,))

  def __call__(self, items: jax.Array, segment_ids: jax.Array | None = None, *,
               deterministic: bool = True, timestamps: jax.Array | None = None,
               users: jax.Array | None = None) -> jax.Array:
    """`segment_ids` (0 = padding) marks packed rows; `timestamps` is accepted and unused.

    `users` [B, L] (user index + 1) is required exactly when the model has `user_profiles`.
    """
    del timestamps  # BERT4Rec has no notion of time; accepted so that callers can be uniform.
    check_users(self.user_profiles, users)
    if items.shape[-1] > self.max_len:
      raise ValueError(f"sequence length {items.shape[-1]} exceeds model.max_len={self.max_len}")
    valid = items > 0
    packed = segment_ids is not None
    segment_ids = jnp.where(valid, segment_ids, 0) if packed else valid.astype(jnp.int32)
    is_mask = items == self.mask_id
    x = jnp.where(is_mask[..., None], self.mask_embed,
                  self.item_embed(jnp.where(is_mask, 0, items)))
    x = x + self.pos_embed(positions_in_sequence(segment_ids, self.positions))
    if self.user_context is not None:
      x = x + self.user_context(users, self.item_embed)
    x = self.input_dropout(self.embed_norm(x), deterministic=deterministic)
    x = (x * valid[..., None]).astype(self.dtype)
    mask = MaskSpec(causal=False, kv_valid=valid,
                    q_segment_ids=segment_ids if packed else None,
                    kv_segment_ids=segment_ids if packed else None)
    for block in self.blocks:
      x, _, _ = block(x, mask, valid, deterministic)
    x = self.final_norm(x)
    return self.output_norm(nn.gelu(self.output_dense(x)))

  def item_embeddings(self, deterministic: bool = True) -> jax.Array:
    """[num_items + 1, D]; row 0 is padding and is never a valid prediction.

    With `deterministic=False` the item encoder's id dropout (if any) applies.
    """
    return self.item_embed.table(deterministic=deterministic)

  def item_bias(self) -> jax.Array:
    """[num_items + 1] float32 output bias (zeros when `output_bias` is off)."""
    if self.output_bias:
      return self.bias
    return jnp.zeros((self.num_items + 1,), jnp.float32)

  def score_items(self, hidden: jax.Array) -> jax.Array:
    """float32 logits [..., num_items + 1] of `hidden` [..., D]; padding (row 0) at -1e30."""
    logits = jnp.einsum("...d,nd->...n", hidden, self.item_embeddings().astype(hidden.dtype),
                        preferred_element_type=jnp.float32) + self.item_bias()
    return logits.at[..., 0].set(-1e30)


def fold_item_bias(hidden: jax.Array, table: jax.Array,
                   bias: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(hidden [..., D+1], table [N+1, D+1]) whose dot products equal hidden @ table.T + bias.

  Appends a constant 1 to every hidden state and the bias as the table's last
  column, so scorers that only take (users, table) include the bias.
  """
  ones = jnp.ones(hidden.shape[:-1] + (1,), hidden.dtype)
  return (jnp.concatenate([hidden, ones], axis=-1),
          jnp.concatenate([table, bias[:, None].astype(table.dtype)], axis=-1))
