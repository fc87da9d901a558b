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

`scoring.fold_item_bias` turns this into a plain dot product (one extra column), so
code written for `hidden @ table.T` (the full-softmax loss, `target_ranks`)
scores BERT4Rec unchanged. At evaluation the history is followed by one mask
token (`eval_batches(..., append_mask_id=model.mask_id)`), and the user
representation is the output at that newest position (`last_hidden`).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.models.base import SequenceEncoder
from recattn_jax.models.item_encoder import table_rows
from recattn_jax.models.registry import ENCODERS
from recattn_jax.models.transformer import TransformerBlock


@ENCODERS.register("bert4rec", objective="cloze")
class BERT4Rec(SequenceEncoder):
  """Item (or mask) + learned positional embeddings, LayerNorm, pre-LN bidirectional blocks.

  `__call__` returns the output-transformed hidden states [B, L, D], ready to
  be scored against `item_embeddings()` + `item_bias()`.
  """

  ff_dim: int = 256
  output_bias: bool = True

  has_item_bias: ClassVar[bool] = True
  scale_embeddings: ClassVar[bool] = False

  @property
  def mask_id(self) -> int:
    """The input id of the [MASK] token; not a row of the item table."""
    return self.num_items + 1

  def setup_blocks(self):
    self.mask_embed = self.param("mask_embed", nn.initializers.normal(stddev=0.02),
                                 (self.embed_dim,))
    self.embed_norm = nn.LayerNorm(dtype=self.compute_dtype)
    self.blocks = [
        TransformerBlock(self.embed_dim, self.num_heads, self.ff_dim, self.dropout_rate,
                         attention_fn=self.attention, dtype=self.compute_dtype, name=f"block_{i}")
        for i in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm(dtype=self.compute_dtype)
    self.output_dense = nn.Dense(self.embed_dim, dtype=self.compute_dtype)
    self.output_norm = nn.LayerNorm(dtype=self.compute_dtype)
    if self.output_bias:
      self.bias = self.param("output_bias", nn.initializers.zeros, (table_rows(self.num_items),))

  def token_vectors(self, items: jax.Array) -> jax.Array:
    is_mask = items == self.mask_id
    return jnp.where(is_mask[..., None], self.mask_embed,
                     self.item_embed(jnp.where(is_mask, 0, items)))

  def normalize_embeddings(self, x: jax.Array) -> jax.Array:
    return self.embed_norm(x)

  def encode_events(self, x, layout, deterministic, timestamps):
    del timestamps  # BERT4Rec has no notion of time
    mask = layout.mask(causal=False)
    for block in self.blocks:
      x, _, _ = block(x, mask, layout.valid, deterministic)
    x = self.final_norm(x)
    return self.output_norm(nn.gelu(self.output_dense(x)))

  def item_bias(self, padded: bool = False) -> jax.Array:
    """[num_items + 1] (`padded`: [table_rows]) float32 output bias (zeros when `output_bias` is off)."""
    if self.output_bias:
      return self.bias if padded else self.bias[:self.num_items + 1]
    return super().item_bias(padded)
