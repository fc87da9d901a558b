"""`xla` and `cudnn`: thin adapters over `jax.nn.dot_product_attention`.

`jax.nn.dot_product_attention` understands `is_causal`, `local_window_size`
and a dense boolean `mask`; everything else in a `MaskSpec` (key padding that
need not be a suffix, segment ids, block-sparse patterns) is passed as a
dense [B, 1, Lq, Lk] mask. The `xla` path materialises the logits anyway, so
that costs nothing extra; for `cudnn` it costs O(B * Lq * Lk) memory, which is
why `auto` only sends masks cuDNN can express natively to it.

Both kernels mask with a large *finite* negative number, so a row with no
visible key would average every value; we multiply such rows by zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recattn_jax.attention.mask import MaskSpec, dense_mask, visible_rows

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def _needs_dense(spec: MaskSpec | None, window_native: bool) -> bool:
  if spec is None:
    return False
  return (spec.kv_valid is not None or spec.has_segments or spec.block_sparse is not None
          or (spec.window is not None and not window_native))


def cudnn_window(spec: MaskSpec | None) -> tuple[bool, tuple[int, int] | None] | None:
  """(is_causal, local_window_size) that cuDNN can run natively, or None.

  cuDNN only has a left window on a causal mask; a window with right = 0 is
  causal by itself.
  """
  if spec is None or spec.window is None:
    return (spec is not None and spec.causal, None)
  left, right = spec.window
  if left < 0 or right < 0:
    return None
  if spec.causal or right == 0:
    return True, (left, 0)
  return None


def cudnn_native(spec: MaskSpec | None) -> bool:
  """True when cuDNN can apply `spec` without a dense O(L^2) mask."""
  return cudnn_window(spec) is not None and not _needs_dense(spec, window_native=True)


def _bias_4d(bias):
  if bias is None:
    return None
  bias = jnp.asarray(bias)
  return bias.reshape((1,) * (4 - bias.ndim) + bias.shape)


def _zero_invisible_rows(out, spec, batch, q_len, kv_len):
  rows = visible_rows(spec, batch, q_len, kv_len)
  if rows is None:
    return out
  return out * rows[:, :, None, None].astype(out.dtype)


def xla_attention(q, k, v, *, mask: MaskSpec | None, bias, scale: float) -> jax.Array:
  batch, q_len, _, _ = q.shape
  kv_len = k.shape[1]
  causal = mask is not None and mask.causal
  window = None if mask is None else mask.window
  dense = None
  if _needs_dense(mask, window_native=True):
    # Only the parts the kernel cannot express; causal / window go natively.
    dense = dense_mask(MaskSpec(kv_valid=mask.kv_valid, q_segment_ids=mask.q_segment_ids,
                                kv_segment_ids=mask.kv_segment_ids,
                                block_sparse=mask.block_sparse), batch, q_len, kv_len)
  out = jax.nn.dot_product_attention(
      q, k, v, bias=_bias_4d(bias), mask=dense, scale=scale, is_causal=causal,
      local_window_size=window, implementation="xla")
  return _zero_invisible_rows(out, mask, batch, q_len, kv_len)


def cudnn_attention(q, k, v, *, mask: MaskSpec | None, bias, scale: float) -> jax.Array:
  if jax.default_backend() != "gpu":
    raise RuntimeError(
        f"implementation='cudnn' needs a CUDA GPU, but JAX's default backend is "
        f"{jax.default_backend()!r}; use 'xla', 'blockwise' or 'auto'.")
  if q.dtype not in CUDNN_DTYPES:
    raise TypeError(f"implementation='cudnn' supports bfloat16/float16 inputs, got {q.dtype}; "
                    "cast q, k, v or use 'xla' / 'blockwise'.")
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  native = cudnn_window(mask)
  if native is None:
    causal, window = False, None
    dense = dense_mask(mask, batch, q_len, kv_len)
  else:
    causal, window = native
    dense = None
    if _needs_dense(mask, window_native=True):
      dense = dense_mask(MaskSpec(kv_valid=mask.kv_valid, q_segment_ids=mask.q_segment_ids,
                                  kv_segment_ids=mask.kv_segment_ids,
                                  block_sparse=mask.block_sparse), batch, q_len, kv_len)
  bias = _bias_4d(bias)
  if bias is not None:
    # cuDNN wants the full query / key extent in the bias.
    bias = jnp.broadcast_to(bias, bias.shape[:2] + (q_len, kv_len)).astype(q.dtype)
  out = jax.nn.dot_product_attention(
      q, k, v, bias=bias, mask=dense, scale=scale, is_causal=causal,
      local_window_size=window, implementation="cudnn")
  return _zero_invisible_rows(out, mask, batch, q_len, kv_len)
