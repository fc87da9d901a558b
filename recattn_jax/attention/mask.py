"""Mask specifications shared by every attention implementation.

A `MaskSpec` describes *which* key positions a query position may see, without
materialising an [Lq, Lk] matrix; implementations that can skip work (blockwise,
Pallas) read the structure, the reference implementation materialises it with
`dense_mask`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Which keys each query may attend to. All constraints are AND-ed.

  Attributes:
    causal: query i sees keys j <= i (positions counted from the start of the
      arrays; with left padding the padded keys are removed by `kv_valid`).
    kv_valid: [B, Lk] bool, False for padded keys.
    q_segment_ids / kv_segment_ids: [B, Lq] / [B, Lk] int; a query sees only
      keys of its own segment (packed sequences). Segment id 0 is padding.
    window: (left, right) local window, query i sees keys in [i-left, i+right];
      None means unbounded.
  """

  causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
  kv_valid: jax.Array | None = None
  q_segment_ids: jax.Array | None = None
  kv_segment_ids: jax.Array | None = None
  window: tuple[int, int] | None = dataclasses.field(default=None, metadata=dict(static=True))


def dense_mask(spec: MaskSpec | None, batch: int, q_len: int, kv_len: int) -> jax.Array:
  """Materialises `spec` as a [B, 1, Lq, Lk] boolean array (True = may attend)."""
  mask = jnp.ones((batch, 1, q_len, kv_len), dtype=bool)
  if spec is None:
    return mask
  q_pos = jnp.arange(q_len)[:, None]
  kv_pos = jnp.arange(kv_len)[None, :]
  if spec.causal:
    mask &= (kv_pos <= q_pos)[None, None]
  if spec.window is not None:
    left, right = spec.window
    mask &= ((kv_pos >= q_pos - left) & (kv_pos <= q_pos + right))[None, None]
  if spec.kv_valid is not None:
    mask &= spec.kv_valid[:, None, None, :].astype(bool)
  if spec.q_segment_ids is not None or spec.kv_segment_ids is not None:
    if spec.q_segment_ids is None or spec.kv_segment_ids is None:
      raise ValueError("MaskSpec: q_segment_ids and kv_segment_ids must be given together")
    mask &= (spec.q_segment_ids[:, None, :, None] == spec.kv_segment_ids[:, None, None, :])
  return mask
