"""HSTU-style generative user encoder (Zhai et al. 2024, arXiv 2402.17152).

Each block, on x [B, L, D]:

    U, V, Q, K = split(SiLU(f1(LN(x))))                 (per head, Dh = D / H)
    A V       = sum_{j <= i} SiLU(Q_i K_j / sqrt(Dh) + rab_ij) / N_i * V_j
    x        <- x + f2(dropout(LN(A V) * U))

where rab is a learned relative attention bias: one weight per distance |i-j|
(distances past `num_position_buckets - 1` share the last weight) plus, when
timestamps are given, one weight per log bucket of |t_i - t_j|. There is no
feed-forward sub-layer: the gate U and f2 take its place. A final LayerNorm
follows the last block.

`N_i` (`attention_norm`): "max_len" (default) divides by the model's
`max_len`, as the reference divides by its maximum sequence length, so the
output keeps HSTU's "how much history matched" magnitude; "causal" divides by
the number of events up to i (a mean). Both depend only on events <= i.
`attend`'s own normaliser, "sequence", counts every event of i's sequence,
later ones included: under a causal mask that tells position i how many
events follow it during training, which evaluation (always at the newest
event) never sees; it is kept as an option. `attend` divides by that count
and the block rescales its output by count / N_i, which is exact because the
attention is linear in the weights. None of the three depends on padding or
packing.

Differences from the reference code (generative-recommenders): the time bias
buckets |t_i - t_j| (the reference buckets t_{i+1} - t_j) and bucket 0
(|dt| < e^step seconds) has a fixed zero weight, so equal timestamps give the
same outputs as no timestamps (a constant offset is the position weights'
job anyway); queries and keys are scaled by 1/sqrt(Dh); layers use affine
LayerNorms.

Memory: the bias is materialised for the attention engines at
[1, H', L, L] without timestamps and [B, H', L, L] with them (H' = H with
`bias_per_head`, else 1), O(L^2) per head as the reference engine needs
anyway; the blockwise engine reads it tile by tile but still receives it whole.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import AttentionFn, MaskSpec, attend, pointwise_normalizer
from recattn_jax.attention.reference import pointwise_weights
from recattn_jax.models.base import SequenceEncoder, positions_in_sequence
from recattn_jax.models.dropout import Dropout
from recattn_jax.models.registry import ENCODERS
from recattn_jax.models.transformer import head_dim


def time_buckets(timestamps: jax.Array, num_buckets: int, step: float) -> jax.Array:
  """[B, L, L] int32 floor(log(max(|t_i - t_j|, 1)) / step), clipped to [0, num_buckets]."""
  t = timestamps.astype(jnp.float32)
  gap = jnp.abs(t[:, :, None] - t[:, None, :])
  bucket = jnp.floor(jnp.log(jnp.maximum(gap, 1.0)) / step)
  return jnp.clip(bucket, 0, num_buckets).astype(jnp.int32)


class RelativeBias(nn.Module):
  """Learned relative-position (+ optional relative-time) attention bias."""

  num_position_buckets: int
  num_time_buckets: int = 128
  time_bucket_step: float = 0.301
  heads: int = 1

  def setup(self):
    init = nn.initializers.normal(stddev=0.02)
    self.position = self.param("position", init, (self.num_position_buckets, self.heads))
    if self.num_time_buckets:
      # Buckets 1..num_time_buckets; bucket 0 is fixed at zero (see the module docstring).
      self.time = self.param("time", init, (self.num_time_buckets, self.heads))

  def __call__(self, length: int, timestamps: jax.Array | None = None) -> jax.Array:
    """float32 [1 or B, heads, L, L]."""
    index = jnp.arange(length)
    distance = jnp.minimum(jnp.abs(index[:, None] - index[None, :]), self.num_position_buckets - 1)
    bias = jnp.transpose(self.position[distance], (2, 0, 1))[None]
    if timestamps is None or not self.num_time_buckets:
      return bias
    weights = jnp.concatenate([jnp.zeros((1, self.heads), self.time.dtype), self.time])
    buckets = time_buckets(timestamps, self.num_time_buckets, self.time_bucket_step)
    return bias + jnp.transpose(weights[buckets], (0, 3, 1, 2))


class HSTUBlock(nn.Module):
  """x + f2(dropout(LN(pointwise_attention(Q, K, V; rab)) * U)); padding zeroed after the block.

  `row_scale` [B, L] multiplies the attention output (see `attention_norm`).
  """

  CAPTURES_ATTENTION = True  # see models.transformer.capture_attention_weights

  features: int
  num_heads: int
  dropout_rate: float
  attention_fn: AttentionFn = attend
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.input_norm = nn.LayerNorm(dtype=self.dtype)
    self.uvqk = nn.DenseGeneral((4, self.num_heads, head_dim(self.features, self.num_heads)),
                                dtype=self.dtype)
    self.attention_norm = nn.LayerNorm(dtype=self.dtype)
    self.out = nn.Dense(self.features, dtype=self.dtype)
    self.dropout = Dropout(self.dropout_rate)

  def __call__(self, x: jax.Array, mask: MaskSpec, bias: jax.Array | None, valid: jax.Array,
               deterministic: bool, row_scale: jax.Array | None = None, *,
               capture_attention: bool = False) -> jax.Array:
    """`capture_attention` sows the weights [B, H, Lq, Lk] that multiply the values
    ("intermediates" / "attention_weights", row scaling included), as `MultiHeadSelfAttention`."""
    uvqk = nn.silu(self.uvqk(self.input_norm(x)))
    u, v, q, k = (uvqk[:, :, i] for i in range(4))
    scale = q.shape[-1] ** -0.5
    if capture_attention:
      weights = pointwise_weights(q, k, mask=mask, bias=bias, scale=scale)
      if row_scale is not None:
        weights = weights * row_scale[:, None, :, None]
      self.sow("intermediates", "attention_weights", weights)
      heads = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                         preferred_element_type=jnp.float32).astype(q.dtype)
    else:
      heads = self.attention_fn(q, k, v, mask=mask, bias=bias, scale=scale, kind="pointwise")
      if row_scale is not None:
        heads = heads * row_scale[:, :, None, None].astype(heads.dtype)
    flat = x.shape[:2] + (-1,)
    gated = self.attention_norm(heads.reshape(flat)) * u.reshape(flat)
    x = x + self.out(self.dropout(gated, deterministic=deterministic))
    return x * valid[..., None].astype(x.dtype)


@ENCODERS.register("hstu", objective="causal", batch_keys=("timestamps",))
class HSTU(SequenceEncoder):
  """Item + learned positional embeddings, causal HSTU blocks with relative bias, final LayerNorm.

  `__call__(items, segment_ids, timestamps=...)` maps left- or right-padded
  ids [B, L] (0 = padding) to hidden states [B, L, D]; `timestamps` [B, L]
  (seconds; only differences within a sequence matter, so pass them relative
  to a recent event to keep float32 precision) adds the time bias.
  """

  num_position_buckets: int = 0  # 0: one per distance 0..max_len-1
  num_time_buckets: int = 128  # 0: no time bias parameters
  time_bucket_step: float = 0.301
  bias_per_head: bool = False
  attention_norm: str = "max_len"  # or "causal", "sequence" (see the module docstring)

  def setup_blocks(self):
    self.relative_bias = RelativeBias(self.num_position_buckets or self.max_len,
                                      self.num_time_buckets, self.time_bucket_step,
                                      self.num_heads if self.bias_per_head else 1)
    self.blocks = [
        HSTUBlock(self.embed_dim, self.num_heads, self.dropout_rate, attention_fn=self.attention,
                  dtype=self.compute_dtype, name=f"block_{i}")
        for i in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm(dtype=self.compute_dtype)

  def encode_events(self, x, layout, deterministic, timestamps):
    """`timestamps` None: no time bias."""
    mask = layout.mask(causal=True)
    # Within a segment array distance is event distance (segments are contiguous),
    # and pairs across segments or padding are masked, so one bias serves every layout.
    bias = self.relative_bias(x.shape[1], timestamps)
    row_scale = self._row_scale(mask, layout.segment_ids)
    for block in self.blocks:
      x = block(x, mask, bias, layout.valid, deterministic, row_scale)
    return self.final_norm(x)

  def _row_scale(self, mask: MaskSpec, segment_ids: jax.Array) -> jax.Array | None:
    """[B, L] count / N_i turning `attend`'s per-sequence normaliser into `attention_norm`'s."""
    if self.attention_norm == "sequence":
      return None
    batch, length = segment_ids.shape
    count = pointwise_normalizer(mask, batch, length, length)
    if self.attention_norm == "max_len":
      return count / self.max_len
    if self.attention_norm == "causal":
      return count / (positions_in_sequence(segment_ids, "start") + 1).astype(jnp.float32)
    raise ValueError(f"model.attention_norm must be 'max_len', 'causal' or 'sequence', "
                     f"got {self.attention_norm!r}")
