"""Pieces of HSTU-style pointwise attention shared by its implementations.

    out_i = sum_j visible_ij * SiLU(q_i . k_j * scale + bias_ij) / N_i * v_j

No softmax: the weights are not normalised against each other, so the output
magnitude carries "how much" history matched, which HSTU found useful for
recommendation. HSTU divides by the *padded* maximum sequence length; that
makes a sequence's output depend on how much padding its batch happens to
have. We divide by N_i = the number of valid keys in query i's own sequence
(its segment when segment ids are given, else its batch row's `kv_valid`
count, else Lk), clamped to >= 1. With unpadded, unpacked batches the two
coincide.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recattn_jax.attention.mask import MaskSpec


def pointwise_normalizer(spec: MaskSpec | None, batch: int, q_len: int, kv_len: int) -> jax.Array:
  """[B, Lq] float32 N_i (see module docstring); O(L log L) memory and time."""
  if spec is None:
    return jnp.full((batch, q_len), float(kv_len), jnp.float32)
  valid = (jnp.ones((batch, kv_len), bool) if spec.kv_valid is None
           else spec.kv_valid.astype(bool))
  if not spec.has_segments:
    count = jnp.sum(valid, axis=-1, dtype=jnp.float32)[:, None]
    return jnp.broadcast_to(jnp.maximum(count, 1.0), (batch, q_len))

  def per_row(q_seg, kv_seg, ok):
    # Segment 0 is padding: drop invalid keys by relabelling them 0.
    keys = jnp.sort(jnp.where(ok, kv_seg, 0))
    n = (jnp.searchsorted(keys, q_seg, side="right")
         - jnp.searchsorted(keys, q_seg, side="left"))
    return jnp.where(q_seg == 0, 1, jnp.maximum(n, 1)).astype(jnp.float32)

  return jax.vmap(per_row)(spec.q_segment_ids, spec.kv_segment_ids, valid)


def silu_and_grad(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  sig = jax.nn.sigmoid(x)
  return x * sig, sig * (1.0 + x * (1.0 - sig))
