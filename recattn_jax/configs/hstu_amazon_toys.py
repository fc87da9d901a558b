"""HSTU-style generative encoder on Amazon Toys (S3Rec's 5-core file in dataset `amazon-toys`).

  python -m recattn_jax.train --config hstu_amazon_toys --workdir runs/hstu_amazon_toys
"""

from recattn_jax.config import get_amazon_config
from recattn_jax.tuning import Choice, default_space


def get_config():
  config = get_amazon_config("amazon-toys")
  config.model.name = "hstu"
  config.model.hstu.num_time_buckets = 0  # S3Rec's files carry no timestamps
  return config


def get_search_space(config):
  """`python -m recattn_jax.tune --config hstu_amazon_toys --budget 4h --workdir studies/hstu_amazon_toys`

  The histories are cut to 50 events by the preprocessing, so max_len stays.
  """
  space = default_space(config, max_lens=(50,), max_dropout=0.7)
  space["train.schedule"] = Choice(["constant", "cosine"])
  return space
