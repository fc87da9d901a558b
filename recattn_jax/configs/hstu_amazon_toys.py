"""HSTU-style generative encoder on Amazon Toys (S3Rec's 5-core file in dataset `amazon-toys`).

  python -m recattn_jax.train --config hstu_amazon_toys --workdir runs/hstu_amazon_toys
"""

from recattn_jax.config import get_amazon_config


def get_config():
  config = get_amazon_config("amazon-toys")
  config.model.name = "hstu"
  config.model.hstu.num_time_buckets = 0  # S3Rec's files carry no timestamps
  return config
