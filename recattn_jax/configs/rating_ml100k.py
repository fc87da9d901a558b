"""Rating prediction on MovieLens-100K: target attention over the rated history, MSE.

  python -m recattn_jax.train --config rating_ml100k --workdir runs/rating_ml100k

Each user's last rating is the test target and the one before it the
validation target (leave-one-out in time). The candidate attends over the
user's previously rated items together with the ratings given; items are
encoded from their id plus genres, title words and release year. Reported:
RMSE and MAE, and the same for the item-mean baseline.
"""

from recattn_jax.config import get_ml100k_pointwise_config


def get_config():
  config = get_ml100k_pointwise_config("rating")
  config.data.with_ratings = True
  config.model.din.use_ratings = True
  config.model.din.head = "residual_mlp"
  return config
