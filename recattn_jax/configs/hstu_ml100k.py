"""HSTU-style generative encoder on MovieLens-100K, leave-one-out.

  python -m recattn_jax.train --config hstu_ml100k --workdir runs/hstu_ml100k
"""

from recattn_jax.config import get_default_config
from recattn_jax.tuning import Choice, default_space


def get_config():
  config = get_default_config()
  config.model.name = "hstu"
  return config


def get_search_space(config):
  """`python -m recattn_jax.tune --config hstu_ml100k --budget 60m --workdir studies/hstu_ml100k`"""
  space = default_space(config)
  space["train.schedule"] = Choice(["constant", "cosine"])
  return space
