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

Serving: `prefill` / `extend` keep every layer's keys and values (and the
timestamps), as SASRec's do, so that one new event costs one query against
the cache, O(L), with the bias row of that query only. This needs
positions="start" and a norm that depends only on events <= i ("max_len" or
"causal").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import AttentionFn, MaskSpec, attend, pointwise_normalizer
from recattn_jax.attention.reference import pointwise_weights
from recattn_jax.models.base import Layout, SequenceEncoder, positions_in_sequence
from recattn_jax.models.dropout import Dropout
from recattn_jax.models.registry import ENCODERS
from recattn_jax.models.scoring import last_hidden
from recattn_jax.models.transformer import head_dim
from recattn_jax.models.user_context import check_users


def gap_buckets(gap: jax.Array, num_buckets: int, step: float) -> jax.Array:
  """int32 floor(log(max(gap, 1)) / step), clipped to [0, num_buckets]; gap >= 0 in seconds."""
  bucket = jnp.floor(jnp.log(jnp.maximum(gap, 1.0)) / step)
  return jnp.clip(bucket, 0, num_buckets).astype(jnp.int32)


def time_buckets(timestamps: jax.Array, num_buckets: int, step: float) -> jax.Array:
  """[B, L, L] int32 floor(log(max(|t_i - t_j|, 1)) / step), clipped to [0, num_buckets]."""
  t = timestamps.astype(jnp.float32)
  return gap_buckets(jnp.abs(t[:, :, None] - t[:, None, :]), num_buckets, step)


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
    buckets = None
    if timestamps is not None and self.num_time_buckets:
      buckets = time_buckets(timestamps, self.num_time_buckets, self.time_bucket_step)
    return self._bias(jnp.abs(index[:, None] - index[None, :])[None], buckets)

  def row(self, index: jax.Array, length: int, timestamps: jax.Array | None = None) -> jax.Array:
    """float32 [1 or B, heads, 1, length]: the bias of the query at `index` [B] (a cache step).

    `timestamps` [B, length] holds the query's own time at `index`; the same
    values as row `index` of `__call__`'s bias.
    """
    distance = jnp.abs(index[:, None] - jnp.arange(length)[None, :])[:, None]
    buckets = None
    if timestamps is not None and self.num_time_buckets:
      t = timestamps.astype(jnp.float32)
      query = jnp.take_along_axis(t, index[:, None], axis=1)
      gap = jnp.abs(query[:, :, None] - t[:, None, :])
      buckets = gap_buckets(gap, self.num_time_buckets, self.time_bucket_step)
    return self._bias(distance, buckets)

  def _bias(self, distance: jax.Array, time_bucket: jax.Array | None) -> jax.Array:
    """distance [1 or B, Lq, Lk], time buckets [B, Lq, Lk] or None -> [1 or B, heads, Lq, Lk]."""
    distance = jnp.minimum(distance, self.num_position_buckets - 1)
    bias = jnp.moveaxis(self.position[distance], -1, 1)
    if time_bucket is None:
      return bias
    weights = jnp.concatenate([jnp.zeros((1, self.heads), self.time.dtype), self.time])
    return bias + jnp.moveaxis(weights[time_bucket], -1, 1)


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
    return self.forward(x, mask, bias, valid, deterministic, row_scale,
                        capture_attention=capture_attention)[0]

  def forward(self, x: jax.Array, mask: MaskSpec, bias: jax.Array | None, valid: jax.Array,
              deterministic: bool, row_scale: jax.Array | None = None, *,
              capture_attention: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """As `__call__`, also returning the keys and values ([B, L, H, Dh]) for a cache."""
    u, v, q, k = self._project(x)
    scale = q.shape[-1] ** -0.5
    if capture_attention:
      heads, weights = explicit_pointwise(q, k, v, mask, bias, scale, row_scale)
      self.sow("intermediates", "attention_weights", weights)
    else:
      heads = self.attention_fn(q, k, v, mask=mask, bias=bias, scale=scale, kind="pointwise")
      if row_scale is not None:
        heads = heads * row_scale[:, :, None, None].astype(heads.dtype)
    x = self._output(x, heads, u, deterministic)
    return x * valid[..., None].astype(x.dtype), k, v

  def step(self, x: jax.Array, k_cache: jax.Array, v_cache: jax.Array, index: jax.Array,
           bias: jax.Array, row_scale: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, 1, D] at position `index` [B] attends to cached keys 0..index-1 and itself.

    `bias` [1 or B, H', 1, max_len] and `row_scale` [B, 1]: the query's rows of
    those the full pass takes. No dropout.
    """
    u, v, q, k = self._project(x)
    rows = jnp.arange(x.shape[0])
    k_cache = k_cache.at[rows, index].set(k[:, 0])
    v_cache = v_cache.at[rows, index].set(v[:, 0])
    visible = jnp.arange(k_cache.shape[1])[None, :] <= index[:, None]
    heads, _ = explicit_pointwise(q, k_cache, v_cache, MaskSpec(kv_valid=visible), bias,
                                  q.shape[-1] ** -0.5, row_scale)
    return self._output(x, heads, u, True), k_cache, v_cache

  def _project(self, x):
    uvqk = nn.silu(self.uvqk(self.input_norm(x)))
    return tuple(uvqk[:, :, i] for i in range(4))

  def _output(self, x, heads, u, deterministic):
    flat = x.shape[:2] + (-1,)
    gated = self.attention_norm(heads.reshape(flat)) * u.reshape(flat)
    return x + self.out(self.dropout(gated, deterministic=deterministic))


def explicit_pointwise(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec,
                       bias: jax.Array | None, scale: float,
                       row_scale: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Pointwise attention with its weights materialised: (out [B, Lq, H, Dh], weights [B, H, Lq, Lk]).

  The maths of the reference engine, times `row_scale` [B, Lq]; for captured
  weights and for a single cached query, where materialising costs O(L).
  """
  weights = pointwise_weights(q, k, mask=mask, bias=bias, scale=scale)
  if row_scale is not None:
    weights = weights * row_scale[:, None, :, None]
  heads = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
  return heads.astype(q.dtype), weights


@ENCODERS.register("hstu", objective="causal", batch_keys=("timestamps",), kv_cache=True)
class HSTU(SequenceEncoder):
  """Item + learned positional embeddings, causal HSTU blocks with relative bias, final LayerNorm.

  `__call__(items, segment_ids, timestamps=...)` maps left- or right-padded
  ids [B, L] (0 = padding) to hidden states [B, L, D]; `timestamps` [B, L]
  (seconds; only differences within a sequence matter, so pass them relative
  to a recent event to keep float32 precision) adds the time bias.
  `prefill`/`extend` keep a key/value cache for adding one event at a time.
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
    return self._blocks(x, layout, deterministic, timestamps)[0]

  def _blocks(self, x: jax.Array, layout: Layout, deterministic: bool,
              timestamps: jax.Array | None, keep_cache: bool = False):
    """(hidden states, keys, values); keys and values are per layer when `keep_cache`, else []."""
    mask = layout.mask(causal=True)
    # Within a segment array distance is event distance (segments are contiguous),
    # and pairs across segments or padding are masked, so one bias serves every layout.
    bias = self.relative_bias(x.shape[1], timestamps)
    row_scale = self._row_scale(mask, layout.segment_ids)
    keys, values = [], []
    for block in self.blocks:
      if keep_cache:
        x, k, v = block.forward(x, mask, bias, layout.valid, deterministic, row_scale)
        keys.append(k)
        values.append(v)
      else:
        # Through `__call__`, where `capture_attention_weights` reaches the block.
        x = block(x, mask, bias, layout.valid, deterministic, row_scale)
    return self.final_norm(x), keys, values

  def _row_scale(self, mask: MaskSpec, segment_ids: jax.Array) -> jax.Array | None:
    """[B, L] count / N_i turning `attend`'s per-sequence normaliser into `attention_norm`'s."""
    if self.attention_norm == "sequence":
      return None
    batch, length = segment_ids.shape
    count = pointwise_normalizer(mask, batch, length, length)
    return count / self._norm_at(positions_in_sequence(segment_ids, "start"))

  def _norm_at(self, position: jax.Array):
    """N_i at `position` (0 = oldest event) for the norms that see only events <= i."""
    if self.attention_norm == "max_len":
      return self.max_len
    if self.attention_norm == "causal":
      return (position + 1).astype(jnp.float32)
    raise ValueError(f"model.attention_norm must be 'max_len', 'causal' or 'sequence', "
                     f"got {self.attention_norm!r}")

  def prefill(self, items: jax.Array, users: jax.Array | None = None,
              timestamps: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Encodes right-padded histories and returns (user representations [B, D], cache).

    The cache holds every layer's keys and values ([layers, B, max_len, H, Dh]),
    each row's length and, when the model has a time bias and `timestamps`
    [B, L] are given, the timestamps [B, max_len] float32, so that `extend`
    adds one event in O(L) work. `users` [B, L] as in `__call__`.
    """
    self._check_cacheable(items)
    layout = self.layout(items, None, users)
    x = self.embed(items, layout, True, users)
    hidden, keys, values = self._blocks(x, layout, True, timestamps, keep_cache=True)
    pad = self.max_len - items.shape[1]
    kv_pad = ((0, 0), (0, pad), (0, 0), (0, 0))
    cache = {"keys": jnp.stack([jnp.pad(k, kv_pad) for k in keys]),
             "values": jnp.stack([jnp.pad(v, kv_pad) for v in values]),
             "length": jnp.sum(items > 0, axis=-1).astype(jnp.int32)}
    if timestamps is not None and self.num_time_buckets:
      cache["timestamps"] = jnp.pad(timestamps.astype(jnp.float32), ((0, 0), (0, pad)))
    return last_hidden(hidden, items), cache

  def extend(self, cache: dict, new_items: jax.Array, users: jax.Array | None = None,
             timestamps: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Appends one event per row ([B]) and returns (user representations [B, D], cache).

    Rows must have fewer than `max_len` events before the call; once full, encode
    the newest events again with `prefill`. `users` [B] as in SASRec's `extend`;
    `timestamps` [B] exactly when `prefill` had them (ignored without a time bias).
    """
    check_users(self.user_profiles, users)
    self._check_cacheable(new_items[:, None])
    index = cache["length"]
    times = None
    if self.num_time_buckets:
      if ("timestamps" in cache) != (timestamps is not None):
        raise ValueError("HSTU extend needs timestamps exactly when prefill was given them (with "
                         "some events' times unknown, no full pass gives the same outputs)")
      if timestamps is not None:
        rows = jnp.arange(index.shape[0])
        times = cache["timestamps"].at[rows, index].set(timestamps.astype(jnp.float32))
    items = new_items[:, None]
    layout = Layout(items > 0, (items > 0).astype(jnp.int32), False)
    x = self.embed(items, layout, True, None if users is None else users[:, None],
                   positions=index[:, None])
    bias = self.relative_bias.row(index, self.max_len, times)
    # The full pass's count / N_i at the newest event, whose count is index + 1.
    row_scale = ((index + 1).astype(jnp.float32) / self._norm_at(index))[:, None]
    keys, values = [], []
    for layer, block in enumerate(self.blocks):
      x, k, v = block.step(x, cache["keys"][layer], cache["values"][layer], index, bias, row_scale)
      keys.append(k)
      values.append(v)
    new_cache = {"keys": jnp.stack(keys), "values": jnp.stack(values), "length": index + 1}
    if times is not None:
      new_cache["timestamps"] = times
    return self.final_norm(x)[:, 0], new_cache

  def cache_problem(self) -> str | None:
    if self.attention_norm == "sequence":
      return ("a key/value cache needs model.hstu.attention_norm='max_len' or 'causal': "
              "'sequence' divides by the events after i too, so appending an event "
              "would change every cached output")
    return super().cache_problem()
