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

from recattn_jax.attention import MaskSpec, attend, pointwise_normalizer
from recattn_jax.attention.reference import pointwise_weights
from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.social import UserProfiles
from recattn_jax.models.dropout import Dropout
from recattn_jax.models.item_encoder import ItemEncoder
from recattn_jax.models.sasrec import positions_in_sequence
from recattn_jax.models.user_context import UserContext, check_users


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
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.features % self.num_heads:
      raise ValueError(f"model.embed_dim={self.features} is not divisible by "
                       f"model.num_heads={self.num_heads}")
    head_dim = self.features // self.num_heads
    self.input_norm = nn.LayerNorm(dtype=self.dtype)
    self.uvqk = nn.DenseGeneral((4, self.num_heads, head_dim), dtype=self.dtype)
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
      heads = attend(q, k, v, mask=mask, bias=bias, scale=scale, kind="pointwise",
                     implementation=self.attention_impl)
      if row_scale is not None:
        heads = heads * row_scale[:, :, None, None].astype(heads.dtype)
    flat = x.shape[:2] + (-1,)
    gated = self.attention_norm(heads.reshape(flat)) * u.reshape(flat)
    x = x + self.out(self.dropout(gated, deterministic=deterministic))
    return x * valid[..., None].astype(x.dtype)


class HSTU(nn.Module):
  """Item + learned positional embeddings, causal HSTU blocks with relative bias, final LayerNorm.

  `__call__(items, segment_ids, timestamps=...)` maps left- or right-padded
  ids [B, L] (0 = padding) to hidden states [B, L, D]; `timestamps` [B, L]
  (seconds; only differences within a sequence matter, so pass them relative
  to a recent event to keep float32 precision) adds the time bias.
  """

  num_items: int
  max_len: int
  embed_dim: int = 64
  num_layers: int = 2
  num_heads: int = 2
  dropout_rate: float = 0.2
  positions: str = "end"
  attention_impl: str = "auto"
  dtype: jnp.dtype = jnp.float32
  num_position_buckets: int | None = None  # None: one per distance 0..max_len-1
  num_time_buckets: int = 128  # 0: no time bias parameters
  time_bucket_step: float = 0.301
  bias_per_head: bool = False
  attention_norm: str = "max_len"  # or "causal", "sequence" (see the module docstring)
  # What an item's vector is made of ("id", "content", "both"; see ItemEncoder).
  item_features: ItemFeatures | None = None
  item_representation: str = "id"
  item_id_dropout: float = 0.0
  # A per-user context added to every event (see models/user_context.py); None: no context.
  user_profiles: UserProfiles | None = None

  def setup(self):
    self.item_embed = ItemEncoder(self.num_items, self.embed_dim, item_features=self.item_features,
                                  representation=self.item_representation,
                                  id_dropout=self.item_id_dropout, name="item_embed")
    self.pos_embed = nn.Embed(self.max_len, self.embed_dim,
                              embedding_init=nn.initializers.normal(stddev=0.02), name="pos_embed")
    self.input_dropout = Dropout(self.dropout_rate)
    self.relative_bias = RelativeBias(self.num_position_buckets or self.max_len,
                                      self.num_time_buckets, self.time_bucket_step,
                                      self.num_heads if self.bias_per_head else 1)
    self.blocks = [
        HSTUBlock(self.embed_dim, self.num_heads, self.dropout_rate, self.attention_impl,
                  self.dtype, name=f"block_{i}")
        for i in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm(dtype=self.dtype)
    self.user_context = (None if self.user_profiles is None
                         else UserContext(self.user_profiles, self.embed_dim, name="user_context"))

  def __call__(self, items: jax.Array, segment_ids: jax.Array | None = None, *,
               deterministic: bool = True, timestamps: jax.Array | None = None,
               users: jax.Array | None = None) -> jax.Array:
    """`segment_ids` (0 = padding) marks packed rows; `timestamps` None: no time bias.

    `users` [B, L] (user index + 1) is required exactly when the model has `user_profiles`.
    """
    check_users(self.user_profiles, users)
    if items.shape[-1] > self.max_len:
      raise ValueError(f"sequence length {items.shape[-1]} exceeds model.max_len={self.max_len}")
    valid = items > 0
    packed = segment_ids is not None
    segment_ids = jnp.where(valid, segment_ids, 0) if packed else valid.astype(jnp.int32)
    positions = positions_in_sequence(segment_ids, self.positions)
    x = self.item_embed(items) * (self.embed_dim ** 0.5) + self.pos_embed(positions)
    if self.user_context is not None:
      x = x + self.user_context(users, self.item_embed)
    x = self.input_dropout(x, deterministic=deterministic)
    x = (x * valid[..., None]).astype(self.dtype)
    mask = MaskSpec(causal=True, kv_valid=valid,
                    q_segment_ids=segment_ids if packed else None,
                    kv_segment_ids=segment_ids if packed else None)
    # Within a segment array distance is event distance (segments are contiguous),
    # and pairs across segments or padding are masked, so one bias serves every layout.
    bias = self.relative_bias(items.shape[-1], timestamps)
    row_scale = self._row_scale(mask, segment_ids)
    for block in self.blocks:
      x = block(x, mask, bias, valid, deterministic, row_scale)
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

  def item_embeddings(self, deterministic: bool = True) -> jax.Array:
    """[num_items + 1, D]; row 0 is padding and is never a valid prediction.

    With `deterministic=False` the item encoder's id dropout (if any) applies.
    """
    return self.item_embed.table(deterministic=deterministic)
