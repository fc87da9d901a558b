"""Flax modules: transformer blocks and user-sequence encoders.

Every encoder maps item ids [B, L] (0 = padding) and optional packing
`segment_ids` to hidden states [B, L, D] scored against `item_embeddings()`
[num_items + 1, D]; BERT4Rec adds `item_bias()` (see `fold_item_bias`) and
reads a mask id, HSTU optional `timestamps`; all take `users` when built with
`user_profiles` (a per-user context, `user_context.py`).
"""

import jax.numpy as jnp
import ml_collections

from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.social import UserProfiles
from recattn_jax.models.bert4rec import BERT4Rec, fold_item_bias
from recattn_jax.models.heads import LinearHead, MLPHead, ResidualMLPHead, build_head
from recattn_jax.models.hstu import HSTU
from recattn_jax.models.item_encoder import ItemEncoder
from recattn_jax.models.matchers import TargetAttention, dot_product_scores
from recattn_jax.models.sasrec import SASRec, last_hidden, positions_in_sequence
from recattn_jax.models.user_context import UserContext

__all__ = ["BERT4Rec", "HSTU", "ItemEncoder", "LinearHead", "MLPHead", "MODELS", "ResidualMLPHead",
           "SASRec", "TargetAttention", "UserContext", "UserProfiles", "build_head", "build_model",
           "dot_product_scores", "fold_item_bias", "init_encoder", "last_hidden", "positions_in_sequence"]

MODELS = ("sasrec", "bert4rec", "hstu")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model_config: ml_collections.ConfigDict, *, num_items: int, max_len: int,
                item_features: ItemFeatures | None = None,
                user_profiles: UserProfiles | None = None) -> SASRec | BERT4Rec | HSTU:
  """The user encoder named by `model.name`; `item_features` feed `model.item_representation`.

  `user_profiles` gives every user a context vector (models/user_context.py).
  """
  if model_config.name not in MODELS:
    raise ValueError(f"model.name={model_config.name!r} is not a known encoder; "
                     f"known: {list(MODELS)}")
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {model_config.dtype!r}")
  common = dict(
      num_items=num_items,
      max_len=max_len,
      embed_dim=model_config.embed_dim,
      num_layers=model_config.num_layers,
      num_heads=model_config.num_heads,
      dropout_rate=model_config.dropout,
      positions=model_config.positions,
      attention_impl=model_config.attention_impl,
      dtype=_DTYPES[model_config.dtype],
      item_features=item_features,
      item_representation=model_config.get("item_representation", "id"),
      item_id_dropout=model_config.get("item_id_dropout", 0.0),
      user_profiles=user_profiles,
  )
  # Fields only some encoders read; defaults apply to configs that predate them.
  get = model_config.get
  if model_config.name == "sasrec":
    return SASRec(ff_dim=model_config.ff_dim, **common)
  if model_config.name == "bert4rec":
    return BERT4Rec(ff_dim=model_config.ff_dim, output_bias=get("output_bias", True), **common)
  return HSTU(num_position_buckets=get("num_position_buckets", None) or None,
              num_time_buckets=get("num_time_buckets", 128),
              time_bucket_step=get("time_bucket_step", 0.301),
              bias_per_head=get("bias_per_head", False),
              attention_norm=get("attention_norm", "max_len"), **common)


def init_encoder(model: SASRec | BERT4Rec | HSTU, key, max_len: int):
  """An encoder's variables from a dummy batch (with `users` when it has a user context)."""
  dummy = jnp.zeros((1, max_len), jnp.int32)
  users = dummy if model.user_profiles is not None else None
  return model.init(key, dummy, users=users)
