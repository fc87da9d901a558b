"""Pre-LayerNorm transformer blocks that route attention through `recattn_jax.attention`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import MaskSpec, attend


class MultiHeadSelfAttention(nn.Module):
  num_heads: int
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: MaskSpec) -> jax.Array:
    features = x.shape[-1]
    if features % self.num_heads:
      raise ValueError(f"model.embed_dim={features} is not divisible by model.num_heads={self.num_heads}")
    head_dim = features // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype, name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = attend(q, k, v, mask=mask, implementation=self.attention_impl)
    return nn.DenseGeneral(features, axis=(-2, -1), dtype=self.dtype, name="out")(out)


class FeedForward(nn.Module):
  hidden_dim: int
  dropout_rate: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    h = nn.Dense(self.hidden_dim, dtype=self.dtype)(x)
    h = nn.gelu(h)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.Dense(x.shape[-1], dtype=self.dtype)(h)


class TransformerBlock(nn.Module):
  """x + Attn(LN(x)), then x + FFN(LN(x)); padded positions are zeroed after each block."""

  num_heads: int
  ff_dim: int
  dropout_rate: float
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: MaskSpec, valid: jax.Array, deterministic: bool) -> jax.Array:
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = MultiHeadSelfAttention(self.num_heads, self.attention_impl, self.dtype)(h, mask)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = FeedForward(self.ff_dim, self.dropout_rate, self.dtype)(h, deterministic)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return x * valid[..., None].astype(x.dtype)
