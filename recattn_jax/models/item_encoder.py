"""Item encoders: what vector each item id gets, as the input and output embedding of a user encoder."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class ItemEncoder(nn.Module):
  """Maps item ids (0 = padding) to vectors; `table()` is the whole catalogue [num_items + 1, D]."""

  num_items: int
  features: int

  def setup(self):
    self.embedding = self.param("embedding", nn.initializers.normal(stddev=0.02),
                                (self.num_items + 1, self.features))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, ids, axis=0)

  def table(self) -> jax.Array:
    return self.embedding
