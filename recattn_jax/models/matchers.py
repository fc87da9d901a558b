"""Matchers: how a user representation meets items.

  * dot product: retrieval, one user vector against the whole catalogue
    (`models/scoring.py`, `evaluation/`);
  * `TargetAttention`: ranking, DIN/BST style; each candidate item queries the
    user's history, z_ui = Attention(Q_u, K_i, V_i), so the user is described
    by the past events relevant to that candidate.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import AttentionFn, MaskSpec, attend
from recattn_jax.models.registry import MATCHERS



@MATCHERS.register("target_attention")
class TargetAttention(nn.Module):
  """Candidates [B, C, D] attend over a history [B, L, D] with key padding.

  Queries come from the candidates and keys/values from the history through
  learned projections to `num_heads` heads of `head_dim` (default
  features // num_heads); the heads are merged back to `features` (default: the
  candidates' width). A row whose history is empty gets z = the output
  projection's bias (attention over no key returns zeros).
  """

  num_heads: int = 1
  features: int | None = None
  head_dim: int | None = None
  attention_fn: AttentionFn = attend
  dtype: jnp.dtype = jnp.float32

  def _dims(self, width: int) -> tuple[int, int]:
    features = self.features or width
    if self.num_heads < 1:
      raise ValueError(f"model.num_heads must be >= 1, got {self.num_heads}")
    if self.head_dim is None and features % self.num_heads:
      raise ValueError(f"features={features} is not divisible by model.num_heads={self.num_heads}")
    return features, self.head_dim or features // self.num_heads

  @nn.compact
  def __call__(self, candidates: jax.Array, history: jax.Array, valid: jax.Array, *,
               return_weights: bool = False):
    """Returns z [B, C, features] (and weights [B, C, H, L] when asked).

    `candidates` may also be [B, D] (one candidate), giving z [B, features] and
    weights [B, H, L].
    """
    single = candidates.ndim == 2
    if single:
      candidates = candidates[:, None]
    if candidates.ndim != 3 or history.ndim != 3 or valid.shape != history.shape[:2]:
      raise ValueError(f"TargetAttention expects candidates [B, C, D], history [B, L, D] and "
                       f"valid [B, L]; got {candidates.shape}, {history.shape}, {valid.shape}")
    features, head_dim = self._dims(candidates.shape[-1])
    dense = lambda name: nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name=name)
    q = dense("query")(candidates)
    k = dense("key")(history)
    v = dense("value")(history)
    valid = valid.astype(bool)
    out = self.attention_fn(q, k, v, mask=MaskSpec(kv_valid=valid))
    z = nn.DenseGeneral(features, axis=(-2, -1), dtype=self.dtype, name="out")(out)
    if single:
      z = z[:, 0]
    if not return_weights:
      return z
    weights = attention_weights(q, k, valid)
    return z, (weights[:, 0] if single else weights)


def attention_weights(q: jax.Array, k: jax.Array, valid: jax.Array,
                      scale: float | None = None) -> jax.Array:
  """[B, C, H, L] softmax(q k^T * scale) over valid keys, as `attend` computes it.

  Rows with no valid key get all-zero weights (attend's output there is 0).
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  logits = jnp.einsum("bchd,blhd->bchl", q, k, preferred_element_type=jnp.float32) * scale
  mask = valid[:, None, None, :]
  logits = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  weights = jnp.where(mask, jnp.exp(logits - row_max), 0.0)
  denom = jnp.sum(weights, axis=-1, keepdims=True)
  return weights / jnp.where(denom > 0, denom, 1.0)
