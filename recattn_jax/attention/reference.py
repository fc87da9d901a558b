"""Plain materialised attention: the ground truth for every other implementation.

Memory is O(B * H * Lq * Lk); use it for tests and short sequences only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recattn_jax.attention.mask import MaskSpec, dense_mask
from recattn_jax.attention.pointwise import pointwise_normalizer


def _logits(q, k, bias, scale):
  # Statistics in float32 whatever the input dtype.
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return logits


def reference_attention(q, k, v, *, mask: MaskSpec | None, bias, scale: float) -> jax.Array:
  batch, q_len, _, _ = q.shape
  kv_len = k.shape[1]
  logits = _logits(q, k, bias, scale)
  allowed = dense_mask(mask, batch, q_len, kv_len)
  logits = jnp.where(allowed, logits, -jnp.inf)
  # The shift cancels mathematically; stop_gradient keeps its (zero) gradient
  # out of the graph, where the max's tie-counting can turn 0/0 under
  # recomputation.
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  # A query that sees no key gets a zero output instead of NaN.
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.exp(logits - row_max)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  weights = weights / jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def pointwise_weights(q, k, *, mask: MaskSpec | None, bias, scale: float) -> jax.Array:
  """HSTU's float32 weights SiLU(q.k * scale + bias) / N, [B, H, Lq, Lk]; 0 where masked."""
  batch, q_len, _, _ = q.shape
  kv_len = k.shape[1]
  logits = _logits(q, k, bias, scale)
  allowed = dense_mask(mask, batch, q_len, kv_len)
  # Zero masked logits before SiLU so that a -inf bias there cannot make NaN.
  weights = jnp.where(allowed, jax.nn.silu(jnp.where(allowed, logits, 0.0)), 0.0)
  norm = pointwise_normalizer(mask, batch, q_len, kv_len)
  return weights / norm[:, None, :, None]


def reference_pointwise(q, k, v, *, mask: MaskSpec | None, bias, scale: float) -> jax.Array:
  """HSTU pointwise attention; see `pointwise.py` for the normaliser N."""
  weights = pointwise_weights(q, k, mask=mask, bias=bias, scale=scale)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)
