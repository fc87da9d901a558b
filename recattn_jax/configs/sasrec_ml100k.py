"""SASRec+ on MovieLens-100K (the default job).

  python -m recattn_jax.train --config sasrec_ml100k --workdir runs/sasrec_ml100k
"""

from recattn_jax.config import get_default_config


def get_config():
  return get_default_config()
