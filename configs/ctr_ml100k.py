"""Click prediction on MovieLens-100K: DIN-style target attention over the user's history.

  python -m recattn_jax.train --config configs/ctr_ml100k.py --workdir runs/ctr_ml100k

A rating >= 4 is a click, a rating below is a non-click, and one item the user
never rated is sampled per event as a further non-click. The candidate item
attends over the user's previous items; items are encoded from their id plus
their genres, title words and release year (`ml-100k.item`).
Reported: AUC, GAUC, LogLoss, and the same for the item click-rate baseline.
"""

from recattn_jax.config import SHARED_DATA, get_default_config


def get_config():
  config = get_default_config()
  config.task = "ctr"
  config.data.max_len = 50
  config.data.click_threshold = 4.0
  config.data.negatives_per_positive = 1
  config.data.item_features_path = str(SHARED_DATA / "ml-100k" / "ml-100k.item")
  config.model.name = "din"
  config.model.item_representation = "both"
  config.model.num_heads = 2
  config.model.dropout = 0.1
  config.model.head = "mlp"
  config.train.batch_size = 256
  config.train.learning_rate = 1e-3
  config.train.weight_decay = 0.0
  config.train.num_epochs = 20
  config.train.eval_every_epochs = 1
  config.train.patience = 3
  config.train.early_stopping_metric = "AUC"
  config.eval.batch_size = 1024
  return config
