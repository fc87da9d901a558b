"""Mask specifications shared by every attention implementation.

A `MaskSpec` describes *which* key positions a query position may see, without
materialising an [Lq, Lk] matrix; implementations that can skip work (blockwise,
Pallas) read the structure, the reference implementation materialises it with
`dense_mask`. Every implementation evaluates element visibility through
`tile_mask`, so there is one definition of the semantics.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class BlockSparse:
  """BigBird-style "window + global + random" pattern at block granularity.

  Positions are grouped into blocks of `block_size` (for queries and keys
  alike). Query block i sees key block j when any of:
    * |i - j| <= window_blocks                 (local band),
    * i < global_blocks or j < global_blocks   (the first blocks are global:
                                                they see and are seen by all),
    * j is one of `random_blocks` key blocks drawn for row i.
  The random draw uses `numpy.random.default_rng(seed)` and depends only on
  (seed, number of query blocks, number of key blocks), so the same spec gives
  the same pattern in every trace, process and backend.
  """

  block_size: int = 64
  window_blocks: int = 1
  global_blocks: int = 1
  random_blocks: int = 1
  seed: int = 0

  def __post_init__(self):
    if self.block_size <= 0:
      raise ValueError(f"BlockSparse.block_size must be positive, got {self.block_size}")
    if min(self.window_blocks, self.global_blocks, self.random_blocks) < 0:
      raise ValueError(f"BlockSparse counts must be >= 0, got {self}")

  def pattern(self, q_len: int, kv_len: int) -> np.ndarray:
    """[ceil(Lq/bs), ceil(Lk/bs)] bool numpy array (True = block pair visible)."""
    return _block_pattern(self, q_len, kv_len)


@functools.lru_cache(maxsize=64)
def _block_pattern(spec: BlockSparse, q_len: int, kv_len: int) -> np.ndarray:
  nq = -(-q_len // spec.block_size)
  nk = -(-kv_len // spec.block_size)
  qi = np.arange(nq)[:, None]
  kj = np.arange(nk)[None, :]
  pattern = np.abs(qi - kj) <= spec.window_blocks
  pattern |= (qi < spec.global_blocks) | (kj < spec.global_blocks)
  rng = np.random.default_rng(spec.seed)
  for row in range(nq):
    free = np.flatnonzero(~pattern[row])
    take = min(spec.random_blocks, free.size)
    if take:
      pattern[row, rng.choice(free, size=take, replace=False)] = True
  pattern.setflags(write=False)
  return pattern


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Which keys each query may attend to. All constraints are AND-ed.

  Attributes:
    causal: query i sees keys j <= i (positions counted from the start of the
      arrays; with left padding the padded keys are removed by `kv_valid`).
    kv_valid: [B, Lk] bool, False for padded keys.
    q_segment_ids / kv_segment_ids: [B, Lq] / [B, Lk] int; a query sees only
      keys of its own segment (packed sequences). Segment id 0 is padding: a
      query or key with id 0 sees / is seen by nothing.
    window: (left, right) local window, query i sees keys in [i-left, i+right];
      None means unbounded.
    block_sparse: optional `BlockSparse` pattern (static).
  """

  causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
  kv_valid: jax.Array | None = None
  q_segment_ids: jax.Array | None = None
  kv_segment_ids: jax.Array | None = None
  window: tuple[int, int] | None = dataclasses.field(default=None, metadata=dict(static=True))
  block_sparse: BlockSparse | None = dataclasses.field(
      default=None, metadata=dict(static=True))

  @property
  def has_segments(self) -> bool:
    if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
      raise ValueError("MaskSpec: q_segment_ids and kv_segment_ids must be given together")
    return self.q_segment_ids is not None


def tile_mask(
    spec: MaskSpec | None,
    q_pos: jax.Array,
    kv_pos: jax.Array,
    *,
    lengths: tuple[int, int],
    kv_valid: jax.Array | None = None,
    q_seg: jax.Array | None = None,
    kv_seg: jax.Array | None = None,
) -> jax.Array | None:
  """Visibility of a tile of the attention matrix.

  Args:
    spec: supplies the static structure (causal, window, block_sparse).
    q_pos, kv_pos: [tq], [tk] int32 absolute positions of the tile's rows /
      columns.
    lengths: the unpadded (Lq, Lk); the block-sparse pattern depends on them.
    kv_valid: [B, tk] bool or None; q_seg / kv_seg: [B, tq] / [B, tk] or None.
      Callers pass the slices of the spec's arrays (possibly padded) that
      belong to this tile.

  Returns:
    [B or 1, 1, tq, tk] bool, or None when nothing is masked.
  """
  mask = None

  def conj(a, b):
    return b if a is None else a & b

  if spec is not None:
    q = q_pos[:, None]
    kv = kv_pos[None, :]
    if spec.causal:
      mask = conj(mask, (kv <= q)[None, None])
    if spec.window is not None:
      left, right = spec.window
      mask = conj(mask, ((kv >= q - left) & (kv <= q + right))[None, None])
    if spec.block_sparse is not None:
      bs = spec.block_sparse
      pattern = bs.pattern(*lengths)
      # Positions past the true lengths (padding added by an implementation)
      # are clipped into the last block; such keys are invalid anyway.
      qb = jnp.minimum(q_pos // bs.block_size, pattern.shape[0] - 1)
      kb = jnp.minimum(kv_pos // bs.block_size, pattern.shape[1] - 1)
      mask = conj(mask, jnp.asarray(pattern)[qb[:, None], kb[None, :]][None, None])
  if kv_valid is not None:
    mask = conj(mask, kv_valid[:, None, None, :].astype(bool))
  if q_seg is not None:
    same = q_seg[:, None, :, None] == kv_seg[:, None, None, :]
    mask = conj(mask, same & (q_seg != 0)[:, None, :, None])
  return mask


def dense_mask(spec: MaskSpec | None, batch: int, q_len: int, kv_len: int) -> jax.Array:
  """Materialises `spec` as a [B, 1, Lq, Lk] boolean array (True = may attend)."""
  full = jnp.ones((batch, 1, q_len, kv_len), dtype=bool)
  if spec is None:
    return full
  spec.has_segments  # validates the pair
  mask = tile_mask(spec, jnp.arange(q_len), jnp.arange(kv_len), lengths=(q_len, kv_len),
                   kv_valid=spec.kv_valid, q_seg=spec.q_segment_ids,
                   kv_seg=spec.kv_segment_ids)
  return full if mask is None else full & mask


def visible_rows(spec: MaskSpec | None, batch: int, q_len: int, kv_len: int,
                 chunk: int = 256) -> jax.Array | None:
  """[B, Lq] bool: does the query row see at least one key? None = all do.

  Implementations built on kernels that cannot express "no key at all" (they
  use a large finite negative logit and so average over every key) multiply
  their output by this. Evaluated in query chunks so that memory stays
  O(chunk * Lk) rather than O(Lq * Lk).
  """
  if spec is None:
    return None
  dynamic = spec.kv_valid is not None or spec.has_segments or spec.block_sparse is not None
  if not dynamic:
    # Causal alone always keeps key 0; a window keeps the diagonal while i < Lk.
    if spec.window is None:
      return None
    if min(spec.window) >= 0 and q_len <= kv_len:
      return None
  n_chunks = -(-q_len // chunk)
  pad = n_chunks * chunk - q_len
  q_seg = spec.q_segment_ids
  if q_seg is not None:
    q_seg = jnp.pad(q_seg, ((0, 0), (0, pad))).reshape(batch, n_chunks, chunk).swapaxes(0, 1)
  kv_pos = jnp.arange(kv_len)

  def one_chunk(args):
    start, seg = args
    m = tile_mask(spec, start + jnp.arange(chunk), kv_pos, lengths=(q_len, kv_len),
                  kv_valid=spec.kv_valid, q_seg=seg, kv_seg=spec.kv_segment_ids)
    if m is None:
      return jnp.ones((batch, chunk), bool)
    return jnp.broadcast_to(jnp.any(m, axis=-1)[:, 0], (batch, chunk))

  starts = jnp.arange(n_chunks, dtype=jnp.int32) * chunk
  rows = jax.lax.map(one_chunk, (starts, q_seg))  # [n_chunks, B, chunk]
  return rows.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :q_len]
