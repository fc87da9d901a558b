"""Transformer blocks that route attention through `recattn_jax.attention`.

Blocks are pre-LayerNorm (`residual="input"`), or the SASRec authors' variant
(`residual="normed"`), whose residuals start from the layer-normed stream and
whose attention takes its keys and values from the un-normed one.

Blocks run either over whole sequences (`__call__`) or over one new event per
row against a key/value cache of the earlier events (`step`), with the same
parameters.

With `capture_attention=True` (or through `capture_attention_weights`, which
turns it on inside any encoder without touching the encoder's code) the
attention is computed explicitly and its probabilities [B, H, Lq, Lk] are sown
into the "intermediates" collection as "attention_weights"; otherwise the
fused/blockwise engines run as usual and nothing is materialised.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import AttentionFn, MaskSpec, attend
from recattn_jax.attention.mask import dense_mask
from recattn_jax.models.dropout import Dropout


def head_dim(features: int, num_heads: int) -> int:
  """The per-head width; the one place that checks that heads divide the width."""
  if num_heads < 1 or features % num_heads:
    raise ValueError(f"embedding width {features} (model.*.embed_dim) is not divisible by "
                     f"num_heads={num_heads}")
  return features // num_heads


class MultiHeadSelfAttention(nn.Module):
  # `capture_attention_weights` turns on `capture_attention` in modules that say so.
  CAPTURES_ATTENTION = True

  features: int
  num_heads: int
  attention_fn: AttentionFn = attend
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.qkv = nn.DenseGeneral((3, self.num_heads, head_dim(self.features, self.num_heads)),
                               dtype=self.dtype)
    self.out = nn.DenseGeneral(self.features, axis=(-2, -1), dtype=self.dtype)

  def __call__(self, x: jax.Array, mask: MaskSpec, *, kv_input: jax.Array | None = None,
               capture_attention: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns the output and the keys and values ([B, L, H, Dh]) for a cache.

    Queries come from `x`, keys and values from `kv_input` (default `x`).
    `capture_attention` also sows the attention probabilities ("intermediates"
    / "attention_weights", [B, H, Lq, Lk]); apply with mutable=["intermediates"].
    """
    q, k, v = self._project(x, kv_input)
    if capture_attention:
      heads, weights = explicit_attention(q, k, v, mask)
      self.sow("intermediates", "attention_weights", weights)
    else:
      heads = self.attention_fn(q, k, v, mask=mask)
    return self.out(heads), k, v

  def _project(self, x: jax.Array, kv_input: jax.Array | None):
    qkv = self.qkv(x)
    kv = qkv if kv_input is None else self.qkv(kv_input)
    return qkv[:, :, 0], kv[:, :, 1], kv[:, :, 2]

  def query_at(self, x: jax.Array, valid: jax.Array, index: jax.Array, *,
               kv_input: jax.Array | None = None) -> jax.Array:
    """[B, 1, D]: the causal output at position `index` [B] alone, keys from all of x [B, L, D]."""
    q, k, v = self._project(x, kv_input)
    query = jnp.take_along_axis(q, index[:, None, None, None], axis=1)
    visible = valid & (jnp.arange(x.shape[1])[None, :] <= index[:, None])
    return self.out(self.attention_fn(query, k, v, mask=MaskSpec(kv_valid=visible)))

  def step(self, x: jax.Array, k_cache: jax.Array, v_cache: jax.Array, index: jax.Array, *,
           kv_input: jax.Array | None = None):
    """x [B, 1, D] at position `index` [B] attends to cached keys 0..index-1 and itself."""
    q, k, v = self._project(x, kv_input)
    rows = jnp.arange(x.shape[0])
    k_cache = k_cache.at[rows, index].set(k[:, 0])
    v_cache = v_cache.at[rows, index].set(v[:, 0])
    visible = jnp.arange(k_cache.shape[1])[None, :] <= index[:, None]
    out = self.attention_fn(q, k_cache, v_cache, mask=MaskSpec(kv_valid=visible))
    return self.out(out), k_cache, v_cache


class FeedForward(nn.Module):
  hidden_dim: int
  dropout_rate: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    h = nn.Dense(self.hidden_dim, dtype=self.dtype)(x)
    h = nn.gelu(h)
    h = Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.Dense(x.shape[-1], dtype=self.dtype)(h)


RESIDUALS = ("input", "normed")


class TransformerBlock(nn.Module):
  """Attention then feed-forward, each with a residual; padded positions are zeroed after each block.

  `residual="input"` (pre-LN): x + Attn(LN(x)), then x + FFN(LN(x)).
  `residual="normed"` (the SASRec authors' code, and RecTools'): with q = LN(x),
  x = q + Attn(queries q, keys and values x), then with f = LN(x), f + FFN(f).
  """

  features: int
  num_heads: int
  ff_dim: int
  dropout_rate: float
  attention_fn: AttentionFn = attend
  dtype: jnp.dtype = jnp.float32
  residual: str = "input"

  def setup(self):
    if self.residual not in RESIDUALS:
      raise ValueError(f"model.*.residual must be one of {RESIDUALS}, got {self.residual!r}")
    self.attention_norm = nn.LayerNorm(dtype=self.dtype)
    self.attention = MultiHeadSelfAttention(self.features, self.num_heads, self.attention_fn,
                                            self.dtype)
    self.ff_norm = nn.LayerNorm(dtype=self.dtype)
    self.ff = FeedForward(self.ff_dim, self.dropout_rate, self.dtype)
    self.dropout = Dropout(self.dropout_rate)

  def _attention_inputs(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """(query input, key/value input or None for the same, residual base) of the attention."""
    normed = self.attention_norm(x)
    if self.residual == "normed":
      return normed, x, normed
    return normed, None, x

  def _feed_forward(self, x: jax.Array, deterministic: bool) -> jax.Array:
    normed = self.ff_norm(x)
    base = normed if self.residual == "normed" else x
    return base + self.dropout(self.ff(normed, deterministic), deterministic=deterministic)

  def __call__(self, x: jax.Array, mask: MaskSpec, valid: jax.Array, deterministic: bool, *,
               capture_attention: bool = False):
    """Returns the block output and its attention keys and values."""
    query_input, kv_input, base = self._attention_inputs(x)
    h, k, v = self.attention(query_input, mask, kv_input=kv_input,
                             capture_attention=capture_attention)
    x = self._feed_forward(base + self.dropout(h, deterministic=deterministic), deterministic)
    return x * valid[..., None].astype(x.dtype), k, v

  def query_at(self, x: jax.Array, valid: jax.Array, index: jax.Array) -> jax.Array:
    """[B, 1, D]: the block's causal output at position `index` [B] alone (no dropout)."""
    query_input, kv_input, base = self._attention_inputs(x)
    h = self.attention.query_at(query_input, valid, index, kv_input=kv_input)
    return self._feed_forward(jnp.take_along_axis(base, index[:, None, None], axis=1) + h, True)

  def step(self, x: jax.Array, k_cache: jax.Array, v_cache: jax.Array, index: jax.Array):
    query_input, kv_input, base = self._attention_inputs(x)
    h, k_cache, v_cache = self.attention.step(query_input, k_cache, v_cache, index,
                                              kv_input=kv_input)
    return self._feed_forward(base + h, True), k_cache, v_cache


def explicit_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                       mask: MaskSpec | None) -> tuple[jax.Array, jax.Array]:
  """Softmax attention with the probabilities materialised: (out [B, Lq, H, Dh], weights [B, H, Lq, Lk]).

  The same maths as `reference_attention` (float32 statistics; a query that
  sees no key gets all-zero weights), so the weights are exactly the ones the
  output is made of.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * q.shape[-1] ** -0.5
  allowed = dense_mask(mask, q.shape[0], q.shape[1], k.shape[1])
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.exp(logits - jax.lax.stop_gradient(row_max))
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  weights = weights / jnp.where(denom > 0, denom, 1.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype), weights


def _capture_interceptor(next_fun, args, kwargs, context):
  if getattr(type(context.module), "CAPTURES_ATTENTION", False) and context.method_name == "__call__":
    kwargs = {**kwargs, "capture_attention": True}
  return next_fun(*args, **kwargs)


def capture_attention_weights():
  """Context manager: every attention module applied inside it sows its weights.

  Those are `MultiHeadSelfAttention` (softmax probabilities) and HSTU's blocks
  (pointwise weights, SiLU(scores) / N: signed and not summing to 1).

  Works for any encoder built from these blocks, without a flag threaded
  through the encoder:

    with capture_attention_weights():
      hidden, state = model.apply(params, items, mutable=["intermediates"])
  """
  return nn.intercept_methods(_capture_interceptor)
