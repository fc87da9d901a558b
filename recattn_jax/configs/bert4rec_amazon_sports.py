"""BERT4Rec on Amazon Sports (S3Rec's 5-core file in dataset `amazon-sports`).

  python -m recattn_jax.train --config bert4rec_amazon_sports --workdir runs/bert4rec_amazon_sports
"""

from recattn_jax.config import get_amazon_config


def get_config():
  config = get_amazon_config("amazon-sports")
  config.model.name = "bert4rec"
  config.train.mask_prob = 0.2  # cloze: share of events masked (RecBole's default)
  return config
