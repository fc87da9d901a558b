"""GRU4Rec (Hidasi et al., ICLR 2016, arXiv 1511.06939): a recurrent session encoder.

Item embeddings go through `num_layers` GRU layers, left to right; the hidden
state at each event predicts the next item, scored against the same item
table as every encoder (`SequenceEncoder`). The state starts at zero at the
first event of each user (each segment of a packed row), so packed users do
not leak into each other, and padding leaves it unchanged. There are no
position embeddings: order is the recurrence itself. Trained with the causal
objective and any next-item loss, like SASRec (the original used session-
parallel mini-batches and ranking losses; here it shares the library's
pipelines and losses so that the comparison with the attention encoders is
about the encoder alone).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.models.base import SequenceEncoder
from recattn_jax.models.dropout import Dropout
from recattn_jax.models.registry import ENCODERS


def _gru_step(cell: nn.GRUCell, carry: jax.Array, inputs):
  x, starts, valid = inputs
  carry = jnp.where(starts[:, None], jnp.zeros_like(carry), carry)
  new, _ = cell(carry, x)
  carry = jnp.where(valid[:, None], new, carry)
  return carry, carry


class GRULayer(nn.Module):
  """One GRU over [B, L, D], restarted where `starts` [B, L] and held where not `valid`."""

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, starts: jax.Array, valid: jax.Array) -> jax.Array:
    scan = nn.scan(_gru_step, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)
    cell = nn.GRUCell(self.features, dtype=self.dtype, name="cell")
    carry = jnp.zeros((x.shape[0], self.features), x.dtype)
    _, outputs = scan(cell, carry, (x, starts, valid))
    return outputs


@ENCODERS.register("gru4rec", objective="causal")
class GRU4Rec(SequenceEncoder):
  """Item embeddings -> GRU layers (dropout between) -> projection to the item space."""

  dropout_rate: float = 0.25

  uses_positions: ClassVar[bool] = False
  scale_embeddings: ClassVar[bool] = False

  def setup_blocks(self):
    self.layers = [GRULayer(self.embed_dim, self.compute_dtype, name=f"gru_{i}")
                   for i in range(self.num_layers)]
    self.layer_dropout = Dropout(self.dropout_rate)
    self.output = nn.Dense(self.embed_dim, dtype=self.compute_dtype, name="output")

  def encode_events(self, x, layout, deterministic, timestamps):
    del timestamps
    segments = layout.segment_ids
    before = jnp.pad(segments, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    starts = layout.valid & (segments != before)
    for layer in self.layers:
      x = self.layer_dropout(layer(x, starts, layout.valid), deterministic=deterministic)
    return self.output(x) * layout.valid[..., None].astype(x.dtype)
