"""Rating prediction on MovieLens-100K: target attention over the rated history, MSE.

  python -m recattn_jax.train --config configs/rating_ml100k.py --workdir runs/rating_ml100k

Each user's last rating is the test target and the one before it the
validation target (leave-one-out in time). The candidate attends over the
user's previously rated items together with the ratings given; items are
encoded from their id plus genres, title words and release year. Reported:
RMSE and MAE, and the same for the item-mean baseline.
"""

from recattn_jax.config import SHARED_DATA, get_default_config


def get_config():
  config = get_default_config()
  config.task = "rating"
  config.data.max_len = 50
  config.data.with_ratings = True
  config.data.item_features_path = str(SHARED_DATA / "ml-100k" / "ml-100k.item")
  config.model.name = "din"
  config.model.item_representation = "both"
  config.model.use_ratings = True
  config.model.num_heads = 2
  config.model.dropout = 0.1
  config.model.head = "residual_mlp"
  config.train.batch_size = 256
  config.train.learning_rate = 1e-3
  config.train.weight_decay = 0.0
  config.train.num_epochs = 20
  config.train.eval_every_epochs = 1
  config.train.patience = 3
  config.train.early_stopping_metric = "RMSE"
  config.eval.batch_size = 1024
  return config
