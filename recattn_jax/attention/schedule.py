"""Which (query block, key block) pairs have any visible element.

The blockwise kernels iterate, for each query block, only over the key blocks
listed here (and, in the backward pass, for each key block over the listed
query blocks), so masked-out blocks cost nothing: causal masks do about half
the work, local windows and block-sparse patterns O(L) instead of O(L^2).

Flags are conservative: a pair is dropped only when no element can be
visible; element masks are still applied inside the visited tiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from recattn_jax.attention.mask import MaskSpec

_BIG = np.iinfo(np.int32).max


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockSchedule:
  """Visible block pairs as per-row index lists (visible ones first).

  fwd_idx[i, :fwd_cnt[i]] are the key blocks query block i must visit;
  bwd_idx[j, :bwd_cnt[j]] the query blocks key block j must visit.
  """

  fwd_idx: jax.Array  # [nq, nk] int32
  fwd_cnt: jax.Array  # [nq] int32
  bwd_idx: jax.Array  # [nk, nq] int32
  bwd_cnt: jax.Array  # [nk] int32


def static_block_flags(spec: MaskSpec | None, q_len: int, kv_len: int,
                       block_q: int, block_k: int) -> np.ndarray:
  """[nq, nk] numpy bool from the static structure (causal, window, block-sparse)."""
  nq = -(-q_len // block_q)
  nk = -(-kv_len // block_k)
  flags = np.ones((nq, nk), bool)
  if spec is None:
    return flags
  q_lo = np.arange(nq)[:, None] * block_q
  q_hi = np.minimum(q_lo + block_q, q_len) - 1
  k_lo = np.arange(nk)[None, :] * block_k
  k_hi = np.minimum(k_lo + block_k, kv_len) - 1
  if spec.causal:
    flags &= k_lo <= q_hi
  if spec.window is not None:
    left, right = spec.window
    flags &= (k_hi >= q_lo - left) & (k_lo <= q_hi + right)
  if spec.block_sparse is not None:
    bs = spec.block_sparse.block_size
    pattern = spec.block_sparse.pattern(q_len, kv_len)
    # OR-reduce the pattern over the pattern blocks each tile overlaps
    # (reduceat with repeated starts yields that single block, as needed when
    # the tile is smaller than a pattern block).
    rows = np.logical_or.reduceat(pattern, np.arange(nq) * block_q // bs, axis=0)
    flags &= np.logical_or.reduceat(rows, np.arange(nk) * block_k // bs, axis=1)
  return flags


def _segment_range(seg: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
  """Per-block min / max of the non-padding segment ids: [B, n] each."""
  b, length = seg.shape
  seg = seg.reshape(b, length // block, block)
  live = seg != 0
  lo = jnp.min(jnp.where(live, seg, _BIG), axis=-1)
  hi = jnp.max(jnp.where(live, seg, -_BIG), axis=-1)
  return lo, hi


def block_schedule(
    spec: MaskSpec | None,
    *,
    lengths: tuple[int, int],
    block_q: int,
    block_k: int,
    kv_valid: jax.Array | None,
    q_seg: jax.Array | None,
    kv_seg: jax.Array | None,
) -> BlockSchedule:
  """Builds the schedule; kv_valid / q_seg / kv_seg are already padded to block multiples."""
  flags = jnp.asarray(static_block_flags(spec, *lengths, block_q, block_k))
  nk = flags.shape[1]
  dynamic = None
  if kv_valid is not None:
    dynamic = jnp.any(kv_valid.reshape(kv_valid.shape[0], nk, block_k), axis=-1)[:, None, :]
  if q_seg is not None:
    q_lo, q_hi = _segment_range(q_seg.astype(jnp.int32), block_q)
    k_lo, k_hi = _segment_range(kv_seg.astype(jnp.int32), block_k)
    overlap = (jnp.maximum(q_lo[:, :, None], k_lo[:, None, :])
               <= jnp.minimum(q_hi[:, :, None], k_hi[:, None, :]))
    dynamic = overlap if dynamic is None else dynamic & overlap
  if dynamic is not None:
    # One schedule for the whole batch: a pair is visited if any row needs it.
    flags = flags & jnp.any(dynamic, axis=0)
  return _index_lists(flags)


def _index_lists(flags: jax.Array) -> BlockSchedule:
  def lists(f):
    # Stable sort on "not visible" puts the visible indices first, in order.
    idx = jnp.argsort(jnp.logical_not(f).astype(jnp.int8), axis=1, stable=True)
    return idx.astype(jnp.int32), jnp.sum(f, axis=1, dtype=jnp.int32)

  fwd_idx, fwd_cnt = lists(flags)
  bwd_idx, bwd_cnt = lists(flags.T)
  return BlockSchedule(fwd_idx, fwd_cnt, bwd_idx, bwd_cnt)
