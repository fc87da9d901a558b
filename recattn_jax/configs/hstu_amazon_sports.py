"""HSTU-style generative encoder on Amazon Sports (S3Rec's 5-core file in dataset `amazon-sports`).

  python -m recattn_jax.train --config hstu_amazon_sports --workdir runs/hstu_amazon_sports
"""

from recattn_jax.config import get_amazon_config
from recattn_jax.tuning import Choice, default_space


def get_config():
  config = get_amazon_config("amazon-sports")
  config.model.name = "hstu"
  config.model.hstu.num_time_buckets = 0  # S3Rec's files carry no timestamps
  return config


def get_search_space(config):
  """`python -m recattn_jax.tune --config hstu_amazon_sports --budget 4h --workdir studies/hstu_amazon_sports`

  The histories are cut to 50 events by the preprocessing, so max_len stays.
  """
  space = default_space(config, max_lens=(50,), max_dropout=0.7)
  space["train.schedule"] = Choice(["constant", "cosine"])
  return space
