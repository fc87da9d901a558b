"""Click prediction on MovieLens-100K: DIN-style target attention over the user's history.

  python -m recattn_jax.train --config ctr_ml100k --workdir runs/ctr_ml100k

A rating >= 4 is a click, a rating below is a non-click, and one item the user
never rated is sampled per event as a further non-click. The candidate item
attends over the user's previous items; items are encoded from their id plus
their genres, title words and release year (`ml-100k.item`).
Reported: AUC, GAUC, LogLoss, and the same for the item click-rate baseline.
"""

from recattn_jax.config import get_ml100k_pointwise_config


def get_config():
  config = get_ml100k_pointwise_config("ctr")
  config.data.click_threshold = 4.0
  config.data.negatives_per_positive = 1
  config.model.din.head = "mlp"
  return config
