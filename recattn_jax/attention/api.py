"""`attend`: dispatch to an attention implementation by name."""

from __future__ import annotations

from typing import Callable

import jax
from recattn_jax.attention.mask import MaskSpec
from recattn_jax.attention.reference import reference_attention

# name -> fn(q, k, v, *, mask, bias, scale) -> out
IMPLEMENTATIONS: dict[str, Callable[..., jax.Array]] = {
    "reference": reference_attention,
}


def _auto() -> str:
  return "reference"


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: MaskSpec | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    implementation: str = "auto",
) -> jax.Array:
  """Multi-head attention softmax(q k^T * scale + bias, masked) v.

  Args:
    q: [B, Lq, H, D]; k, v: [B, Lk, H, D].
    mask: which keys each query may see (see `MaskSpec`).
    bias: optional additive bias broadcastable to [B, H, Lq, Lk].
    scale: defaults to 1/sqrt(D).
    implementation: a key of `IMPLEMENTATIONS`, or "auto".
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attend expects [B, L, H, D] arrays, got q{q.shape} k{k.shape} v{v.shape}")
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attend: incompatible shapes q{q.shape} k{k.shape} v{v.shape}")
  name = _auto() if implementation == "auto" else implementation
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; "
                     f"choose one of {sorted(IMPLEMENTATIONS)} or 'auto'")
  if scale is None:
    scale = q.shape[-1] ** -0.5
  return IMPLEMENTATIONS[name](q, k, v, mask=mask, bias=bias, scale=scale)
