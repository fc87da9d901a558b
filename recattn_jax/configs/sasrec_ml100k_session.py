"""SASRec+ on MovieLens-100K for live sessions: positions counted from the oldest event.

The default job counts positions from the newest event, so every append moves
every position and a session must re-encode its window; counting from the
oldest keeps the cached keys and values valid, and `Recommender.session`
extends them in O(L) per event (docs/serving.md).

  python -m recattn_jax.train --config sasrec_ml100k_session --workdir runs/sasrec_ml100k_session
"""

from recattn_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.model.sasrec.positions = "start"
  return config
