"""BERT4Rec on Amazon Toys (S3Rec's 5-core file in `../shared/data/amazon-toys`).

  python -m recattn_jax.train --config configs/bert4rec_amazon_toys.py --workdir runs/bert4rec_amazon_toys
"""

from recattn_jax.config import get_amazon_config


def get_config():
  config = get_amazon_config("amazon-toys", "Toys_and_Games.txt")
  config.model.name = "bert4rec"
  config.train.mask_prob = 0.2  # cloze: share of events masked (RecBole's default)
  return config
