"""HSTU-style generative encoder on MovieLens-100K, leave-one-out.

  python -m recattn_jax.train --config hstu_ml100k --workdir runs/hstu_ml100k
"""

from recattn_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.model.name = "hstu"
  return config
