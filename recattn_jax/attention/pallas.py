"""`pallas`: adapters over the Pallas flash-attention kernels shipped with JAX.

* GPU: `jax.experimental.pallas.ops.gpu.attention.mha` (Triton). It takes
  causal masking and ONE segment-id array shared by queries and keys, no bias
  and no window. We add key padding ourselves: one extra head-dim channel that
  is 1 in q and 0 / -1e4/scale in k adds ~-1e4 to the logits of padded keys
  (free when D is not a power of two, since the kernel pads D to one anyway).
  Sequence lengths are padded to the kernel's block multiple the same way.
* TPU: `jax.experimental.pallas.ops.tpu.flash_attention` (separate q / kv
  segment ids and a dense bias); key padding becomes kv segment id -1.
  Written against the kernel's documented signature but NOT run here: no TPU.

Neither supports local windows or block-sparse patterns through this adapter
(use `blockwise`), and neither has an "empty row" notion, so rows with no
visible key are zeroed afterwards. On CPU the GPU kernel runs in Pallas
interpret mode (`interpret=True`), which is how the tests exercise it.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from recattn_jax.attention.mask import MaskSpec, visible_rows

_PAD_LOGIT = -1e4  # exp(-1e4) == 0 in float32, and k * scale stays in fp16 range
_GPU_BLOCK = 128


def _next_pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def _unsupported(mask: MaskSpec | None, bias, backend: str, allow_bias: bool):
  if bias is not None and not allow_bias:
    raise NotImplementedError(f"implementation='pallas' on {backend}: the kernel has no bias "
                              "input; use 'cudnn', 'xla' or 'blockwise'")
  if mask is not None and (mask.window is not None or mask.block_sparse is not None):
    raise NotImplementedError(f"implementation='pallas' on {backend}: local windows and "
                              "block-sparse masks are not wired up; use 'blockwise'")


def _zero_invisible_rows(out, mask, batch, q_len, kv_len):
  rows = visible_rows(mask, batch, q_len, kv_len)
  if rows is None:
    return out
  # `where`, not a product: a kernel may leave NaN in rows it thinks are empty.
  return jnp.where(rows[:, :, None, None], out, jnp.zeros((), out.dtype))


def _pad(x, axis, size, value=0):
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _gpu_mha(q, k, v, *, mask: MaskSpec | None, bias, scale: float, interpret: bool):
  try:
    with warnings.catch_warnings():
      # Deprecated in favour of the tokamax package, still shipped.
      warnings.simplefilter("ignore", DeprecationWarning)
      from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  except ImportError as e:  # pragma: no cover - depends on the JAX build
    raise RuntimeError(f"implementation='pallas': this JAX ({jax.__version__}) has no "
                       f"Pallas GPU attention kernel: {e}") from e
  _unsupported(mask, bias, "gpu", allow_bias=False)
  batch, q_len, heads, dim = q.shape
  kv_len = k.shape[1]
  segments = mask is not None and mask.has_segments
  if segments and q_len != kv_len:
    raise NotImplementedError("implementation='pallas' on gpu: segment ids need Lq == Lk "
                              "(the kernel shares one segment array)")
  block = _GPU_BLOCK if max(q_len, kv_len) >= _GPU_BLOCK else _next_pow2(max(q_len, kv_len, 16))
  lqp, lkp = -(-q_len // block) * block, -(-kv_len // block) * block
  if segments:
    lqp = lkp = max(lqp, lkp)
  kv_valid = None if mask is None else mask.kv_valid
  need_valid = kv_valid is not None or lkp != kv_len
  dim_p = _next_pow2(max(dim + int(need_valid), 16))

  qp = _pad(_pad(q, 1, lqp), 3, dim_p)
  kp = _pad(_pad(k, 1, lkp), 3, dim_p)
  vp = _pad(_pad(v, 1, lkp), 3, dim_p)
  if need_valid:
    valid = jnp.ones((batch, kv_len), bool) if kv_valid is None else kv_valid.astype(bool)
    valid = _pad(valid, 1, lkp, False)
    penalty = jnp.where(valid, 0.0, _PAD_LOGIT / scale).astype(k.dtype)
    qp = qp.at[..., dim].set(jnp.ones((), q.dtype))
    kp = kp.at[..., dim].set(penalty[:, :, None])
  seg = None
  if segments:
    seg = _pad(mask.q_segment_ids.astype(jnp.int32), 1, lqp)
  sizes = gpu_attention.BlockSizes(
      block_q=block, block_k=block, block_q_dkv=min(32, block), block_kv_dkv=min(32, block),
      block_q_dq=min(32, block), block_kv_dq=min(32, block))
  out = gpu_attention.mha(qp, kp, vp, seg, sm_scale=scale,
                          causal=mask is not None and mask.causal,
                          block_sizes=sizes, interpret=interpret)
  out = out[:, :q_len, :, :dim]
  return _zero_invisible_rows(out, mask, batch, q_len, kv_len)


def _tpu_flash(q, k, v, *, mask: MaskSpec | None, bias, scale: float):  # pragma: no cover
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

  _unsupported(mask, bias, "tpu", allow_bias=True)
  batch, q_len, heads, dim = q.shape
  kv_len = k.shape[1]
  block = 128
  lqp, lkp = -(-q_len // block) * block, -(-kv_len // block) * block
  to_bhld = lambda x, n: _pad(x, 1, n).transpose(0, 2, 1, 3)
  q_seg = jnp.ones((batch, q_len), jnp.int32)
  kv_seg = jnp.ones((batch, kv_len), jnp.int32)
  kv_ok = jnp.ones((batch, kv_len), bool)
  if mask is not None:
    if mask.has_segments:
      q_seg = mask.q_segment_ids.astype(jnp.int32)
      kv_seg = mask.kv_segment_ids.astype(jnp.int32)
      kv_ok &= kv_seg != 0
    if mask.kv_valid is not None:
      kv_ok &= mask.kv_valid.astype(bool)
  # Padding ids: -2 for queries of segment 0, -1 for invisible keys; never equal.
  q_seg = _pad(jnp.where(q_seg == 0, -2, q_seg), 1, lqp, -2)
  kv_seg = _pad(jnp.where(kv_ok, kv_seg, -1), 1, lkp, -1)
  ab = None
  if bias is not None:
    ab = jnp.asarray(bias, jnp.float32)
    ab = jnp.broadcast_to(ab.reshape((1,) * (4 - ab.ndim) + ab.shape),
                          (batch, heads, q_len, kv_len))
    ab = _pad(_pad(ab, 2, lqp), 3, lkp)
  out = tpu_flash.flash_attention(
      to_bhld(q, lqp), to_bhld(k, lkp), to_bhld(v, lkp), ab,
      tpu_flash.SegmentIds(q=q_seg, kv=kv_seg),
      causal=mask is not None and mask.causal, sm_scale=scale)
  out = out.transpose(0, 2, 1, 3)[:, :q_len]
  return _zero_invisible_rows(out, mask, batch, q_len, kv_len)


def pallas_supports(q: jax.Array, k: jax.Array, mask: MaskSpec | None, bias) -> bool:
  """Whether the GPU kernel takes this call (used by `auto`)."""
  if bias is not None:
    return False
  if mask is not None:
    if mask.window is not None or mask.block_sparse is not None:
      return False
    if mask.has_segments and q.shape[1] != k.shape[1]:
      return False
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      from jax.experimental.pallas.ops.gpu import attention  # noqa: F401
  except ImportError:  # pragma: no cover - depends on the JAX build
    return False
  return True


def pallas_attention(q, k, v, *, mask: MaskSpec | None, bias, scale: float,
                     interpret: bool = False) -> jax.Array:
  """Pallas flash attention for the current backend (see module docstring)."""
  backend = jax.default_backend()
  if interpret or backend == "gpu":
    return _gpu_mha(q, k, v, mask=mask, bias=bias, scale=scale, interpret=interpret)
  if backend == "tpu":
    return _tpu_flash(q, k, v, mask=mask, bias=bias, scale=scale)
  raise RuntimeError(
      f"implementation='pallas' has kernels for gpu and tpu only; JAX's default backend is "
      f"{backend!r}. Use 'blockwise' (or pallas_attention(..., interpret=True) for a slow "
      "interpreted check).")
