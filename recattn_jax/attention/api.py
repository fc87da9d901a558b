"""`attend`: dispatch to an attention implementation by name.

Two orthogonal choices:
  * `kind` is the maths: "softmax" (standard attention) or "pointwise"
    (HSTU: SiLU weights divided by the sequence length, no softmax);
  * `implementation` is the engine that computes it.
Every engine in `IMPLEMENTATIONS` computes softmax attention; the engines in
`POINTWISE_IMPLEMENTATIONS` compute pointwise attention.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from recattn_jax.attention.blockwise import blockwise_attention, blockwise_pointwise
from recattn_jax.attention.fused import (CUDNN_DTYPES, cudnn_attention, cudnn_native,
                                         xla_attention)
from recattn_jax.attention.mask import MaskSpec
from recattn_jax.attention.pallas import pallas_attention, pallas_supports, splash_supports
from recattn_jax.attention.reference import reference_attention, reference_pointwise

# name -> fn(q, k, v, *, mask, bias, scale) -> out
IMPLEMENTATIONS: dict[str, Callable[..., jax.Array]] = {
    "reference": reference_attention,
    "xla": xla_attention,
    "cudnn": cudnn_attention,
    "blockwise": blockwise_attention,
    "pallas": pallas_attention,
}

POINTWISE_IMPLEMENTATIONS: dict[str, Callable[..., jax.Array]] = {
    "reference": reference_pointwise,
    "blockwise": blockwise_pointwise,
}

KINDS = {"softmax": IMPLEMENTATIONS, "pointwise": POINTWISE_IMPLEMENTATIONS}

# On accelerators, above this many logits per (batch, head) `auto` leaves the
# materialising engines for `blockwise`, whose memory stays O(L).
AUTO_DENSE_MAX_LOGITS = 1024 * 1024


def _cudnn_ok(q: jax.Array, k: jax.Array, mask: MaskSpec | None, bias) -> bool:
  dim = q.shape[-1]
  if q.dtype not in CUDNN_DTYPES or dim % 8 or dim > 128:
    return False
  if bias is not None and (q.shape[1] % 2 or k.shape[1] % 2):
    return False  # cuDNN's bias-gradient kernel needs even lengths
  return cudnn_native(mask)


def select_implementation(q: jax.Array, k: jax.Array, *, mask: MaskSpec | None = None,
                          bias=None, kind: str = "softmax", backend: str | None = None) -> str:
  """The engine `implementation="auto"` uses (measurements in docs/attention.md).

  * CPU: `blockwise`, always. It skips masked tiles and stays in cache; it was
    as fast as `xla` at L=128 and 2-20x faster from L=512 on.
  * GPU, softmax, bf16/fp16 inputs:
      1. `cudnn` when the head dim is a multiple of 8 and <= 128 and the mask
         needs no dense array (causal and/or left window; no kv_valid,
         segments or block-sparse);
      2. else `pallas` when there is no bias, window or block-sparse pattern
         (it takes key padding and segment ids in O(L) memory);
      3. else as for float32 below.
  * TPU, softmax: `pallas` (the splash-attention kernel, which skips masked
    tiles) unless there is a bias or a block-sparse pattern; then as below.
  * GPU float32 and others, softmax: `xla` while
    Lq*Lk <= AUTO_DENSE_MAX_LOGITS, else `blockwise`.
  * pointwise: `blockwise` on CPU; elsewhere `reference` while
    Lq*Lk <= AUTO_DENSE_MAX_LOGITS, else `blockwise`.
  """
  backend = backend or jax.default_backend()
  dense_ok = q.shape[1] * k.shape[1] <= AUTO_DENSE_MAX_LOGITS
  if backend == "cpu":
    return "blockwise"
  if kind == "pointwise":
    return "reference" if dense_ok else "blockwise"
  if backend == "tpu" and splash_supports(mask, bias):
    return "pallas"
  if backend == "gpu" and q.dtype in CUDNN_DTYPES:
    if _cudnn_ok(q, k, mask, bias):
      return "cudnn"
    if pallas_supports(q, k, mask, bias):
      return "pallas"
  return "xla" if dense_ok else "blockwise"


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: MaskSpec | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    implementation: str = "auto",
    kind: str = "softmax",
) -> jax.Array:
  """Multi-head attention softmax(q k^T * scale + bias, masked) v.

  Args:
    q: [B, Lq, H, D]; k, v: [B, Lk, H, D].
    mask: which keys each query may see (see `MaskSpec`).
    bias: optional additive bias broadcastable to [B, H, Lq, Lk].
    scale: defaults to 1/sqrt(D).
    implementation: a key of `IMPLEMENTATIONS` (or of
      `POINTWISE_IMPLEMENTATIONS` for kind="pointwise"), or "auto".
    kind: "softmax", or "pointwise" for HSTU attention
      (SiLU(q k^T * scale + bias) / N, masked, times v; see `pointwise.py`).
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attend expects [B, L, H, D] arrays, got q{q.shape} k{k.shape} v{v.shape}")
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attend: incompatible shapes q{q.shape} k{k.shape} v{v.shape}")
  if kind not in KINDS:
    raise ValueError(f"unknown attention kind {kind!r}; choose one of {sorted(KINDS)}")
  registry = KINDS[kind]
  name = (select_implementation(q, k, mask=mask, bias=bias, kind=kind)
          if implementation == "auto" else implementation)
  if name not in registry:
    raise ValueError(f"unknown {kind} attention implementation {implementation!r}; "
                     f"choose one of {sorted(registry)} or 'auto'")
  if scale is None:
    scale = q.shape[-1] ** -0.5
  if bias is not None:
    bias = jnp.asarray(bias)
  return registry[name](q, k, v, mask=mask, bias=bias, scale=scale)


AttentionFn = Callable[..., jax.Array]  # attend's signature: (q, k, v, *, mask, bias, scale, kind)


@functools.lru_cache(maxsize=None)
def attention_fn(implementation: str = "auto") -> AttentionFn:
  """`attend` bound to one engine, for modules that take an `attention_fn` (Flax's idiom).

  The same name gives the same function object, so modules built from equal
  configs compare equal.
  """
  if implementation != "auto" and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be 'auto' or one of "
                     f"{sorted(IMPLEMENTATIONS)}, got {implementation!r}")
  return functools.partial(attend, implementation=implementation)
