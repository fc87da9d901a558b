"""The sequence-encoder base every ranking encoder builds on, and the interface it offers.

A `SequenceEncoder` maps item ids [B, L] (0 = padding, left or right padded,
optionally several users per row marked by `segment_ids`) to hidden states
[B, L, D] that are scored against `item_embeddings()` [num_items + 1, D]
(plus `item_bias()` when `has_item_bias`). The base holds what every encoder
shares: the fields, the item encoder, positions, input dropout, the optional
user context, the length/padding/segment layout and the attention mask. A
subclass adds its blocks (`setup_blocks`) and what it does with the embedded
events (`encode_events`); `token_vectors` and `normalize_embeddings` are the
hooks for encoders that embed differently (BERT4Rec's mask token).

Every configurable field has its default here or in the subclass, the one
place defaults live: `recattn_jax.config` builds `config.model.<name>` from
them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import AttentionFn, MaskSpec, attention_fn
from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.social import UserProfiles
from recattn_jax.models.dropout import Dropout, keep_mask
from recattn_jax.models.item_encoder import ITEM_ENCODERS, table_rows
from recattn_jax.models.registry import ENCODERS
from recattn_jax.models.transformer import head_dim
from recattn_jax.models.user_context import UserContext, check_users
from recattn_jax.text.bert import LoRAConfig

# Fields the data decides (catalogue, features, users), not the config.
DATA_FIELDS = frozenset({"num_items", "max_len", "item_features", "user_profiles"})


@runtime_checkable
class Encoder(Protocol):
  """What training, evaluation, explanation and serving use of a ranking encoder."""

  num_items: int
  max_len: int
  user_profiles: UserProfiles | None
  has_item_bias: bool
  has_text_tower: bool
  mask_id: int | None

  def __call__(self, items: jax.Array, segment_ids: jax.Array | None = None, *,
               deterministic: bool = True, timestamps: jax.Array | None = None,
               users: jax.Array | None = None) -> jax.Array: ...

  def item_embeddings(self, deterministic: bool = True) -> jax.Array: ...

  def item_bias(self) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a batch's events are: validity, segment ids (1.. per user, 0 = padding), packing."""

  valid: jax.Array
  segment_ids: jax.Array
  packed: bool

  def mask(self, causal: bool) -> MaskSpec:
    segments = self.segment_ids if self.packed else None
    return MaskSpec(causal=causal, kv_valid=self.valid, q_segment_ids=segments,
                    kv_segment_ids=segments)


def positions_in_sequence(segment_ids: jax.Array, count_from: str) -> jax.Array:
  """Index of each event within its segment (a user's run of events), for any padding side.

  `segment_ids` [B, L] numbers contiguous runs of one user's events, 0 for
  padding; an unpacked row is just `items > 0`. "start": 0 for the oldest event
  (stable when events are appended, which is what a key/value cache needs);
  "end": 0 for the newest event (what SASRec's left-padded absolute positions
  amount to).
  """
  length = segment_ids.shape[-1]
  index = jnp.broadcast_to(jnp.arange(length), segment_ids.shape)
  before = jnp.pad(segment_ids, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  after = jnp.pad(segment_ids, ((0, 0), (0, 1)), constant_values=-1)[:, 1:]
  start = jax.lax.cummax(jnp.where(segment_ids != before, index, 0), axis=1)
  end = jax.lax.cummin(jnp.where(segment_ids != after, index, length), axis=1, reverse=True)
  if count_from == "start":
    pos = index - start
  elif count_from == "end":
    pos = end - index
  else:
    raise ValueError(f"model.*.positions must be 'start' or 'end', got {count_from!r}")
  return jnp.where(segment_ids > 0, pos, 0)


class SequenceEncoder(nn.Module):
  """Shared fields, embeddings, masks and user context of the ranking encoders.

  Attributes:
    num_items, max_len: items are 1..num_items; rows hold at most max_len events.
    embed_dim, num_layers, num_heads, dropout_rate: the usual sizes.
    positions: "end" (0 = newest event) or "start" (0 = oldest; needed for a KV cache).
    attention_impl: the engine of the encoder's attention (`recattn_jax.attention`).
    dtype: of activations ("float32" or "bfloat16"); parameters stay float32.
    item_representation: "id", "content" or "both" (`ItemEncoder`); "content"
      and "both" need `item_features`.
    item_id_dropout: "both": treat trained items as cold at this rate (DropoutNet).
    output_dropout: elementwise dropout of the output item vectors (the table
      and a candidate loss's vectors) in training, as RecTools' SASRec applies
      its dropout to the item embeddings it scores against; 0 = off.
    item_attention_impl: the engine of the item content encoder's self-attention
      and of the text tower's.
    item_text_lora_rank, item_text_lora_alpha, item_text_lora_targets,
      item_text_lora_layers: rank > 0 fine-tunes the pretrained text encoder
      (data.text_model) with these LoRA adapters (`text.bert.LoRAConfig`;
      layers: in the last that many blocks, 0 = all) as the items'
      output-side text tower (`text_tower.TextTower`); it trains with a
      candidate loss (train.loss.name="mixed_softmax").
    user_profiles: a per-user context added to every event (`user_context.py`).
  """

  num_items: int
  max_len: int
  embed_dim: int = 64
  num_layers: int = 2
  num_heads: int = 1
  dropout_rate: float = 0.2
  positions: str = "end"
  attention_impl: str = "auto"
  dtype: Any = "float32"
  item_representation: str = "id"
  item_id_dropout: float = 0.0
  output_dropout: float = 0.0
  item_attention_impl: str = "xla"
  item_text_lora_rank: int = 0
  item_text_lora_alpha: float = 16.0
  item_text_lora_targets: tuple[str, ...] = ("query", "value")
  item_text_lora_layers: int = 0
  item_features: ItemFeatures | None = None
  user_profiles: UserProfiles | None = None

  # What an encoder declares about itself; subclasses override.
  has_item_bias: ClassVar[bool] = False  # scores add `item_bias()`
  uses_positions: ClassVar[bool] = True  # learned position embeddings
  scale_embeddings: ClassVar[bool] = True  # item vectors * sqrt(embed_dim)
  mask_id: ClassVar[int | None] = None  # the cloze mask token's input id, if any

  @property
  def has_text_tower(self) -> bool:
    return self.item_text_lora_rank > 0

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def attention(self) -> AttentionFn:
    return attention_fn(self.attention_impl)

  @property
  def head_dim(self) -> int:
    return head_dim(self.embed_dim, self.num_heads)

  def setup(self):
    self.item_embed = ITEM_ENCODERS.get(self.item_representation)(
        self.num_items, self.embed_dim, item_features=self.item_features,
        id_dropout=self.item_id_dropout, attention_fn=attention_fn(self.item_attention_impl),
        text_lora=LoRAConfig(self.item_text_lora_rank, self.item_text_lora_alpha,
                             tuple(self.item_text_lora_targets), self.item_text_lora_layers),
        text_attention_impl=self.item_attention_impl, name="item_embed")
    if self.uses_positions:
      self.pos_embed = nn.Embed(self.max_len, self.embed_dim,
                                embedding_init=nn.initializers.normal(stddev=0.02), name="pos_embed")
    self.input_dropout = Dropout(self.dropout_rate)
    if not 0.0 <= self.output_dropout < 1.0:
      raise ValueError(f"output_dropout must be in [0, 1), got {self.output_dropout}")
    self.user_context = (None if self.user_profiles is None
                         else UserContext(self.user_profiles, self.embed_dim, name="user_context"))
    self.setup_blocks()

  def setup_blocks(self):
    """Creates the encoder's own layers."""
    raise NotImplementedError

  def encode_events(self, x: jax.Array, layout: Layout, deterministic: bool,
                    timestamps: jax.Array | None) -> jax.Array:
    """[B, L, D] embedded events (0 at padding) -> hidden states [B, L, D]."""
    raise NotImplementedError

  def __call__(self, items: jax.Array, segment_ids: jax.Array | None = None, *,
               deterministic: bool = True, timestamps: jax.Array | None = None,
               users: jax.Array | None = None) -> jax.Array:
    """Hidden states [B, L, D].

    Args:
      items: [B, L] ids, 0 = padding.
      segment_ids: [B, L] numbering the users of packed rows (0 = padding); None: one per row.
      deterministic: no dropout when True.
      timestamps: [B, L] seconds, for encoders that read them (else ignored).
      users: [B, L] user index + 1, required exactly when built with `user_profiles`.
    """
    layout = self.layout(items, segment_ids, users)
    x = self.embed(items, layout, deterministic, users)
    return self.encode_events(x, layout, deterministic, timestamps)

  def layout(self, items: jax.Array, segment_ids: jax.Array | None,
             users: jax.Array | None) -> Layout:
    check_users(self.user_profiles, users)
    if items.shape[-1] > self.max_len:
      raise ValueError(f"sequence length {items.shape[-1]} exceeds data.max_len={self.max_len}")
    valid = items > 0
    packed = segment_ids is not None
    segment_ids = jnp.where(valid, segment_ids, 0) if packed else valid.astype(jnp.int32)
    return Layout(valid, segment_ids, packed)

  def cache_problem(self) -> str | None:
    """Why appended events would invalidate cached keys and values (None: they would not)."""
    if self.positions != "start":
      name = next((n for n in ENCODERS.names() if ENCODERS.get(n) is type(self)), "*")
      return (f"a key/value cache needs model.{name}.positions='start' (positions that do "
              "not change when events are appended)")
    return None

  def _check_cacheable(self, items: jax.Array):
    """Raises unless `prefill` can cache this encoder's keys and values for `items` [B, L]."""
    problem = self.cache_problem()
    if problem:
      raise ValueError(problem)
    if items.shape[1] > self.max_len:
      raise ValueError(f"history length {items.shape[1]} exceeds data.max_len={self.max_len}")

  def token_vectors(self, items: jax.Array) -> jax.Array:
    """The vector of each input id (before positions and context)."""
    x = self.item_embed(items)
    return x * (self.embed_dim ** 0.5) if self.scale_embeddings else x

  def normalize_embeddings(self, x: jax.Array) -> jax.Array:
    """Applied to the summed embeddings before dropout (identity by default)."""
    return x

  def embed(self, items: jax.Array, layout: Layout, deterministic: bool,
            users: jax.Array | None, positions: jax.Array | None = None) -> jax.Array:
    """Token + position (+ user context) vectors, dropout, zero at padding, in `dtype`."""
    x = self.token_vectors(items)
    if self.uses_positions:
      if positions is None:
        positions = positions_in_sequence(layout.segment_ids, self.positions)
      x = x + self.pos_embed(positions)
    if self.user_context is not None:
      x = x + self.user_context(users, self.item_embed)
    x = self.input_dropout(self.normalize_embeddings(x), deterministic=deterministic)
    return (x * layout.valid[..., None]).astype(self.compute_dtype)

  def item_embeddings(self, deterministic: bool = True, padded: bool = False,
                      text_vectors: jax.Array | None = None) -> jax.Array:
    """[num_items + 1, D]; row 0 is padding and is never a valid prediction.

    With `deterministic=False` the item encoder's id dropout and
    `output_dropout` (if any) apply.
    `padded`: all `table_rows(num_items)` rows, for a table split over devices
    (the rows past num_items must then be masked by the caller).
    `text_vectors`: the text tower's output for every item (`scoring.item_table`).
    """
    table = self.item_embed.table(deterministic=deterministic, padded=padded,
                                  text_vectors=text_vectors)
    return self._drop_output(table, deterministic, real_rows=self.num_items + 1)

  def item_vectors(self, ids: jax.Array, deterministic: bool = True) -> jax.Array:
    """The output-side vectors [n, D] of item `ids` [n] alone (a candidate loss's candidates)."""
    vectors = self.item_embed.item_vectors(ids, deterministic=deterministic)
    return self._drop_output(vectors, deterministic)

  def _drop_output(self, vectors: jax.Array, deterministic: bool,
                   real_rows: int | None = None) -> jax.Array:
    """`output_dropout` of item vectors [n, D]. A padded table's mask is drawn for its
    `real_rows` and padded, so that a table split over devices drops what a whole one would."""
    if deterministic or not self.output_dropout:
      return vectors
    rows = vectors.shape[0] if real_rows is None else real_rows
    keep, keep_prob = keep_mask(self.make_rng("dropout"), (rows, *vectors.shape[1:]),
                                self.output_dropout)
    keep = jnp.pad(keep, ((0, vectors.shape[0] - rows), (0, 0)), constant_values=True)
    return jnp.where(keep, vectors / jnp.asarray(keep_prob, vectors.dtype),
                     jnp.zeros((), vectors.dtype))

  def item_text_vectors(self, rows: jax.Array) -> jax.Array:
    """The text tower's vectors [n, H] of item `rows` [n]."""
    return self.item_embed.text_vectors(rows)

  def item_bias(self, padded: bool = False) -> jax.Array:
    """[num_items + 1] (`padded`: [table_rows]) float32 output bias added to every score (zeros without one)."""
    return jnp.zeros((table_rows(self.num_items) if padded else self.num_items + 1,), jnp.float32)
