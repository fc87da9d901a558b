"""BERT4Rec on Amazon Sports (S3Rec's 5-core file in `../shared/data/amazon-sports`).

  python -m recattn_jax.train --config configs/bert4rec_amazon_sports.py --workdir runs/bert4rec_amazon_sports
"""

from recattn_jax.config import get_amazon_config


def get_config():
  config = get_amazon_config("amazon-sports", "Sports_and_Outdoors.txt")
  config.model.name = "bert4rec"
  config.train.mask_prob = 0.2  # cloze: share of events masked (RecBole's default)
  return config
