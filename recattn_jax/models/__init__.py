"""Flax modules: user-sequence encoders, item encoders, matchers, heads, and the click/rating models.

Every ranking encoder is a `SequenceEncoder` registered in `ENCODERS`: it maps
item ids [B, L] (0 = padding) and optional packing `segment_ids` to hidden
states [B, L, D] scored against `item_embeddings()` [num_items + 1, D] (plus
`item_bias()` where `has_item_bias`); `scoring.py` turns that into user
vectors and item tables. `build_encoder` / `build_pointwise_model` make the
model that `config.model.name` names, from the keyword arguments in
`config.model.<name>`.
"""

from typing import Any

import ml_collections

from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.social import UserProfiles
from recattn_jax.models import bert4rec, ctr, gru4rec, hstu, sasrec  # noqa: F401  (registration)
from recattn_jax.models.base import (DATA_FIELDS, Encoder, Layout, SequenceEncoder,
                                     positions_in_sequence)
from recattn_jax.models.bert4rec import BERT4Rec
from recattn_jax.models.ctr import BST, DIN, TargetAttentionModel
from recattn_jax.models.gru4rec import GRU4Rec
from recattn_jax.models.heads import LinearHead, MLPHead, ResidualMLPHead, build_head
from recattn_jax.models.hstu import HSTU
from recattn_jax.models.item_encoder import ItemEncoder
from recattn_jax.models.matchers import TargetAttention
from recattn_jax.models.registry import (ENCODERS, HEADS, ITEM_ENCODERS, MATCHERS, POINTWISE_MODELS,
                                         encoder_spec)
from recattn_jax.models.sasrec import SASRec
from recattn_jax.models.scoring import (catalogue_logits, encode, fold_item_bias, init_encoder,
                                        last_hidden, scoring_inputs, scoring_table,
                                        scoring_users, serving_vectors, user_vectors)
from recattn_jax.models.user_context import UserContext
from recattn_jax.registry import check_keywords, keyword_defaults

__all__ = [
    "BERT4Rec", "BST", "DIN", "ENCODERS", "Encoder", "GRU4Rec", "HEADS", "HSTU", "ITEM_ENCODERS", "ItemEncoder",
    "Layout", "LinearHead", "MATCHERS", "MLPHead", "POINTWISE_MODELS", "ResidualMLPHead", "SASRec",
    "SequenceEncoder", "TargetAttention", "TargetAttentionModel", "UserContext", "UserProfiles",
    "build_encoder", "build_head", "build_pointwise_model", "catalogue_logits", "encode",
    "encoder_kwargs", "encoder_spec", "fold_item_bias", "init_encoder", "last_hidden",
    "pointwise_kwargs", "positions_in_sequence", "scoring_inputs", "scoring_table",
    "scoring_users", "serving_vectors", "user_vectors",
]


def encoder_kwargs(name: str) -> dict[str, Any]:
  """The configurable fields of encoder `name` with their defaults (`config.model.<name>`)."""
  return keyword_defaults(ENCODERS.get(name), DATA_FIELDS)


def pointwise_kwargs(name: str) -> dict[str, Any]:
  """The configurable fields of click/rating model `name` with their defaults."""
  return keyword_defaults(POINTWISE_MODELS.get(name), ctr.DATA_FIELDS)


def _section(model_config: ml_collections.ConfigDict, allowed: dict) -> dict:
  """`model.<name>`'s fields (absent section: the module's defaults), checked against `allowed`."""
  name = model_config.name
  kwargs = dict(model_config.get(name, {}))
  check_keywords(kwargs, allowed, f"model.{name}")
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def build_encoder(model_config: ml_collections.ConfigDict, *, num_items: int, max_len: int,
                  item_features: ItemFeatures | None = None,
                  user_profiles: UserProfiles | None = None) -> SequenceEncoder:
  """The ranking encoder `model.name`, built with `model.<name>`'s fields and the data's sizes."""
  cls = ENCODERS.get(model_config.name)
  kwargs = _section(model_config, encoder_kwargs(model_config.name))
  return cls(num_items=num_items, max_len=max_len, item_features=item_features,
             user_profiles=user_profiles, **kwargs)


def build_pointwise_model(model_config: ml_collections.ConfigDict, *, task: str, num_items: int,
                          num_users: int, max_len: int, global_mean: float = 0.0,
                          item_features: Any = None) -> TargetAttentionModel:
  """The click/rating model `model.name` ("din", "bst") for `task`, from `model.<name>`'s fields."""
  cls = POINTWISE_MODELS.get(model_config.name)
  kwargs = _section(model_config, pointwise_kwargs(model_config.name))
  return cls(num_items=num_items, num_users=num_users, max_len=max_len, task=task,
             global_mean=float(global_mean), item_features=item_features, **kwargs)
