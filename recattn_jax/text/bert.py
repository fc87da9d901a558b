"""A BERT-family text encoder in Flax whose self-attention runs through `attention.attend`.

The architecture of Devlin et al. (2019) as Hugging Face's `BertModel` lays
it out, so its checkpoints load unchanged (`pretrained.load_pretrained`):
word + position + token-type embeddings and a LayerNorm, then post-LN blocks
(self-attention, residual, LayerNorm; a GELU feed-forward, residual,
LayerNorm). Padding tokens are masked as keys (`MaskSpec(kv_valid=...)`), so
any attention implementation (`attention_impl`) gives the same vectors.
Sentence vectors pool the last hidden states: "mean" over the real tokens
(what sentence-transformers does for all-MiniLM-L6-v2) or "cls" (the first
token).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from recattn_jax.attention import MaskSpec, attention_fn

POOLINGS = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a Hugging Face BERT `config.json` that shape the network."""

  vocab_size: int
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1

  @classmethod
  def from_dict(cls, fields: dict[str, Any]) -> "BertConfig":
    """From a parsed config.json; other fields are ignored, a missing vocab_size is an error."""
    known = {f.name for f in dataclasses.fields(cls)}
    if "vocab_size" not in fields:
      raise ValueError("config.json has no vocab_size: not a BERT-family config")
    return cls(**{key: value for key, value in fields.items() if key in known})


_ACTIVATIONS = {"gelu": lambda x: nn.gelu(x, approximate=False),  # BERT's erf GELU
                "gelu_new": lambda x: nn.gelu(x, approximate=True), "relu": nn.relu}


LORA_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Low-rank adapters (Hu et al., 2021): W x + (alpha / rank) * B A x on the `targets` Dense layers.

  A starts random and B at zero, so an adapted encoder starts exactly at the
  pretrained one; only A and B train (`lora_mask`). rank 0: no adapters.
  `layers` > 0 puts adapters in the last `layers` blocks only (0: every block):
  no gradient then flows below them, so a step's backward pass is that much
  shorter.
  """

  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = ("query", "value")
  layers: int = 0

  def in_layer(self, index: int, num_layers: int) -> "LoRAConfig":
    """The adapters of block `index` of `num_layers` (rank 0 below the adapted ones)."""
    if self.layers and index < num_layers - self.layers:
      return dataclasses.replace(self, rank=0)
    return self

  def __post_init__(self):
    unknown = sorted(set(self.targets) - set(LORA_TARGETS))
    if unknown:
      raise ValueError(f"LoRA targets {unknown} are not layers of a BERT block; choose from {LORA_TARGETS}")
    if self.rank < 0:
      raise ValueError(f"LoRA rank must be >= 0, got {self.rank}")
    if self.layers < 0:
      raise ValueError(f"LoRA layers must be >= 0 (0: every block), got {self.layers}")


class LoRA(nn.Module):
  """The low-rank update (alpha / rank) * x A B of one Dense layer ([in, rank] and [rank, out])."""

  features: int
  config: LoRAConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    rank = self.config.rank
    a = self.param("a", nn.initializers.normal(stddev=1.0 / rank), (x.shape[-1], rank))
    b = self.param("b", nn.initializers.zeros, (rank, self.features))
    scale = self.config.alpha / rank
    return ((x @ a.astype(self.dtype)) @ b.astype(self.dtype)) * scale


def lora_mask(params: Any) -> Any:
  """True at the adapters' leaves (what trains), False at the pretrained weights (frozen)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(str(getattr(k, "key", "")).endswith("_lora") for k in path), params)


def freeze(optimizer: optax.GradientTransformation,
           is_frozen: Callable[[Any], Any]) -> optax.GradientTransformation:
  """`optimizer` on the parameters `is_frozen(params)` marks False; the others get zero updates.

  Frozen parameters get no optimizer state (no Adam moments for a pretrained encoder).
  """
  labels = lambda params: jax.tree.map(lambda frozen: "frozen" if frozen else "train",
                                       is_frozen(params))
  return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def adapters_only(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` on the adapters; the pretrained weights get zero updates (they stay frozen)."""
  return freeze(optimizer, lambda p: jax.tree.map(lambda trains: not trains, lora_mask(p)))


def merge_lora(params: Any, lora: LoRAConfig) -> Any:
  """Parameters of the plain encoder whose Dense kernels are W + (alpha / rank) * A B."""
  def merge(tree):
    if not isinstance(tree, dict):
      return tree
    out = {}
    for name, value in tree.items():
      if name.endswith("_lora"):
        continue
      value = merge(value)
      adapter = tree.get(name + "_lora")
      if adapter is not None:
        value = {**value, "kernel": value["kernel"] + (lora.alpha / lora.rank) * adapter["a"] @ adapter["b"]}
      out[name] = value
    return out
  return merge(params)


class BertLayer(nn.Module):
  config: BertConfig
  attention_impl: str = "xla"
  dtype: Any = jnp.float32
  lora: LoRAConfig = LoRAConfig()

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array, deterministic: bool) -> jax.Array:
    c = self.config
    heads, width = c.num_attention_heads, c.hidden_size

    def dense(features, name):
      base = nn.Dense(features, dtype=self.dtype, name=name)
      if self.lora.rank and name in self.lora.targets:
        adapter = LoRA(features, self.lora, self.dtype, name=name + "_lora")
        return lambda y: base(y) + adapter(y)
      return base

    norm = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name=name)
    split = lambda y: y.reshape(*y.shape[:2], heads, width // heads)
    q, k, v = (split(dense(width, name)(x)) for name in ("query", "key", "value"))
    attended = attention_fn(self.attention_impl)(q, k, v, mask=MaskSpec(kv_valid=valid))
    attended = dense(width, "attention_output")(attended.reshape(x.shape))
    attended = nn.Dropout(c.hidden_dropout_prob)(attended, deterministic=deterministic)
    x = norm("attention_norm")(x + attended)
    hidden = _ACTIVATIONS[c.hidden_act](dense(c.intermediate_size, "intermediate")(x))
    hidden = nn.Dropout(c.hidden_dropout_prob)(dense(width, "output")(hidden),
                                                deterministic=deterministic)
    return norm("output_norm")(x + hidden)


class BertEncoder(nn.Module):
  """Token ids [B, L] (0 where `attention_mask` is 0) -> hidden states [B, L, H] and sentence vectors.

  Attention dropout is not applied (the attention engines have none); hidden
  dropout is, when `deterministic` is False.
  """

  config: BertConfig
  attention_impl: str = "xla"
  dtype: Any = jnp.float32
  lora: LoRAConfig = LoRAConfig()

  def setup(self):
    c = self.config
    if c.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act={c.hidden_act!r} is not supported; one of {sorted(_ACTIVATIONS)}")
    if c.hidden_size % c.num_attention_heads:
      raise ValueError(f"hidden_size={c.hidden_size} is not divisible by "
                       f"num_attention_heads={c.num_attention_heads}")
    self.word_embeddings = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")
    self.position_embeddings = nn.Embed(c.max_position_embeddings, c.hidden_size,
                                        name="position_embeddings")
    self.token_type_embeddings = nn.Embed(c.type_vocab_size, c.hidden_size,
                                          name="token_type_embeddings")
    self.embeddings_norm = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embeddings_norm")
    self.embeddings_dropout = nn.Dropout(c.hidden_dropout_prob)
    self.layers = [BertLayer(c, self.attention_impl, self.dtype,
                             self.lora.in_layer(i, c.num_hidden_layers), name=f"layer_{i}")
                   for i in range(c.num_hidden_layers)]

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
    """Last hidden states [B, L, H] (float32 at the output whatever `dtype`)."""
    length = input_ids.shape[-1]
    if length > self.config.max_position_embeddings:
      raise ValueError(f"{length} tokens exceed max_position_embeddings="
                       f"{self.config.max_position_embeddings}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = (self.word_embeddings(input_ids) + self.position_embeddings(jnp.arange(length))
         + self.token_type_embeddings(token_type_ids))
    x = self.embeddings_dropout(self.embeddings_norm(x), deterministic=deterministic)
    x = x.astype(self.dtype)
    valid = attention_mask.astype(bool)
    for layer in self.layers:
      x = layer(x, valid, deterministic)
    return x.astype(jnp.float32)

  def embed(self, input_ids: jax.Array, attention_mask: jax.Array, pooling: str = "mean",
            *, deterministic: bool = True) -> jax.Array:
    """Sentence vectors [B, H]: "mean" over the real tokens, or "cls" (see the module docstring)."""
    return pool(self(input_ids, attention_mask, deterministic=deterministic), attention_mask, pooling)


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str = "mean") -> jax.Array:
  """[B, H] from hidden states [B, L, H]; a row with no real token pools to zeros."""
  if pooling == "cls":
    return hidden[:, 0]
  if pooling != "mean":
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  weight = attention_mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * weight, axis=1) / jnp.maximum(jnp.sum(weight, axis=1), 1e-9)
