"""Item encoders: what vector each item id gets, as the input and output embedding of a user encoder.

Three representations (`ItemEncoder.representation`):

  * "id": a learned row per item (the `embedding` parameter), as in SASRec;
  * "content": a vector computed from the item's features only (`ItemFeatures`):
    its categorical values, its token sets (genres, title words, attributes) and
    its text embedding, so an item never seen in training still gets a
    meaningful vector and can be recommended;
  * "both": id row + content vector, where items without training events
    (`ItemFeatures.trained` False) get the content vector alone (see
    `ItemEncoder`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from recattn_jax.attention import AttentionFn, MaskSpec, attention_fn
from recattn_jax.data.features import ItemFeatures
from recattn_jax.models.registry import ITEM_ENCODERS
from recattn_jax.models.text_tower import TextTower
from recattn_jax.models.transformer import head_dim
from recattn_jax.text.bert import LoRAConfig

REPRESENTATIONS = ("id", "content", "both")
# Per-item parameters hold a multiple of this many rows (the rest are never read),
# so that any mesh whose "model" axis divides it can shard them by rows, and a
# checkpoint restores onto any such mesh (`parallel.rules`).
TABLE_ROW_MULTIPLE = 128


def table_rows(num_items: int) -> int:
  """Rows of a per-item parameter for items 0..num_items: num_items + 1, rounded up."""
  return -(-(num_items + 1) // TABLE_ROW_MULTIPLE) * TABLE_ROW_MULTIPLE


class ContentEncoder(nn.Module):
  """Item rows -> vectors from their features: one self-attention layer over the item's tokens.

  Every feature becomes a token: a categorical value is one token, a token field
  gives one per entry, a text embedding one (through a learned projection); each
  token adds a learned embedding of its field, so "drama" the genre and "drama"
  the title word differ. A learned [ITEM] token, always present, makes every
  set non-empty (items without features all map to the same vector instead of a
  0/0). Tokens attend to each other (padding masked out as keys through
  `MaskSpec(kv_valid=...)`), are mean-pooled over the valid ones, normalised, and
  projected to the output; the projection starts at the id table's scale (0.02),
  so swapping representations does not change the model's initial logits.
  """

  item_features: ItemFeatures
  features: int
  num_heads: int = 2
  attention_fn: AttentionFn = attention_fn("xla")

  def setup(self):
    item_features = self.item_features
    init = nn.initializers.normal(stddev=0.02)
    self.embeds = {f: nn.Embed(item_features.vocab_sizes[f], self.features, embedding_init=init,
                               name=f"embed_{f}")
                   for f in item_features.fields}
    num_fields = len(item_features.fields) + (item_features.text_embeddings is not None)
    self.field_embedding = self.param("field_embedding", init, (max(num_fields, 1), self.features))
    self.item_token = self.param("item_token", init, (self.features,))
    if item_features.text_embeddings is not None:
      self.text_projection = nn.Dense(self.features, name="text_projection")
    self.attention_norm = nn.LayerNorm()
    self.qkv = nn.DenseGeneral((3, self.num_heads, head_dim(self.features, self.num_heads)))
    self.attention_out = nn.DenseGeneral(self.features, axis=(-2, -1))
    self.output_norm = nn.LayerNorm()
    self.output = nn.Dense(self.features, kernel_init=nn.initializers.variance_scaling(
        0.02 ** 2, "fan_in", "normal"))

  def tokens(self, rows: jax.Array | None,
             text_vectors: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """[n, T, D] token vectors and [n, T] validity for item `rows` [n] (None: every row).

    `text_vectors` [n, E] replace the rows' stored text embeddings (a text tower's output).
    """
    item_features = self.item_features

    def pick(array):
      array = jnp.asarray(array)  # a constant of the compiled computation
      return array if rows is None else jnp.take(array, rows, axis=0)

    vectors, valid = [], []
    for index, name in enumerate(item_features.fields):
      ids = pick(item_features.categorical[name])[:, None] if name in item_features.categorical \
          else pick(item_features.tokens[name])
      vectors.append(self.embeds[name](ids) + self.field_embedding[index])
      valid.append(ids > 0)
    if item_features.text_embeddings is not None:
      if text_vectors is None:
        text_vectors = pick(item_features.text_embeddings)
      text = self.text_projection(text_vectors)[:, None]
      vectors.append(text + self.field_embedding[len(item_features.fields)])
      valid.append(pick(item_features.text_mask)[:, None])
    n = item_features.num_rows if rows is None else rows.shape[0]
    vectors.insert(0, jnp.broadcast_to(self.item_token, (n, 1, self.features)))
    valid.insert(0, jnp.ones((n, 1), bool))
    return jnp.concatenate(vectors, axis=1), jnp.concatenate(valid, axis=1)

  def __call__(self, rows: jax.Array | None = None,
               text_vectors: jax.Array | None = None) -> jax.Array:
    """[n, D] for item `rows` [n] (None: the whole catalogue, [N + 1, D])."""
    x, valid = self.tokens(rows, text_vectors)
    qkv = self.qkv(self.attention_norm(x))
    attended = self.attention_fn(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                 mask=MaskSpec(kv_valid=valid))
    x = x + self.attention_out(attended)
    weight = valid[..., None].astype(x.dtype)
    pooled = jnp.sum(x * weight, axis=1) / jnp.sum(weight, axis=1)  # >= 1: the [ITEM] token
    return self.output(self.output_norm(pooled))


class ItemEncoder(nn.Module):
  """Maps item ids (0 = padding) to vectors; `table()` is the whole catalogue [num_items + 1, D].

  "both" adds the id row to the content vector (as LightFM does: the id is one
  more feature of the item), except for items `item_features.trained` marks as
  having no training event, which get the content vector alone. Such an item's
  id row could only have been trained as a softmax negative, i.e. to learn "never
  the answer in the training window"; that is a fact about the window, not the
  item, and exactly what would bury a new item. With `trained` None every item
  uses its id row.

  `id_dropout` (DropoutNet, Volkovs et al. 2017) additionally treats each trained
  item as cold with this probability in calls with `deterministic=False` (and a
  "dropout" rng), so that training also fits content-only vectors against the
  id+content ones they compete with at ranking time. Without it, a cold item's
  content vector scores below the warm items that carry an id term: on ML-100K
  with 10% of the items held out, "both" put no cold target in the top 10, and
  "both" with id_dropout=0.5 matched "content" on cold targets while keeping the
  warm accuracy of "both" (benchmarks/cold_start.py). The output table is only
  drawn in training mode when the training step asks for it
  (`table(deterministic=False)`).

  `text_lora` with rank > 0 adds a text tower (`text_tower.TextTower`): a
  pretrained text encoder with LoRA adapters whose output replaces the stored
  text embedding on the output side (`item_vectors`, `table`), so the
  recommender fine-tunes it; the input side (`__call__`, history items) keeps
  the stored, frozen vectors, as running the tower on every history event
  would cost a BERT pass per event.

  Features enter the computation as constants: small int arrays cost nothing,
  but a text-embedding matrix is copied into every compiled function that uses
  the encoder (train step, ranking step) and held in device memory by each; a
  few hundred MB is the practical limit. For larger ones reduce E offline (PCA)
  or precompute the projected text vectors.

  Attributes:
    num_items: items are 1..num_items.
    features: output width D.
    item_features: required for "content" and "both"; validated against num_items.
    representation: one of REPRESENTATIONS.
    id_dropout: probability of dropping a trained item's id row ("both" only).
    text_lora: the text tower's adapters (rank 0: no tower).
    text_attention_impl: the engine of the text tower's attention.
    content_heads, attention_fn: of the content encoder's self-attention. An
      item's token set is short (tens), where one dense softmax ("xla") beats the
      tiled engines "auto" would pick on CPU.
  """

  num_items: int
  features: int
  item_features: ItemFeatures | None = None
  representation: str = "id"
  id_dropout: float = 0.0
  content_heads: int = 2
  attention_fn: AttentionFn = attention_fn("xla")
  text_lora: LoRAConfig = LoRAConfig()
  text_attention_impl: str = "xla"

  @property
  def has_text_tower(self) -> bool:
    return self.text_lora.rank > 0

  def setup(self):
    if self.representation not in REPRESENTATIONS:
      raise ValueError(f"item representation must be one of {REPRESENTATIONS}, "
                       f"got {self.representation!r}")
    if not 0.0 <= self.id_dropout < 1.0:
      raise ValueError(f"ItemEncoder: id_dropout must be in [0, 1), got {self.id_dropout}")
    if self.item_features is not None:
      self.item_features.check_aligned(self.num_items, "ItemEncoder")
    if self.representation != "id":
      if self.item_features is None:
        raise ValueError(f"representation={self.representation!r} needs item_features "
                         "(set data.item_features_path and/or data.text_embeddings_path)")
      self.content = ContentEncoder(self.item_features, self.features, self.content_heads,
                                    self.attention_fn, name="content")
    if self.has_text_tower:
      if self.representation == "id" or self.item_features.text_embeddings is None:
        raise ValueError("a text tower (model.*.item_text_lora_rank > 0) needs "
                         "item_representation 'content' or 'both' and text embeddings "
                         "(data.text_model)")
      self.text_tower = TextTower(self.item_features, self.text_lora, self.text_attention_impl,
                                  name="text_tower")
    if self.representation != "content":
      # Rows past num_items are padding for sharding; initialising them draws the
      # same values for rows 0..num_items as an unpadded table would.
      self.embedding = self.param("embedding", nn.initializers.normal(stddev=0.02),
                                  (table_rows(self.num_items), self.features))

  def _id_rows(self, rows: jax.Array | None) -> jax.Array:
    if rows is None:
      return self.embedding[:self.num_items + 1]
    return jnp.take(self.embedding, rows, axis=0)

  def _rows(self, rows: jax.Array | None, deterministic: bool,
            text_vectors: jax.Array | None = None) -> jax.Array:
    """Vectors of item `rows` [n] (None: all), computed for those rows only."""
    if self.representation == "id":
      return self._id_rows(rows)
    content = self.content(rows, text_vectors)
    if self.representation == "content":
      return content
    ids = self._id_rows(rows)
    keep = self.item_features.trained
    keep = jnp.ones(self.num_items + 1, bool) if keep is None else jnp.asarray(keep)
    if self.id_dropout and not deterministic:
      # One draw per item and call, so an item is cold in every row that uses it.
      keep &= ~jax.random.bernoulli(self.make_rng("dropout"), self.id_dropout, keep.shape)
    keep = keep if rows is None else jnp.take(keep, rows)
    return ids * keep[:, None] + content

  def __call__(self, ids: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Input-side vectors of `ids` (any shape); a text tower is not run here (see the class doc)."""
    if self.has_text_tower and self.is_initializing():
      self.text_tower(jnp.zeros((1,), jnp.int32))  # create its parameters
    if self.representation == "id":
      return jnp.take(self.embedding, ids, axis=0)
    # Encoding the catalogue once is cheaper than encoding more lookups than it has rows.
    if ids.size >= self.num_items + 1:
      return jnp.take(self._rows(None, deterministic), ids, axis=0)
    return self._rows(ids.reshape(-1), deterministic).reshape(*ids.shape, self.features)

  def item_vectors(self, ids: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Output-side vectors [n, D] of `ids` [n], through the text tower when there is one."""
    text = self.text_tower(ids, deterministic) if self.has_text_tower else None
    return self._rows(ids, deterministic, text)

  def text_vectors(self, rows: jax.Array) -> jax.Array:
    """The text tower's vectors [n, H] of item `rows` [n] (deterministic)."""
    return self.text_tower(rows)

  def table(self, *, deterministic: bool = True, padded: bool = False,
            text_vectors: jax.Array | None = None) -> jax.Array:
    """[N + 1, D], or with `padded` [table_rows(N), D] (zero or unused rows past N).

    A table split by rows over devices is used `padded`: cutting it to N + 1
    rows would leave the shards uneven, and XLA would gather it. With a text
    tower, `text_vectors` [N + 1, H] are its output for every row (required;
    `scoring.item_table` computes them in chunks).
    """
    if padded and self.representation == "id":
      return self.embedding
    if self.has_text_tower and text_vectors is None:
      # One BERT batch over the whole catalogue would not fit a large one: callers go
      # through `scoring.item_table`, which runs the tower in chunks.
      raise ValueError("a text tower's table needs text_vectors (use models.scoring.item_table)")
    table = self._rows(None, deterministic, text_vectors)
    if padded:
      table = jnp.pad(table, ((0, table_rows(self.num_items) - table.shape[0]), (0, 0)))
    return table


for _representation in REPRESENTATIONS:
  ITEM_ENCODERS.register(_representation)(functools.partial(ItemEncoder,
                                                            representation=_representation))
