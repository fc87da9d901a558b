"""BERT4Rec on Amazon Toys (S3Rec's 5-core file in dataset `amazon-toys`).

  python -m recattn_jax.train --config bert4rec_amazon_toys --workdir runs/bert4rec_amazon_toys
"""

from recattn_jax.config import get_amazon_config


def get_config():
  config = get_amazon_config("amazon-toys")
  config.model.name = "bert4rec"
  config.train.mask_prob = 0.2  # cloze: share of events masked (RecBole's default)
  return config
