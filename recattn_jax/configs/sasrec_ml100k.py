"""SASRec+ on MovieLens-100K (the default job).

  python -m recattn_jax.train --config sasrec_ml100k --workdir runs/sasrec_ml100k
"""

from recattn_jax.config import get_default_config
from recattn_jax.tuning import Choice, default_space


def get_config():
  return get_default_config()


def get_search_space(config):
  """`python -m recattn_jax.tune --config sasrec_ml100k --budget 60m --workdir studies/sasrec_ml100k`"""
  space = default_space(config)
  space["train.schedule"] = Choice(["constant", "cosine"])
  return space
