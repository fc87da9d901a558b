"""Plain materialised softmax attention: the ground truth for every other implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recattn_jax.attention.mask import MaskSpec, dense_mask


def reference_attention(q, k, v, *, mask: MaskSpec | None, bias, scale: float) -> jax.Array:
  batch, q_len, _, _ = q.shape
  kv_len = k.shape[1]
  # Softmax statistics in float32 whatever the input dtype.
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  allowed = dense_mask(mask, batch, q_len, kv_len)
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  # A query that sees no key gets a zero output instead of NaN.
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.exp(logits - row_max)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  weights = weights / jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)
