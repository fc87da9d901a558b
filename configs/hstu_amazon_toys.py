"""HSTU-style generative encoder on Amazon Toys (S3Rec's 5-core file in `../shared/data/amazon-toys`).

  python -m recattn_jax.train --config configs/hstu_amazon_toys.py --workdir runs/hstu_amazon_toys
"""

from recattn_jax.config import get_amazon_config


def get_config():
  config = get_amazon_config("amazon-toys", "Toys_and_Games.txt")
  config.model.name = "hstu"
  config.model.num_time_buckets = 0  # S3Rec's files carry no timestamps
  return config
