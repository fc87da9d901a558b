"""HSTU-style generative encoder on Amazon Sports (S3Rec's 5-core file in `../shared/data/amazon-sports`).

  python -m recattn_jax.train --config configs/hstu_amazon_sports.py --workdir runs/hstu_amazon_sports
"""

from recattn_jax.config import get_amazon_config


def get_config():
  config = get_amazon_config("amazon-sports", "Sports_and_Outdoors.txt")
  config.model.name = "hstu"
  config.model.num_time_buckets = 0  # S3Rec's files carry no timestamps
  return config
