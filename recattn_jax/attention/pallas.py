"""`pallas`: adapters over the Pallas attention kernels shipped with JAX.

* GPU: `jax.experimental.pallas.ops.gpu.attention.mha` (Triton). It takes
  causal masking and ONE segment-id array shared by queries and keys, no bias
  and no window. We add key padding ourselves: one extra head-dim channel that
  is 1 in q and 0 / -1e4/scale in k adds ~-1e4 to the logits of padded keys
  (free when D is not a power of two, since the kernel pads D to one anyway).
  Sequence lengths are padded to the kernel's block multiple the same way.
  No local windows or block-sparse patterns (use `blockwise`).
* TPU: `splash_attention` below, over the maintained splash-attention kernel
  `jax.experimental.pallas.ops.tpu.splash_attention` (`make_splash_mha`,
  vmapped over the batch; the kernel takes [heads, seq, head_dim] and does not
  scale q, so q is scaled first). Causal and `window` masks become the
  kernel's static `CausalMask` / `LocalMask` (whose tiles outside the mask are
  skipped); segment ids (separate q / kv arrays, Lq != Lk allowed) and key
  padding become the kernel's `SegmentIds`: queries of segment 0 get one
  sentinel id, padded / invalid keys another that no query has. Lengths are
  padded to a multiple of 128 (the kernel's lane width) and the blocks are the
  largest of 512 / 256 / 128 dividing that. Bias and block-sparse masks raise
  NotImplementedError (the kernel has no dense bias input).

No kernel has an "empty row" notion, so rows with no visible key are zeroed
afterwards (`_zero_invisible_rows`). Off their hardware both run in Pallas
interpret mode, which is how the tests check them on CPU:
`pallas_attention(..., interpret=True)` runs the GPU kernel, and
`splash_attention(..., interpret=True)` (or a `pltpu.InterpretParams()`, TPU
interpret mode) the TPU one (tests/test_splash.py). The splash path has not
been run on a real TPU.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


_SPLASH_LANES = 128  # the kernel's block edges must be multiples of this
_SPLASH_BLOCKS = (512, 256, 128)  # largest that divides the 128-padded length wins
_NO_QUERY_SEGMENT = int(np.iinfo(np.int32).min)  # queries that see nothing
_NO_KEY_SEGMENT = _NO_QUERY_SEGMENT + 1  # keys nobody sees; never equal to the above


def _splash_block(padded_len: int) -> int:
  return next(b for b in _SPLASH_BLOCKS if padded_len % b == 0)


def _splash_static_mask(mask: MaskSpec | None, lqp: int, lkp: int):
  """The static (shape-only) part of `mask` as a splash mask over the padded lengths.

  None when it hides every key from every query.

  `MaskSpec.window=(left, right)` keeps keys in [i-left, i+right], which is
  `LocalMask(window_size=(left, right), offset=0)` exactly; causal on top
  lowers `right` to min(right, 0). Positions are unchanged by the padding,
  which is appended at the end.
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  shape = (lqp, lkp)
  causal = mask is not None and mask.causal
  window = None if mask is None else mask.window
  if window is not None:
    left, right = window
    if causal:
      right = min(right, 0)
    # Beyond +-(Lq + Lk) a bound changes nothing; clipping keeps it in int32.
    bound = lqp + lkp
    left, right = (max(-bound, min(bound, int(x))) for x in (left, right))
    # Some row i in [0, Lq) must keep a key j in [0, Lk): i - left <= j <= i + right.
    if left + right < 0 or max(0, -right) > min(lqp - 1, lkp - 1 + left):
      return None  # nothing visible anywhere (the kernel's mask processing rejects that)
    return splash.LocalMask(shape, window_size=(left, right), offset=0)
  if causal:
    return splash.CausalMask(shape)
  return splash.FullMask(shape)


def _is_tpu_interpret_params(interpret) -> bool:
  try:
    from jax.experimental.pallas import tpu as pltpu
  except ImportError:  # pragma: no cover - depends on the JAX build
    return False
  return isinstance(interpret, pltpu.InterpretParams)


def splash_attention(q, k, v, *, mask: MaskSpec | None, bias, scale: float,
                     interpret: Any = False) -> jax.Array:
  """Softmax attention through the Pallas TPU splash-attention kernel.

  This is what `implementation="pallas"` runs on TPU (interpret=False). On
  CPU, `interpret=True` runs the same kernel code, vmapped over the batch as
  on TPU, in Pallas's generic interpreter (the grid as a JAX loop); a
  `pltpu.InterpretParams()` runs it in TPU interpret mode instead (simulated
  VMEM / DMAs, NaN-filled uninitialised memory, out-of-bounds reads raise),
  one example at a time since that interpreter rejects a vmapped kernel.

  Masks: causal and `window` (the kernel's CausalMask / LocalMask, tiles
  outside them are skipped), segment ids (separate q / kv ids, so Lq != Lk
  is fine) and key padding (as segment ids no query has; user segment ids
  must not be int32's two smallest values, the sentinels). Raises
  NotImplementedError for a bias or a block-sparse pattern.
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  if bias is not None:
    raise NotImplementedError(
        "implementation='pallas' on tpu: the splash-attention kernel has no bias input; "
        "use 'xla' or 'blockwise'")
  if mask is not None and mask.block_sparse is not None:
    raise NotImplementedError(
        "implementation='pallas' on tpu: block-sparse masks are not wired up to the "
        "splash kernel; use 'blockwise'")

  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  lqp = -(-q_len // _SPLASH_LANES) * _SPLASH_LANES
  lkp = -(-kv_len // _SPLASH_LANES) * _SPLASH_LANES
  block_q, block_kv = _splash_block(lqp), _splash_block(lkp)
  sizes = splash.BlockSizes(
      block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
      block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
      block_q_dq=block_q, block_kv_dq=block_kv)
  static = _splash_static_mask(mask, lqp, lkp)
  if static is None:
    return jnp.zeros_like(q)
  kernel = splash.make_splash_mha_single_device(
      splash.MultiHeadMask([static] * heads), block_sizes=sizes, interpret=interpret)

  segments = mask is not None and mask.has_segments
  kv_valid = None if mask is None else mask.kv_valid
  seg_ids = None
  if segments or kv_valid is not None or lqp != q_len or lkp != kv_len:
    q_seg = jnp.ones((batch, q_len), jnp.int32)
    kv_seg = jnp.ones((batch, kv_len), jnp.int32)
    kv_ok = jnp.ones((batch, kv_len), bool)
    if segments:
      q_seg = mask.q_segment_ids.astype(jnp.int32)
      kv_seg = mask.kv_segment_ids.astype(jnp.int32)
      kv_ok &= kv_seg != 0
    if kv_valid is not None:
      kv_ok &= kv_valid.astype(bool)
    q_seg = _pad(jnp.where(q_seg == 0, _NO_QUERY_SEGMENT, q_seg), 1, lqp, _NO_QUERY_SEGMENT)
    kv_seg = _pad(jnp.where(kv_ok, kv_seg, _NO_KEY_SEGMENT), 1, lkp, _NO_KEY_SEGMENT)
    seg_ids = splash.SegmentIds(q=q_seg, kv=kv_seg)

  # The kernel does not scale q; it takes [heads, seq, head_dim] per example.
  to_hld = lambda x, n: _pad(x, 1, n).transpose(0, 2, 1, 3)
  qs = (q.astype(jnp.float32) * scale).astype(q.dtype)
  args = (to_hld(qs, lqp), to_hld(k, lkp), to_hld(v, lkp))
  if seg_ids is not None:
    args += (seg_ids,)
  if _is_tpu_interpret_params(interpret):
    # JAX 0.12's TPU interpreter rejects a vmapped kernel (its grid gains the
    # batch axis, its dimension_semantics do not), so loop over the batch.
    out = jax.lax.map(lambda a: kernel(*a), args)
  else:
    out = jax.vmap(kernel)(*args)
  out = out.transpose(0, 2, 1, 3)[:, :q_len]
  return _zero_invisible_rows(out, mask, batch, q_len, kv_len)


def splash_supports(mask: MaskSpec | None, bias) -> bool:
  """Whether the TPU splash kernel takes this call (used by `auto` on TPU)."""
  return bias is None and (mask is None or mask.block_sparse is None)


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
  """Pallas flash attention for the current backend (see module docstring).

  GPU: the Triton kernel; TPU: `splash_attention`. `interpret=True` runs the
  GPU kernel in the Pallas interpreter on any backend (for the TPU kernel
  call `splash_attention(..., interpret=True)`).
  """
  backend = jax.default_backend()
  if interpret or backend == "gpu":
    return _gpu_mha(q, k, v, mask=mask, bias=bias, scale=scale, interpret=interpret)
  if backend == "tpu":
    return splash_attention(q, k, v, mask=mask, bias=bias, scale=scale, interpret=False)
  raise RuntimeError(
      f"implementation='pallas' has kernels for gpu and tpu only; JAX's default backend is "
      f"{backend!r}. Use 'blockwise' (or, for a slow interpreted check of the GPU / TPU "
      "kernel, pallas_attention(..., interpret=True) / splash_attention(..., interpret=True)).")
