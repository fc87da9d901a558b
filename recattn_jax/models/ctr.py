"""Pointwise models for the click (CTR) and rating tasks: target attention over the history.

  history items --ItemEncoder--> (+ positions, + ratings) --[TransformerBlock x num_layers]-->
  candidate e_i --TargetAttention over the history--> z_ui
  [z_ui, e_i, z_ui * e_i, (user embedding)] --head--> one output (+ biases)

With num_layers = 0 this is DIN (Zhou et al., KDD 2018) with scaled dot-product
target attention; with num_layers > 0 it is BST (Chen et al., 2019), whose
non-causal transformer encodes the history before the candidate reads it. The
output is a click logit (task "ctr") or a rating (task "rating", added to
global mean + user bias + item bias, so the network learns a residual).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import MaskSpec, attention_fn
from recattn_jax.models.base import positions_in_sequence
from recattn_jax.models.dropout import Dropout
from recattn_jax.models.heads import build_head
from recattn_jax.models.item_encoder import ITEM_ENCODERS
from recattn_jax.models.registry import MATCHERS, POINTWISE_MODELS
from recattn_jax.models.transformer import TransformerBlock

TASKS = ("ctr", "rating")
# Fields the data and the task decide, not the config.
DATA_FIELDS = frozenset({"num_items", "num_users", "max_len", "task", "global_mean",
                         "item_features", "dtype"})


class TargetAttentionModel(nn.Module):
  """DIN/BST-style scorer of (user, history, candidate item).

  Call with users [B] (int, 0..num_users-1), history [B, L] (item ids,
  0 = padding, any padding side), items [B] or [B, C] (candidates) and, with
  `use_ratings`, history_ratings [B, L]; returns outputs [B] or [B, C].
  """

  num_items: int
  num_users: int = 0  # 0: no user embedding and no user bias
  max_len: int = 50
  embed_dim: int = 32
  num_layers: int = 0
  num_heads: int = 1
  ff_dim: int = 128
  dropout_rate: float = 0.1
  task: str = "ctr"
  matcher: str = "target_attention"
  use_user_embedding: bool = True
  head: str = "mlp"
  head_hidden: Sequence[int] = (64, 32)
  head_activation: str = "relu"
  head_blocks: int = 2
  head_dropout: float = 0.0
  use_positions: bool = True
  use_ratings: bool = False
  use_biases: bool = True
  global_mean: float = 0.0
  attention_impl: str = "auto"
  item_features: Any = None
  item_representation: str = "id"
  dtype: jnp.dtype = jnp.float32

  @property
  def user_count(self) -> int:
    """Users with an embedding and a bias (0: none)."""
    return self.num_users if self.use_user_embedding else 0

  def setup(self):
    if self.task not in TASKS:
      raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
    init = nn.initializers.normal(stddev=0.02)
    attention = attention_fn(self.attention_impl)
    self.item_embed = ITEM_ENCODERS.get(self.item_representation)(
        self.num_items, self.embed_dim, item_features=self.item_features, name="item_embed")
    if self.use_positions:
      self.pos_embed = nn.Embed(self.max_len, self.embed_dim, embedding_init=init,
                                name="pos_embed")
    if self.use_ratings:
      self.rating_proj = nn.Dense(self.embed_dim, dtype=self.dtype, name="rating_proj")
    self.input_dropout = Dropout(self.dropout_rate)
    self.blocks = [
        TransformerBlock(self.embed_dim, self.num_heads, self.ff_dim, self.dropout_rate,
                         attention_fn=attention, dtype=self.dtype, name=f"block_{i}")
        for i in range(self.num_layers)
    ]
    if self.num_layers:
      self.history_norm = nn.LayerNorm(dtype=self.dtype)
    self.target_attention = MATCHERS.get(self.matcher)(self.num_heads, self.embed_dim,
                                                       attention_fn=attention, dtype=self.dtype,
                                                       name="target_attention")
    if self.user_count:
      self.user_embed = nn.Embed(self.num_users, self.embed_dim, embedding_init=init,
                                 name="user_embed")
    self.output_head = build_head(self.head, out=1, hidden=self.head_hidden,
                                  activation=self.head_activation, dropout=self.head_dropout,
                                  num_blocks=self.head_blocks, dtype=self.dtype, name="head")
    if self.use_biases:
      zeros = nn.initializers.zeros
      self.item_bias = self.param("item_bias", zeros, (self.num_items + 1,))
      if self.user_count:
        self.user_bias = self.param("user_bias", zeros, (self.num_users,))

  def encode_history(self, history: jax.Array, history_ratings: jax.Array | None = None, *,
                     deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """History representations [B, L, D] (0 at padding) and validity [B, L]."""
    if history.shape[-1] > self.max_len:
      raise ValueError(f"history length {history.shape[-1]} exceeds model.max_len={self.max_len}")
    valid = history > 0
    x = self.item_embed(history) * (self.embed_dim ** 0.5)
    if self.use_positions:
      x = x + self.pos_embed(positions_in_sequence(valid.astype(jnp.int32), "end"))
    if self.use_ratings:
      if history_ratings is None:
        raise ValueError("model.use_ratings is set but the batch has no history_ratings")
      centred = (history_ratings - self.global_mean).astype(self.dtype)[..., None]
      x = x + self.rating_proj(centred)
    x = self.input_dropout(x, deterministic=deterministic)
    x = (x * valid[..., None]).astype(self.dtype)
    if self.blocks:
      mask = MaskSpec(kv_valid=valid)  # BST: every event sees the whole history
      for block in self.blocks:
        x, _, _ = block(x, mask, valid, deterministic)
      x = self.history_norm(x) * valid[..., None]
    return x, valid

  def _forward(self, users, history, items, history_ratings, deterministic, return_weights):
    single = items.ndim == 1
    candidates = items[:, None] if single else items
    keys, valid = self.encode_history(history, history_ratings, deterministic=deterministic)
    e = self.item_embed(candidates) * (self.embed_dim ** 0.5)
    z = self.target_attention(e.astype(self.dtype), keys, valid, return_weights=return_weights)
    if return_weights:
      z, weights = z
    parts = [z, e, z * e]
    if self.user_count:
      parts.append(jnp.broadcast_to(self.user_embed(users)[:, None], e.shape))
    out = self.output_head(jnp.concatenate(parts, axis=-1), deterministic=deterministic)[..., 0]
    out = out.astype(jnp.float32)
    if self.use_biases:
      out = out + jnp.take(self.item_bias, candidates, axis=0)
      if self.user_count:
        out = out + jnp.take(self.user_bias, users, axis=0)[:, None]
    if self.task == "rating":
      out = out + self.global_mean
    if single:
      out = out[:, 0]
    if not return_weights:
      return out
    return out, (weights[:, 0] if single else weights)

  def __call__(self, users: jax.Array, history: jax.Array, items: jax.Array,
               history_ratings: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
    """Click logits or ratings, [B] for items [B] and [B, C] for items [B, C]."""
    return self._forward(users, history, items, history_ratings, deterministic, False)

  def attention_weights(self, users: jax.Array, history: jax.Array, items: jax.Array,
                        history_ratings: jax.Array | None = None) -> jax.Array:
    """How much each history event counted for each candidate: [B, H, L] or [B, C, H, L].

    The target attention's softmax weights (0 at padded events), the explanation
    of a DIN/BST score; evaluated without dropout.
    """
    return self._forward(users, history, items, history_ratings, True, True)[1]

  def score_with_weights(self, users: jax.Array, history: jax.Array, items: jax.Array,
                         history_ratings: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(outputs, attention weights) in one pass, without dropout."""
    return self._forward(users, history, items, history_ratings, True, True)

  def item_embeddings(self) -> jax.Array:
    """[num_items + 1, D]; row 0 is padding."""
    return self.item_embed.table()


@POINTWISE_MODELS.register("din")
class DIN(TargetAttentionModel):
  """DIN: target attention straight over the embedded history (no history encoder)."""

  def setup(self):
    if self.num_layers:
      raise ValueError(f"model.din.num_layers must be 0 (DIN has no history encoder; use "
                       f"model.name='bst' for one), got {self.num_layers}")
    super().setup()


@POINTWISE_MODELS.register("bst")
class BST(TargetAttentionModel):
  """BST: a non-causal transformer encodes the history before target attention reads it."""

  num_layers: int = 1

  def setup(self):
    if self.num_layers < 1:
      raise ValueError(f"model.bst.num_layers must be >= 1, got {self.num_layers}")
    super().setup()
