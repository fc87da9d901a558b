"""Pre-LayerNorm transformer blocks that route attention through `recattn_jax.attention`.

Blocks run either over whole sequences (`__call__`) or over one new event per
row against a key/value cache of the earlier events (`step`), with the same
parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import MaskSpec, attend


class MultiHeadSelfAttention(nn.Module):
  features: int
  num_heads: int
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.features % self.num_heads:
      raise ValueError(f"model.embed_dim={self.features} is not divisible by model.num_heads={self.num_heads}")
    head_dim = self.features // self.num_heads
    self.qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype)
    self.out = nn.DenseGeneral(self.features, axis=(-2, -1), dtype=self.dtype)

  def __call__(self, x: jax.Array, mask: MaskSpec) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns the output and the keys and values ([B, L, H, Dh]) for a cache."""
    qkv = self.qkv(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    return self.out(attend(q, k, v, mask=mask, implementation=self.attention_impl)), k, v

  def step(self, x: jax.Array, k_cache: jax.Array, v_cache: jax.Array, index: jax.Array):
    """x [B, 1, D] at position `index` [B] attends to cached keys 0..index-1 and itself."""
    qkv = self.qkv(x)
    rows = jnp.arange(x.shape[0])
    k_cache = k_cache.at[rows, index].set(qkv[:, 0, 1])
    v_cache = v_cache.at[rows, index].set(qkv[:, 0, 2])
    visible = jnp.arange(k_cache.shape[1])[None, :] <= index[:, None]
    out = attend(qkv[:, :, 0], k_cache, v_cache, mask=MaskSpec(kv_valid=visible),
                 implementation=self.attention_impl)
    return self.out(out), k_cache, v_cache


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

  features: int
  num_heads: int
  ff_dim: int
  dropout_rate: float
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.attention_norm = nn.LayerNorm(dtype=self.dtype)
    self.attention = MultiHeadSelfAttention(self.features, self.num_heads, self.attention_impl, self.dtype)
    self.ff_norm = nn.LayerNorm(dtype=self.dtype)
    self.ff = FeedForward(self.ff_dim, self.dropout_rate, self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, x: jax.Array, mask: MaskSpec, valid: jax.Array, deterministic: bool):
    """Returns the block output and its attention keys and values."""
    h, k, v = self.attention(self.attention_norm(x), mask)
    x = x + self.dropout(h, deterministic=deterministic)
    x = x + self.dropout(self.ff(self.ff_norm(x), deterministic), deterministic=deterministic)
    return x * valid[..., None].astype(x.dtype), k, v

  def step(self, x: jax.Array, k_cache: jax.Array, v_cache: jax.Array, index: jax.Array):
    h, k_cache, v_cache = self.attention.step(self.attention_norm(x), k_cache, v_cache, index)
    x = x + h
    return x + self.ff(self.ff_norm(x), True), k_cache, v_cache
