"""Flax modules: transformer blocks and user-sequence encoders."""

import jax.numpy as jnp
import ml_collections

from recattn_jax.models.sasrec import SASRec, last_hidden, positions_in_sequence

__all__ = ["SASRec", "build_model", "last_hidden", "positions_in_sequence"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model_config: ml_collections.ConfigDict, *, num_items: int, max_len: int) -> SASRec:
  """The user encoder named by `model.name`."""
  if model_config.name != "sasrec":
    raise ValueError(f"model.name={model_config.name!r} is not a known encoder; known: ['sasrec']")
  if model_config.dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {model_config.dtype!r}")
  return SASRec(
      num_items=num_items,
      max_len=max_len,
      embed_dim=model_config.embed_dim,
      num_layers=model_config.num_layers,
      num_heads=model_config.num_heads,
      ff_dim=model_config.ff_dim,
      dropout_rate=model_config.dropout,
      positions=model_config.positions,
      attention_impl=model_config.attention_impl,
      dtype=_DTYPES[model_config.dtype],
  )
