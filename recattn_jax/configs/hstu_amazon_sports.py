"""HSTU-style generative encoder on Amazon Sports (S3Rec's 5-core file in dataset `amazon-sports`).

  python -m recattn_jax.train --config hstu_amazon_sports --workdir runs/hstu_amazon_sports
"""

from recattn_jax.config import get_amazon_config


def get_config():
  config = get_amazon_config("amazon-sports")
  config.model.name = "hstu"
  config.model.hstu.num_time_buckets = 0  # S3Rec's files carry no timestamps
  return config
