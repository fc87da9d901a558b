"""Memory-efficient blockwise attention in pure JAX (any backend).

Flash-attention structure written with `lax` loops:
  * forward: for each query block, loop over the *visible* key blocks only
    (see `schedule.py`), keeping an online softmax (running max, sum and
    output accumulator) in float32; store only the output and the
    log-sum-exp per row;
  * backward (custom VJP): recompute the scores tile by tile; for each key
    block loop over its visible query blocks, accumulating dK, dV locally and
    dQ (and dBias) into float32 buffers.
Memory is O(B * L * H * D) plus one [B, H, block_q, block_k] tile, except for
a dense `bias`, which the caller already holds at O(L^2).

The same engine computes HSTU pointwise attention (`kind="pointwise"`): the
tile weights are SiLU(scores) / N instead of a softmax, so no running max or
log-sum-exp is needed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from recattn_jax.attention.mask import MaskSpec, tile_mask
from recattn_jax.attention.pointwise import pointwise_normalizer, silu_and_grad
from recattn_jax.attention.schedule import BlockSchedule, block_schedule

# Tile edge per backend (measured, docs/attention.md). CPU: 256 balances loop
# overhead against cache use. GPU: each tile is a few small kernels, so
# bigger tiles amortise launch and loop overhead (1024 was 2x faster than 512
# on an H100 at L=16k) at a cost of a few MiB of scores per tile.
DEFAULT_BLOCK = {"cpu": 256, "gpu": 1024, "tpu": 512}


def default_block(backend: str | None = None) -> int:
  return DEFAULT_BLOCK.get(backend or jax.default_backend(), 256)


@dataclasses.dataclass(frozen=True)
class _Config:
  kind: str
  scale: float
  block_q: int
  block_k: int
  lengths: tuple[int, int]  # unpadded (Lq, Lk): the mask geometry depends on them
  structure: MaskSpec | None  # the static part of the mask (no arrays)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Aux:
  """Non-differentiable per-call arrays, padded to block multiples."""

  schedule: BlockSchedule
  kv_valid: jax.Array | None  # [B, Lkp] bool
  q_seg: jax.Array | None  # [B, Lqp]
  kv_seg: jax.Array | None  # [B, Lkp]
  norm: jax.Array | None  # [B, Lqp] float32, pointwise only


def _rows(x: jax.Array, index, block: int, axis: int = 1) -> jax.Array:
  return lax.dynamic_slice_in_dim(x, index * block, block, axis=axis)


def _bias_tile(cfg: _Config, bias: jax.Array, i, j) -> jax.Array:
  # A size-1 (broadcast) query or key axis is shared by every tile.
  starts = (0, 0, i * cfg.block_q if bias.shape[2] > 1 else 0,
            j * cfg.block_k if bias.shape[3] > 1 else 0)
  sizes = (bias.shape[0], bias.shape[1], min(bias.shape[2], cfg.block_q),
           min(bias.shape[3], cfg.block_k))
  return lax.dynamic_slice(bias, starts, sizes)


def _scores(cfg: _Config, q_blk, k_blk, bias, aux: _Aux, i, j):
  """float32 scores [B, H, bq, bk] and the tile's mask (or None)."""
  s = jnp.einsum("bqhd,bkhd->bhqk", q_blk, k_blk, preferred_element_type=jnp.float32)
  s = s * cfg.scale
  if bias is not None:
    s = s + _bias_tile(cfg, bias, i, j).astype(jnp.float32)
  q_pos = i * cfg.block_q + jnp.arange(cfg.block_q, dtype=jnp.int32)
  kv_pos = j * cfg.block_k + jnp.arange(cfg.block_k, dtype=jnp.int32)
  mask = tile_mask(
      cfg.structure, q_pos, kv_pos, lengths=cfg.lengths,
      kv_valid=None if aux.kv_valid is None else _rows(aux.kv_valid, j, cfg.block_k),
      q_seg=None if aux.q_seg is None else _rows(aux.q_seg, i, cfg.block_q),
      kv_seg=None if aux.kv_seg is None else _rows(aux.kv_seg, j, cfg.block_k))
  return s, mask


def _pointwise_weights(s, mask, norm_blk):
  """SiLU(s) / N on visible elements, and d(weights)/ds."""
  if mask is not None:
    s = jnp.where(mask, s, 0.0)
  act, dact = silu_and_grad(s)
  inv = (1.0 / norm_blk)[:, None, :, None]
  if mask is not None:
    act = jnp.where(mask, act, 0.0)
    dact = jnp.where(mask, dact, 0.0)
  return act * inv, dact * inv


def _forward(cfg: _Config, q, k, v, bias, aux: _Aux):
  """Returns out [B, Lqp, H, D], lse [B, H, Lqp] (softmax) or None, visited tiles."""
  batch, lqp, heads, dim = q.shape
  bq, bk = cfg.block_q, cfg.block_k
  softmax = cfg.kind == "softmax"

  def query_block(i):
    q_blk = _rows(q, i, bq)
    norm_blk = None if softmax else _rows(aux.norm, i, bq)

    def step(n, carry):
      m, l, acc, visited = carry
      j = aux.schedule.fwd_idx[i, n]
      k_blk, v_blk = _rows(k, j, bk), _rows(v, j, bk)
      s, mask = _scores(cfg, q_blk, k_blk, bias, aux, i, j)
      if softmax:
        if mask is not None:
          s = jnp.where(mask, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        # Rows with nothing visible so far keep max -inf; shift by 0 instead
        # so that exp() gives 0 rather than NaN.
        shift = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
        p = jnp.exp(s - shift[..., None])
        corr = jnp.exp(m - shift)
        l = l * corr + jnp.sum(p, axis=-1)
        acc = acc * corr[..., None]
        m = m_new
      else:
        p, _ = _pointwise_weights(s, mask, norm_blk)
      acc = acc + jnp.einsum("bhqk,bkhd->bhqd", p.astype(v.dtype), v_blk,
                             preferred_element_type=jnp.float32)
      return m, l, acc, visited + 1

    init = (jnp.full((batch, heads, bq), -jnp.inf, jnp.float32),
            jnp.zeros((batch, heads, bq), jnp.float32),
            jnp.zeros((batch, heads, bq, dim), jnp.float32),
            jnp.zeros((), jnp.int32))
    m, l, acc, visited = lax.fori_loop(0, aux.schedule.fwd_cnt[i], step, init)
    if softmax:
      live = l > 0
      acc = acc / jnp.where(live, l, 1.0)[..., None]
      # +inf for rows that see nothing makes exp(s - lse) = 0 in the backward.
      lse = jnp.where(live, jnp.where(jnp.isneginf(m), 0.0, m) + jnp.log(jnp.where(live, l, 1.0)),
                      jnp.inf)
    else:
      lse = jnp.zeros((batch, heads, bq), jnp.float32)
    return acc.astype(q.dtype), lse, visited

  n_q = lqp // bq
  out, lse, visited = lax.map(query_block, jnp.arange(n_q, dtype=jnp.int32))
  # [nq, B, H, bq, D] -> [B, Lqp, H, D]
  out = out.transpose(1, 0, 3, 2, 4).reshape(batch, lqp, heads, dim)
  lse = lse.transpose(1, 2, 0, 3).reshape(batch, heads, lqp)
  return out, (lse if softmax else None), jnp.sum(visited)


def _backward(cfg: _Config, q, k, v, bias, aux: _Aux, out, lse, dout):
  batch, lqp, heads, dim = q.shape
  lkp = k.shape[1]
  bq, bk = cfg.block_q, cfg.block_k
  softmax = cfg.kind == "softmax"
  if softmax:
    # delta_i = sum_d dO_i * O_i, the softmax-Jacobian term, [B, H, Lqp].
    delta = jnp.einsum("bqhd,bqhd->bhq", dout.astype(jnp.float32), out.astype(jnp.float32))

  def key_block(carry, j):
    dq, dbias = carry
    k_blk, v_blk = _rows(k, j, bk), _rows(v, j, bk)

    def step(n, c):
      dk_acc, dv_acc, dq, dbias = c
      i = aux.schedule.bwd_idx[j, n]
      q_blk, do_blk = _rows(q, i, bq), _rows(dout, i, bq)
      s, mask = _scores(cfg, q_blk, k_blk, bias, aux, i, j)
      dp = jnp.einsum("bqhd,bkhd->bhqk", do_blk, v_blk, preferred_element_type=jnp.float32)
      if softmax:
        if mask is not None:
          s = jnp.where(mask, s, -jnp.inf)
        w = jnp.exp(s - _rows(lse, i, bq, axis=2)[..., None])
        ds = w * (dp - _rows(delta, i, bq, axis=2)[..., None])
      else:
        w, dw_ds = _pointwise_weights(s, mask, _rows(aux.norm, i, bq))
        ds = dp * dw_ds
      dv_acc = dv_acc + jnp.einsum("bhqk,bqhd->bkhd", w.astype(dout.dtype), do_blk,
                                   preferred_element_type=jnp.float32)
      dk_acc = dk_acc + cfg.scale * jnp.einsum(
          "bhqk,bqhd->bkhd", ds.astype(q.dtype), q_blk, preferred_element_type=jnp.float32)
      dq_blk = cfg.scale * jnp.einsum("bhqk,bkhd->bqhd", ds.astype(k.dtype), k_blk,
                                      preferred_element_type=jnp.float32)
      dq = lax.dynamic_update_slice_in_dim(dq, _rows(dq, i, bq) + dq_blk, i * bq, axis=1)
      if dbias is not None:
        dbias = _add_bias_tile(cfg, dbias, ds, i, j)
      return dk_acc, dv_acc, dq, dbias

    zeros = jnp.zeros((batch, bk, heads, dim), jnp.float32)
    dk_blk, dv_blk, dq, dbias = lax.fori_loop(
        0, aux.schedule.bwd_cnt[j], step, (zeros, zeros, dq, dbias))
    return (dq, dbias), (dk_blk, dv_blk)

  dq0 = jnp.zeros(q.shape, jnp.float32)
  dbias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
  n_k = lkp // bk
  (dq, dbias), (dk, dv) = lax.scan(key_block, (dq0, dbias0), jnp.arange(n_k, dtype=jnp.int32))
  dk = dk.swapaxes(0, 1).reshape(k.shape)
  dv = dv.swapaxes(0, 1).reshape(v.shape)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          None if bias is None else dbias.astype(bias.dtype))


def _add_bias_tile(cfg: _Config, dbias, ds, i, j):
  # Sum the tile gradient over the axes the bias broadcasts along.
  axes = tuple(a for a in range(4) if dbias.shape[a] == 1 and ds.shape[a] > 1)
  tile = jnp.sum(ds, axis=axes, keepdims=True) if axes else ds
  starts = (0, 0, i * cfg.block_q if dbias.shape[2] > 1 else 0,
            j * cfg.block_k if dbias.shape[3] > 1 else 0)
  current = lax.dynamic_slice(dbias, starts, tile.shape)
  return lax.dynamic_update_slice(dbias, current + tile, starts)


@functools.lru_cache(maxsize=None)
def _core(cfg: _Config):
  """custom_vjp attention for one static configuration."""

  @jax.custom_vjp
  def attention(q, k, v, bias, aux):
    return _forward(cfg, q, k, v, bias, aux)[0]

  def fwd(q, k, v, bias, aux):
    out, lse, _ = _forward(cfg, q, k, v, bias, aux)
    return out, (q, k, v, bias, aux, out, lse)

  def bwd(res, dout):
    q, k, v, bias, aux, out, lse = res
    dq, dk, dv, dbias = _backward(cfg, q, k, v, bias, aux, out, lse, dout)
    return dq, dk, dv, dbias, None

  attention.defvjp(fwd, bwd)
  return attention


def _pad_axis(x: jax.Array | None, axis: int, target: int, value: Any = 0):
  if x is None or x.shape[axis] == target:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, target - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _prepare(q, k, v, *, mask, bias, scale, kind, block_q, block_k):
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  block_q = block_q or default_block()
  block_k = block_k or default_block()
  bq, bk = min(block_q, q_len), min(block_k, kv_len)
  lqp, lkp = -(-q_len // bq) * bq, -(-kv_len // bk) * bk
  structure = None
  kv_valid = q_seg = kv_seg = norm = None
  if mask is not None:
    structure = MaskSpec(causal=mask.causal, window=mask.window,
                         block_sparse=mask.block_sparse)
    kv_valid = mask.kv_valid
    if mask.has_segments:
      q_seg = _pad_axis(mask.q_segment_ids, 1, lqp)
      kv_seg = _pad_axis(mask.kv_segment_ids, 1, lkp)
  if kv_valid is not None or lkp != kv_len:
    if kv_valid is None:
      kv_valid = jnp.ones((batch, kv_len), bool)
    kv_valid = _pad_axis(kv_valid.astype(bool), 1, lkp, False)
  if kind == "pointwise":
    norm = _pad_axis(pointwise_normalizer(mask, batch, q_len, kv_len), 1, lqp, 1.0)
  if bias is not None:
    bias = jnp.asarray(bias)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    if bias.shape[2] not in (1, q_len) or bias.shape[3] not in (1, kv_len):
      raise ValueError(f"bias {bias.shape} is not broadcastable to [B, H, {q_len}, {kv_len}]")
    if bias.shape[0] not in (1, batch) or bias.shape[1] not in (1, heads):
      raise ValueError(f"bias {bias.shape} is not broadcastable to [{batch}, {heads}, Lq, Lk]")
    if bias.shape[2] > 1:
      bias = _pad_axis(bias, 2, lqp)
    if bias.shape[3] > 1:
      bias = _pad_axis(bias, 3, lkp)
  schedule = block_schedule(structure, lengths=(q_len, kv_len), block_q=bq, block_k=bk,
                            kv_valid=kv_valid, q_seg=q_seg, kv_seg=kv_seg)
  cfg = _Config(kind=kind, scale=float(scale), block_q=bq, block_k=bk,
                lengths=(q_len, kv_len), structure=structure)
  aux = _Aux(schedule=schedule, kv_valid=kv_valid, q_seg=q_seg, kv_seg=kv_seg, norm=norm)
  q = _pad_axis(q, 1, lqp)
  k = _pad_axis(k, 1, lkp)
  v = _pad_axis(v, 1, lkp)
  return cfg, q, k, v, bias, aux


def blockwise_attention(q, k, v, *, mask: MaskSpec | None, bias, scale: float,
                        kind: str = "softmax", block_q: int | None = None,
                        block_k: int | None = None) -> jax.Array:
  """Blockwise attention; same contract as `reference_attention` / `reference_pointwise`.

  Lengths need not be multiples of the block sizes (inputs are padded
  internally); a bias's padded entries never reach a visible element. The
  mask's batch dimension is shared by one block schedule, so a tile is
  skipped only if it is invisible for every batch row.
  """
  if kind not in ("softmax", "pointwise"):
    raise ValueError(f"kind must be 'softmax' or 'pointwise', got {kind!r}")
  q_len = q.shape[1]
  cfg, q, k, v, bias, aux = _prepare(q, k, v, mask=mask, bias=bias, scale=scale, kind=kind,
                                     block_q=block_q, block_k=block_k)
  return _core(cfg)(q, k, v, bias, aux)[:, :q_len]


def blockwise_stats(q, k, v, *, mask: MaskSpec | None, bias=None, scale: float | None = None,
                    kind: str = "softmax", block_q: int | None = None,
                    block_k: int | None = None) -> dict[str, jax.Array | int]:
  """Forward pass that also counts the tiles its loops actually computed.

  Returns {"out", "computed_tiles", "total_tiles"}; for tests and tuning.
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  q_len = q.shape[1]
  cfg, q, k, v, bias, aux = _prepare(q, k, v, mask=mask, bias=bias, scale=scale, kind=kind,
                                     block_q=block_q, block_k=block_k)
  out, _, visited = _forward(cfg, q, k, v, bias, aux)
  total = (q.shape[1] // cfg.block_q) * (k.shape[1] // cfg.block_k)
  return {"out": out[:, :q_len], "computed_tiles": visited, "total_tiles": total}


def blockwise_pointwise(q, k, v, *, mask: MaskSpec | None, bias, scale: float) -> jax.Array:
  return blockwise_attention(q, k, v, mask=mask, bias=bias, scale=scale, kind="pointwise")
