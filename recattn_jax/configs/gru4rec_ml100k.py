"""GRU4Rec, the recurrent baseline, on MovieLens-100K, leave-one-out.

  python -m recattn_jax.train --config gru4rec_ml100k --workdir runs/gru4rec_ml100k

The same data, pipeline, loss (full softmax) and evaluation as `sasrec_ml100k`;
only the encoder differs (`recattn_jax/models/gru4rec.py`).
"""

from recattn_jax.config import get_default_config


def get_config():
  config = get_default_config()
  config.model.name = "gru4rec"
  return config
