"""BERT4Rec on MovieLens-100K, leave-one-out.

  python -m recattn_jax.train --config bert4rec_ml100k --workdir runs/bert4rec_ml100k
"""

from recattn_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.model.name = "bert4rec"
  config.train.mask_prob = 0.2  # cloze: share of events masked (RecBole's default)
  return config
